// LaunchMissLoad against its host twin: pages in pinned host memory read by the GPU directly,
// slot pools in device memory poisoned first, miss counts taken from device memory.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/miss_load.h"
#include "offload/pinned_buffer.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

class MissLoadGpuTest : public GpuStreamTest {
 protected:
  MissLoadGpuTest() : GpuStreamTest("GPU miss-load tests") {}
};

// One random batch: `items` caches of `pages` host pages and `slots` slots each.
struct Batch {
  int32_t items, max_misses, pages, slots;
  int64_t page_bytes;
  PinnedBuffer host;  // K and V page of every (item, page), random bytes
  std::vector<int64_t> table_offset;
  std::vector<int32_t> miss_pages, miss_slots, miss_count;

  static std::unique_ptr<Batch> Make(int32_t items, int32_t max_misses, int32_t pages,
                                     int32_t slots, int64_t page_bytes, std::mt19937& rng) {
    auto b = std::make_unique<Batch>(
        Batch{items, max_misses, pages, slots, page_bytes, {}, {}, {}, {}, {}});
    auto host = PinnedBuffer::Allocate(
        {.bytes = static_cast<size_t>(int64_t{items} * pages * 2 * page_bytes), .device_id = 0});
    EXPECT_TRUE(host.ok()) << host.status();
    b->host = std::move(host).value();
    for (size_t i = 0; i < b->host.size(); i += 4) {
      const uint32_t word = static_cast<uint32_t>(rng());
      std::memcpy(b->host.data() + i, &word, 4);
    }
    for (int32_t i = 0; i < items; ++i) {
      b->table_offset.push_back(int64_t{i} * pages);
      std::vector<int32_t> page_ids(pages), slot_ids(slots);
      std::iota(page_ids.begin(), page_ids.end(), 0);
      std::iota(slot_ids.begin(), slot_ids.end(), 0);
      std::shuffle(page_ids.begin(), page_ids.end(), rng);
      std::shuffle(slot_ids.begin(), slot_ids.end(), rng);
      const int32_t count = static_cast<int32_t>(rng() % (max_misses + 1));
      b->miss_count.push_back(count);
      for (int32_t m = 0; m < max_misses; ++m) {
        b->miss_pages.push_back(m < count ? page_ids[m] : -1);
        b->miss_slots.push_back(m < count ? slot_ids[m] : -1);
      }
    }
    return b;
  }
  // Page table entries: K of (item, page) at 2 * (item * pages + page), V right after.
  std::vector<const void*> Table(std::byte* base, int kv) const {
    std::vector<const void*> table;
    for (int64_t e = 0; e < int64_t{items} * pages; ++e) {
      table.push_back(base + (2 * e + kv) * page_bytes);
    }
    return table;
  }
};

// Runs the kernel (optionally through a captured CUDA graph, with the counts changed in
// device memory after capture) and the twin, and compares the whole slot pools.
void CheckAgainstTwin(cudaStream_t stream, Batch& b, bool through_graph) {
  const int64_t pool_bytes = int64_t{b.slots} * b.page_bytes;
  // Device side.
  DeviceBuffer k_table = Upload(b.Table(b.host.device_data(), 0));
  DeviceBuffer v_table = Upload(b.Table(b.host.device_data(), 1));
  DeviceBuffer offsets = Upload(b.table_offset);
  DeviceBuffer pages = Upload(b.miss_pages);
  DeviceBuffer slots = Upload(b.miss_slots);
  std::vector<int32_t> captured_count(b.items, 0);  // what the graph is captured with
  DeviceBuffer counts = Upload(through_graph ? captured_count : b.miss_count);
  auto k_pool = DeviceBuffer::Allocate(pool_bytes * b.items);
  auto v_pool = DeviceBuffer::Allocate(pool_bytes * b.items);
  ASSERT_TRUE(k_pool.ok() && v_pool.ok());
  ASSERT_CUDA_OK(cudaMemset(k_pool->data(), 0xFF, pool_bytes * b.items));
  ASSERT_CUDA_OK(cudaMemset(v_pool->data(), 0xFF, pool_bytes * b.items));
  std::vector<void*> k_base, v_base;
  for (int32_t i = 0; i < b.items; ++i) {
    k_base.push_back(k_pool->data() + i * pool_bytes);
    v_base.push_back(v_pool->data() + i * pool_bytes);
  }
  DeviceBuffer k_base_d = Upload(k_base), v_base_d = Upload(v_base);
  MissLoadParams p;
  p.num_items = b.items;
  p.max_misses = b.max_misses;
  p.page_bytes = b.page_bytes;
  p.miss_pages = pages.as<int32_t>();
  p.miss_slots = slots.as<int32_t>();
  p.miss_count = counts.as<int32_t>();
  p.host_k_pages = k_table.as<const void*>();
  p.host_v_pages = v_table.as<const void*>();
  p.page_table_offset = offsets.as<int64_t>();
  p.slot_k_base = k_base_d.as<void*>();
  p.slot_v_base = v_base_d.as<void*>();
  if (through_graph) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ASSERT_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const absl::Status launched = LaunchMissLoad(p, stream);
    ASSERT_CUDA_OK(cudaStreamEndCapture(stream, &graph));
    ASSERT_TRUE(launched.ok()) << launched;
    ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    // The real counts arrive after capture, as a decode step's resolve would write them.
    ASSERT_CUDA_OK(cudaMemcpyAsync(counts.data(), b.miss_count.data(),
                                   b.miss_count.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   stream));
    ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
    ASSERT_CUDA_OK(cudaGraphExecDestroy(exec));
    ASSERT_CUDA_OK(cudaGraphDestroy(graph));
  } else {
    const absl::Status launched = LaunchMissLoad(p, stream);
    ASSERT_TRUE(launched.ok()) << launched;
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  }
  std::vector<std::byte> k_got(pool_bytes * b.items), v_got(pool_bytes * b.items);
  ASSERT_CUDA_OK(cudaMemcpy(k_got.data(), k_pool->data(), k_got.size(), cudaMemcpyDeviceToHost));
  ASSERT_CUDA_OK(cudaMemcpy(v_got.data(), v_pool->data(), v_got.size(), cudaMemcpyDeviceToHost));

  // Host twin over host addresses.
  std::vector<std::byte> k_want(k_got.size(), std::byte{0xFF}),
      v_want(v_got.size(), std::byte{0xFF});
  const auto k_table_h = b.Table(b.host.data(), 0), v_table_h = b.Table(b.host.data(), 1);
  std::vector<void*> k_base_h, v_base_h;
  for (int32_t i = 0; i < b.items; ++i) {
    k_base_h.push_back(k_want.data() + i * pool_bytes);
    v_base_h.push_back(v_want.data() + i * pool_bytes);
  }
  MissLoadParams h = p;
  h.miss_pages = b.miss_pages.data();
  h.miss_slots = b.miss_slots.data();
  h.miss_count = b.miss_count.data();
  h.host_k_pages = k_table_h.data();
  h.host_v_pages = v_table_h.data();
  h.page_table_offset = b.table_offset.data();
  h.slot_k_base = k_base_h.data();
  h.slot_v_base = v_base_h.data();
  ASSERT_TRUE(ReferenceMissLoad(h).ok());
  EXPECT_TRUE(k_got == k_want) << "K slot pools differ from the twin";
  EXPECT_TRUE(v_got == v_want) << "V slot pools differ from the twin";
}

TEST_F(MissLoadGpuTest, MatchesTwinFor4KiBPages) {
  std::mt19937 rng(std::random_device{}());
  auto b = Batch::Make(256, 32, 96, 48, 4096, rng);
  CheckAgainstTwin(stream_.get(), *b, /*through_graph=*/false);
}

TEST_F(MissLoadGpuTest, MatchesTwinForSmallAndOddPages) {
  std::mt19937 rng(std::random_device{}());
  for (int64_t page_bytes : {int64_t{16}, int64_t{512}, int64_t{4112}, int64_t{32768}}) {
    SCOPED_TRACE(page_bytes);
    auto b = Batch::Make(5, 7, 20, 9, page_bytes, rng);
    CheckAgainstTwin(stream_.get(), *b, false);
  }
}

TEST_F(MissLoadGpuTest, GraphReplayReadsTheCountsFromDeviceMemory) {
  std::mt19937 rng(std::random_device{}());
  auto b = Batch::Make(64, 16, 40, 20, 4096, rng);
  CheckAgainstTwin(stream_.get(), *b, /*through_graph=*/true);
}

TEST_F(MissLoadGpuTest, InvalidShapeIsRejectedBeforeLaunch) {
  MissLoadParams p;
  p.num_items = 3;
  p.max_misses = 2;
  p.page_bytes = 4096;  // every array missing
  EXPECT_EQ(LaunchMissLoad(p, stream_.get()).code(), absl::StatusCode::kInvalidArgument);
  p.page_bytes = 24;
  EXPECT_EQ(LaunchMissLoad(p, stream_.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
}  // namespace kvtier
