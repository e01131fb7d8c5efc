// LaunchAppend and LaunchWriteBack against their host twins. Append: random tokens into
// random rows of window pages in a poisoned device arena, compared byte for byte with the
// twin's result on a host copy of the same arena. Write-back: random window pages on the
// GPU written into random frames of a poisoned pinned host arena (through its device
// address), some entries skipped, compared byte for byte with the twin.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/append.h"
#include "kernels/base/cuda_handles.h"
#include "offload/pinned_buffer.h"
#include "tests/testing/aligned_bytes.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr uint8_t kPoison = 0xFF;

// Random 16-bit elements that are finite, non-zero bf16/fp16 values.
void FillRandom(std::byte* data, size_t bytes, std::mt19937_64& rng) {
  for (size_t i = 0; i + 1 < bytes; i += 2) {
    const uint16_t v = static_cast<uint16_t>(0x1000 | (rng() & 0x3FFF));
    std::memcpy(data + i, &v, 2);
  }
}

::testing::AssertionResult SameBytes(const std::byte* gpu, const std::byte* twin, size_t bytes,
                                     size_t page_bytes) {
  if (std::memcmp(gpu, twin, bytes) == 0) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (gpu[i] == twin[i]) ++i;
  return ::testing::AssertionFailure()
         << "first difference at page " << i / page_bytes << ", byte " << i % page_bytes << ": gpu "
         << static_cast<int>(gpu[i]) << ", twin " << static_cast<int>(twin[i]);
}

class AppendGpuTest : public GpuStreamTest {
 protected:
  AppendGpuTest() : GpuStreamTest("GPU append tests") {}
};

void CheckAppend(cudaStream_t stream, DType dtype, int32_t batch, int32_t heads, int32_t head_dim,
                 int32_t page_size) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " batch " << batch << " heads " << heads
                                  << " D " << head_dim << " P " << page_size << ", seed " << seed);
  std::mt19937_64 rng(seed);
  const int32_t entries = batch * heads;
  const size_t row_bytes = static_cast<size_t>(head_dim) * DTypeSize(dtype);
  const size_t page_bytes = row_bytes * page_size;
  const int32_t num_pages = 2 * entries + 5;  // K and V pages plus unused ones
  const size_t arena_bytes = page_bytes * num_pages;
  const size_t token_bytes = row_bytes * entries;

  AlignedBytes k_new(token_bytes), v_new(token_bytes), twin_arena(arena_bytes);
  FillRandom(k_new.data(), token_bytes, rng);
  FillRandom(v_new.data(), token_bytes, rng);
  std::memset(twin_arena.data(), kPoison, arena_bytes);
  std::vector<int32_t> page_of(num_pages);
  std::iota(page_of.begin(), page_of.end(), 0);
  std::shuffle(page_of.begin(), page_of.end(), rng);
  std::vector<int32_t> rows(batch);
  for (int32_t& r : rows) r = static_cast<int32_t>(rng() % page_size);

  auto arena = DeviceBuffer::Allocate(arena_bytes);
  auto d_k_new = DeviceBuffer::Allocate(token_bytes);
  auto d_v_new = DeviceBuffer::Allocate(token_bytes);
  auto d_pages = DeviceBuffer::Allocate(2 * entries * sizeof(void*));
  auto d_rows = DeviceBuffer::Allocate(batch * sizeof(int32_t));
  ASSERT_TRUE(arena.ok() && d_k_new.ok() && d_v_new.ok() && d_pages.ok() && d_rows.ok());
  std::vector<void*> device_pages(2 * entries), host_pages(2 * entries);
  for (int32_t i = 0; i < 2 * entries; ++i) {
    device_pages[i] = arena->data() + page_of[i] * page_bytes;
    host_pages[i] = twin_arena.data() + page_of[i] * page_bytes;
  }
  ASSERT_CUDA_OK(cudaMemsetAsync(arena->data(), kPoison, arena_bytes, stream));
  ASSERT_CUDA_OK(
      cudaMemcpyAsync(d_k_new->data(), k_new.data(), token_bytes, cudaMemcpyHostToDevice, stream));
  ASSERT_CUDA_OK(
      cudaMemcpyAsync(d_v_new->data(), v_new.data(), token_bytes, cudaMemcpyHostToDevice, stream));
  ASSERT_CUDA_OK(cudaMemcpyAsync(d_pages->data(), device_pages.data(), d_pages->size(),
                                 cudaMemcpyHostToDevice, stream));
  ASSERT_CUDA_OK(
      cudaMemcpyAsync(d_rows->data(), rows.data(), d_rows->size(), cudaMemcpyHostToDevice, stream));

  AppendParams p;
  p.dtype = dtype;
  p.batch = batch;
  p.num_kv_heads = heads;
  p.head_dim = head_dim;
  p.page_size = page_size;
  p.k_new = d_k_new->data();
  p.v_new = d_v_new->data();
  p.k_pages = d_pages->as<void*>();
  p.v_pages = d_pages->as<void*>() + entries;
  p.rows = d_rows->as<int32_t>();
  const absl::Status launched = LaunchAppend(p, stream);
  ASSERT_TRUE(launched.ok()) << launched;
  std::vector<std::byte> gpu(arena_bytes);
  ASSERT_CUDA_OK(
      cudaMemcpyAsync(gpu.data(), arena->data(), arena_bytes, cudaMemcpyDeviceToHost, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

  p.k_new = k_new.data();
  p.v_new = v_new.data();
  p.k_pages = host_pages.data();
  p.v_pages = host_pages.data() + entries;
  p.rows = rows.data();
  ASSERT_TRUE(ReferenceAppend(p).ok());
  EXPECT_TRUE(SameBytes(gpu.data(), twin_arena.data(), arena_bytes, page_bytes));
}

TEST_F(AppendGpuTest, Bf16D128MatchesTwin) {
  CheckAppend(stream_.get(), DType::kBF16, 32, 8, 128, 16);
}
TEST_F(AppendGpuTest, Fp16D64MatchesTwin) {
  CheckAppend(stream_.get(), DType::kFP16, 7, 3, 64, 16);
}
TEST_F(AppendGpuTest, Bf16D256Page64MatchesTwin) {
  CheckAppend(stream_.get(), DType::kBF16, 5, 2, 256, 64);
}
TEST_F(AppendGpuTest, SingleSequenceSingleHeadMatchesTwin) {
  CheckAppend(stream_.get(), DType::kFP16, 1, 1, 128, 1);
}

TEST_F(AppendGpuTest, UnsupportedHeadDimIsUnimplementedAndBadShapeInvalid) {
  AppendParams p;
  p.dtype = DType::kBF16;
  p.batch = 0;
  p.num_kv_heads = 1;
  p.page_size = 16;
  p.head_dim = 96;  // valid rows, no kernel built for it
  EXPECT_EQ(LaunchAppend(p, stream_.get()).code(), absl::StatusCode::kUnimplemented);
  p.head_dim = 4;
  EXPECT_EQ(LaunchAppend(p, stream_.get()).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = 128;
  EXPECT_TRUE(LaunchAppend(p, stream_.get()).ok());
  WriteBackParams w;
  w.num_pages = 3;
  w.page_bytes = 4096;
  EXPECT_EQ(LaunchWriteBack(w, stream_.get()).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream_.get()));
}

// `entries` window K/V pages on the GPU go to random frames of a pinned arena; about one
// entry in three has no destination and must leave its frame poisoned.
void CheckWriteBack(cudaStream_t stream, int32_t entries, int64_t page_bytes) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << entries << " entries of " << page_bytes << " B, seed "
                                  << seed);
  std::mt19937_64 rng(seed);
  const int32_t num_frames = entries + 7;
  const size_t frame_bytes = 2 * static_cast<size_t>(page_bytes);
  const size_t arena_bytes = frame_bytes * num_frames;
  const size_t window_bytes = frame_bytes * entries;

  auto pinned = PinnedBuffer::Allocate({.bytes = arena_bytes, .device_id = 0});
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(pinned->pinned() && pinned->device_data() != nullptr);
  std::memset(pinned->data(), kPoison, arena_bytes);
  AlignedBytes window(window_bytes), twin_arena(arena_bytes);
  FillRandom(window.data(), window_bytes, rng);
  std::memset(twin_arena.data(), kPoison, arena_bytes);
  auto d_window = DeviceBuffer::Allocate(window_bytes);
  auto d_lists = DeviceBuffer::Allocate(4 * entries * sizeof(void*));
  ASSERT_TRUE(d_window.ok() && d_lists.ok());
  ASSERT_CUDA_OK(cudaMemcpyAsync(d_window->data(), window.data(), window_bytes,
                                 cudaMemcpyHostToDevice, stream));

  std::vector<int32_t> frame_of(num_frames);
  std::iota(frame_of.begin(), frame_of.end(), 0);
  std::shuffle(frame_of.begin(), frame_of.end(), rng);
  // Device lists: k_src, v_src, k_dst, v_dst back to back; host lists likewise.
  std::vector<void*> device_lists(4 * entries), host_lists(4 * entries);
  for (int32_t i = 0; i < entries; ++i) {
    const bool listed = rng() % 3 != 0;
    const size_t frame = static_cast<size_t>(frame_of[i]) * frame_bytes;
    device_lists[i] = d_window->data() + i * frame_bytes;
    device_lists[entries + i] = d_window->data() + i * frame_bytes + page_bytes;
    device_lists[2 * entries + i] = listed ? pinned->device_data() + frame : nullptr;
    device_lists[3 * entries + i] = pinned->device_data() + frame + page_bytes;
    host_lists[i] = window.data() + i * frame_bytes;
    host_lists[entries + i] = window.data() + i * frame_bytes + page_bytes;
    host_lists[2 * entries + i] = listed ? twin_arena.data() + frame : nullptr;
    host_lists[3 * entries + i] = twin_arena.data() + frame + page_bytes;
  }
  ASSERT_CUDA_OK(cudaMemcpyAsync(d_lists->data(), device_lists.data(), d_lists->size(),
                                 cudaMemcpyHostToDevice, stream));
  WriteBackParams p;
  p.num_pages = entries;
  p.page_bytes = page_bytes;
  void** lists = d_lists->as<void*>();
  p.k_src = lists;
  p.v_src = lists + entries;
  p.k_dst = lists + 2 * entries;
  p.v_dst = lists + 3 * entries;
  const absl::Status launched = LaunchWriteBack(p, stream);
  ASSERT_TRUE(launched.ok()) << launched;
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

  p.k_src = host_lists.data();
  p.v_src = host_lists.data() + entries;
  p.k_dst = host_lists.data() + 2 * entries;
  p.v_dst = host_lists.data() + 3 * entries;
  ASSERT_TRUE(ReferenceWriteBack(p).ok());
  EXPECT_TRUE(SameBytes(pinned->data(), twin_arena.data(), arena_bytes, page_bytes));
}

TEST_F(AppendGpuTest, WriteBack4KiBPagesMatchesTwin) { CheckWriteBack(stream_.get(), 256, 4096); }
TEST_F(AppendGpuTest, WriteBackOddPageSizeMatchesTwin) {
  CheckWriteBack(stream_.get(), 37, 16 * 64 * 2 + 16);
}
TEST_F(AppendGpuTest, WriteBack32KiBPagesMatchesTwin) { CheckWriteBack(stream_.get(), 20, 32768); }

// Append then write-back captured once in a CUDA graph and replayed with new tokens, rows
// and write-back lists each time (inputs live in device memory): both launchers are
// capturable, and every replay equals the twins applied to host mirrors, byte for byte.
TEST_F(AppendGpuTest, GraphReplayedAppendThenWriteBackMatchesTwin) {
  constexpr int32_t kBatch = 4, kHeads = 2, kHeadDim = 128, kPageSize = 16, kReplays = 6;
  constexpr int32_t kEntries = kBatch * kHeads;
  constexpr size_t kRowBytes = kHeadDim * 2;
  constexpr size_t kPageBytes = kRowBytes * kPageSize;
  constexpr size_t kWindowBytes = 2 * kEntries * kPageBytes;  // K page then V page per entry
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const cudaStream_t stream = stream_.get();

  auto frames = PinnedBuffer::Allocate({.bytes = kWindowBytes, .device_id = 0});
  ASSERT_TRUE(frames.ok()) << frames.status();
  ASSERT_TRUE(frames->pinned());
  std::memset(frames->data(), kPoison, kWindowBytes);
  auto window = DeviceBuffer::Allocate(kWindowBytes);
  auto tokens = DeviceBuffer::Allocate(2 * kEntries * kRowBytes);
  auto rows = DeviceBuffer::Allocate(kBatch * sizeof(int32_t));
  auto lists = DeviceBuffer::Allocate(6 * kEntries * sizeof(void*));
  ASSERT_TRUE(window.ok() && tokens.ok() && rows.ok() && lists.ok());
  ASSERT_CUDA_OK(cudaMemsetAsync(window->data(), kPoison, kWindowBytes, stream));
  AlignedBytes host_window(kWindowBytes), host_frames(kWindowBytes), host_tokens(tokens->size());
  std::memset(host_window.data(), kPoison, kWindowBytes);
  std::memset(host_frames.data(), kPoison, kWindowBytes);

  // Entry e: window pages 2e (K) and 2e + 1 (V); frames in reverse order.
  std::vector<void*> device_lists(6 * kEntries), host_lists(6 * kEntries);
  auto fill = [&](std::vector<void*>& l, std::byte* win, std::byte* frm) {
    for (int32_t e = 0; e < kEntries; ++e) {
      const int32_t f = kEntries - 1 - e;
      l[e] = win + 2 * e * kPageBytes;                       // append k_pages, write-back k_src
      l[kEntries + e] = win + (2 * e + 1) * kPageBytes;      // append v_pages, write-back v_src
      l[2 * kEntries + e] = frm + 2 * f * kPageBytes;        // write-back k_dst (all)
      l[3 * kEntries + e] = frm + (2 * f + 1) * kPageBytes;  // write-back v_dst
      l[4 * kEntries + e] = nullptr;                         // this replay's k_dst
    }
  };
  fill(device_lists, window->data(), frames->device_data());
  fill(host_lists, host_window.data(), host_frames.data());

  AppendParams append;
  append.dtype = DType::kBF16;
  append.batch = kBatch;
  append.num_kv_heads = kHeads;
  append.head_dim = kHeadDim;
  append.page_size = kPageSize;
  append.k_new = tokens->data();
  append.v_new = tokens->data() + kEntries * kRowBytes;
  append.k_pages = lists->as<void*>();
  append.v_pages = lists->as<void*>() + kEntries;
  append.rows = rows->as<int32_t>();
  WriteBackParams write_back;
  write_back.num_pages = kEntries;
  write_back.page_bytes = kPageBytes;
  write_back.k_src = lists->as<const void*>();
  write_back.v_src = lists->as<const void*>() + kEntries;
  write_back.k_dst = lists->as<void*>() + 4 * kEntries;
  write_back.v_dst = lists->as<void*>() + 3 * kEntries;

  cudaGraph_t graph = nullptr;
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const absl::Status append_captured = LaunchAppend(append, stream);
  const absl::Status write_back_captured = LaunchWriteBack(write_back, stream);
  ASSERT_CUDA_OK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(append_captured.ok()) << append_captured;
  ASSERT_TRUE(write_back_captured.ok()) << write_back_captured;
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  std::vector<int32_t> host_rows(kBatch);
  for (int32_t replay = 0; replay < kReplays; ++replay) {
    SCOPED_TRACE(testing::Message() << "replay " << replay);
    FillRandom(host_tokens.data(), host_tokens.size(), rng);
    for (int32_t& r : host_rows) r = static_cast<int32_t>(rng() % kPageSize);
    for (int32_t e = 0; e < kEntries; ++e) {
      const bool listed = rng() % 2 == 0;
      device_lists[4 * kEntries + e] = listed ? device_lists[2 * kEntries + e] : nullptr;
      host_lists[4 * kEntries + e] = listed ? host_lists[2 * kEntries + e] : nullptr;
    }
    ASSERT_CUDA_OK(cudaMemcpyAsync(tokens->data(), host_tokens.data(), tokens->size(),
                                   cudaMemcpyHostToDevice, stream));
    ASSERT_CUDA_OK(cudaMemcpyAsync(rows->data(), host_rows.data(), rows->size(),
                                   cudaMemcpyHostToDevice, stream));
    ASSERT_CUDA_OK(cudaMemcpyAsync(lists->data(), device_lists.data(), lists->size(),
                                   cudaMemcpyHostToDevice, stream));
    ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream));
    std::vector<std::byte> gpu_window(kWindowBytes);
    ASSERT_CUDA_OK(cudaMemcpyAsync(gpu_window.data(), window->data(), kWindowBytes,
                                   cudaMemcpyDeviceToHost, stream));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

    AppendParams host_append = append;
    host_append.k_new = host_tokens.data();
    host_append.v_new = host_tokens.data() + kEntries * kRowBytes;
    host_append.k_pages = host_lists.data();
    host_append.v_pages = host_lists.data() + kEntries;
    host_append.rows = host_rows.data();
    ASSERT_TRUE(ReferenceAppend(host_append).ok());
    WriteBackParams host_write_back = write_back;
    host_write_back.k_src = host_lists.data();
    host_write_back.v_src = host_lists.data() + kEntries;
    host_write_back.k_dst = host_lists.data() + 4 * kEntries;
    host_write_back.v_dst = host_lists.data() + 3 * kEntries;
    ASSERT_TRUE(ReferenceWriteBack(host_write_back).ok());
    ASSERT_TRUE(SameBytes(gpu_window.data(), host_window.data(), kWindowBytes, kPageBytes));
    ASSERT_TRUE(SameBytes(frames->data(), host_frames.data(), kWindowBytes, kPageBytes));
  }
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
}

}  // namespace
}  // namespace kvtier
