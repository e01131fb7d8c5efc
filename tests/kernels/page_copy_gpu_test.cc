// LaunchPageCopy (the zero-copy page load) against its host twin ReferencePageCopy: random
// pages of a pinned, mapped host buffer are copied by the kernel into random slots of a
// poisoned device arena, copied back and compared byte for byte with what the twin writes
// into a poisoned host arena from the same pages.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/status.h"
#include "kernels/page_copy.h"
#include "offload/pinned_buffer.h"
#include "tests/testing/aligned_bytes.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr uint8_t kPoison = 0xFF;

class PageCopyGpuTest : public GpuStreamTest {
 protected:
  PageCopyGpuTest() : GpuStreamTest("GPU page copy tests") {}
};

// Copies `num_pages` distinct random pages of a `num_source_pages`-page source into distinct
// random slots of a `num_slots`-slot device arena and checks the whole arena against the
// twin's result. Sources live in pinned host memory, or in device memory when
// `device_source` is set (the kernel reads any device-accessible address).
void CheckRandomBatch(cudaStream_t stream, int64_t page_bytes, int64_t num_source_pages,
                      int64_t num_slots, int64_t num_pages, bool device_source = false) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "page_bytes " << page_bytes << ", " << num_pages
                                  << " pages, seed " << seed);
  std::mt19937_64 rng(seed);
  const size_t source_bytes = static_cast<size_t>(page_bytes * num_source_pages);
  const size_t arena_bytes = static_cast<size_t>(page_bytes * num_slots);

  // Source pages: random bytes in a pinned buffer, addressed by the GPU via its mapping.
  auto pinned = PinnedBuffer::Allocate({.bytes = source_bytes, .device_id = 0});
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(pinned->pinned()) << "a device is present, the buffer must be page-locked";
  std::byte* const host_source = pinned->data();
  for (size_t i = 0; i < source_bytes; i += 8) {
    const uint64_t word = rng();
    std::memcpy(host_source + i, &word, std::min<size_t>(8, source_bytes - i));
  }
  std::byte* device_visible_source = pinned->device_data();
  DeviceBuffer device_source_copy;
  if (device_source) {
    ASSERT_OK_AND_ASSIGN(device_source_copy, DeviceBuffer::Allocate(source_bytes));
    ASSERT_CUDA_OK(cudaMemcpyAsync(device_source_copy.data(), host_source, source_bytes,
                                   cudaMemcpyHostToDevice, stream));
    device_visible_source = device_source_copy.data();
  }

  // The batch: distinct random pages into distinct random slots.
  std::vector<int64_t> pages(num_source_pages), slots(num_slots);
  std::iota(pages.begin(), pages.end(), 0);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  std::shuffle(slots.begin(), slots.end(), rng);

  ASSERT_OK_AND_ASSIGN(DeviceBuffer arena, DeviceBuffer::Allocate(arena_bytes));
  ASSERT_CUDA_OK(cudaMemsetAsync(arena.data(), kPoison, arena_bytes, stream));
  AlignedBytes expected(arena_bytes);
  std::memset(expected.data(), kPoison, arena_bytes);

  std::vector<const void*> device_src(num_pages), host_src(num_pages);
  std::vector<void*> device_dst(num_pages), host_dst(num_pages);
  for (int64_t i = 0; i < num_pages; ++i) {
    device_src[i] = device_visible_source + pages[i] * page_bytes;
    device_dst[i] = arena.data() + slots[i] * page_bytes;
    host_src[i] = host_source + pages[i] * page_bytes;
    host_dst[i] = expected.data() + slots[i] * page_bytes;
  }
  const size_t array_bytes = static_cast<size_t>(num_pages) * sizeof(void*);
  ASSERT_OK_AND_ASSIGN(DeviceBuffer src_array, DeviceBuffer::Allocate(array_bytes));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer dst_array, DeviceBuffer::Allocate(array_bytes));
  ASSERT_CUDA_OK(cudaMemcpyAsync(src_array.data(), device_src.data(), array_bytes,
                                 cudaMemcpyHostToDevice, stream));
  ASSERT_CUDA_OK(cudaMemcpyAsync(dst_array.data(), device_dst.data(), array_bytes,
                                 cudaMemcpyHostToDevice, stream));

  PageCopyParams params;
  params.src = src_array.as<const void*>();
  params.dst = dst_array.as<void*>();
  params.num_pages = num_pages;
  params.page_bytes = page_bytes;
  const absl::Status launched = LaunchPageCopy(params, stream);
  ASSERT_TRUE(launched.ok()) << launched;

  std::vector<std::byte> actual(arena_bytes);
  ASSERT_CUDA_OK(
      cudaMemcpyAsync(actual.data(), arena.data(), arena_bytes, cudaMemcpyDeviceToHost, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));

  PageCopyParams reference = params;
  reference.src = host_src.data();
  reference.dst = host_dst.data();
  const absl::Status twin = ReferencePageCopy(reference);
  ASSERT_TRUE(twin.ok()) << twin;

  // Byte for byte; on a mismatch name the first wrong byte's slot and offset.
  if (std::memcmp(actual.data(), expected.data(), arena_bytes) != 0) {
    size_t first = 0;
    while (actual[first] == expected.data()[first]) ++first;
    FAIL() << "device arena differs from the reference first at slot " << first / page_bytes
           << ", byte " << first % page_bytes << ": got " << static_cast<int>(actual[first])
           << ", expected " << static_cast<int>(expected.data()[first]);
  }
}

TEST_F(PageCopyGpuTest, PinnedHostPagesMatchReference512B) {
  CheckRandomBatch(stream(), 512, /*num_source_pages=*/4096, /*num_slots=*/3000,
                   /*num_pages=*/2500);
}

TEST_F(PageCopyGpuTest, PinnedHostPagesMatchReference4KiB) {
  CheckRandomBatch(stream(), 4096, 2048, 1500, 1200);
}

// Not a power of two: pages straddle warp and tile boundaries at odd places.
TEST_F(PageCopyGpuTest, PinnedHostPagesMatchReference4112B) {
  CheckRandomBatch(stream(), 4112, 2048, 1500, 1201);
}

TEST_F(PageCopyGpuTest, PinnedHostPagesMatchReference32KiB) {
  CheckRandomBatch(stream(), 32768, 512, 400, 333);
}

TEST_F(PageCopyGpuTest, SinglePageMatchesReference) { CheckRandomBatch(stream(), 16, 8, 4, 1); }

// More vectors than one grid covers at full occupancy (about 13-17 MB on an H100): the
// grid-stride loop must reach every page.
TEST_F(PageCopyGpuTest, BatchLargerThanOneGridMatchesReference) {
  CheckRandomBatch(stream(), 512, /*num_source_pages=*/262144, /*num_slots=*/200000,
                   /*num_pages=*/150000);
}

TEST_F(PageCopyGpuTest, DeviceSourcePagesMatchReference) {
  CheckRandomBatch(stream(), 4096, 1024, 800, 700, /*device_source=*/true);
}

// Bad parameters: InvalidArgument before anything is launched, so the poisoned destination
// stays poisoned; zero pages is OK and writes nothing either.
TEST_F(PageCopyGpuTest, InvalidParamsReturnInvalidArgumentAndWriteNothing) {
  constexpr int64_t kPageBytes = 4096;
  constexpr int64_t kPages = 4;
  ASSERT_OK_AND_ASSIGN(DeviceBuffer arena, DeviceBuffer::Allocate(kPageBytes * kPages));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer source, DeviceBuffer::Allocate(kPageBytes * kPages));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer src_array, DeviceBuffer::Allocate(kPages * sizeof(void*)));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer dst_array, DeviceBuffer::Allocate(kPages * sizeof(void*)));
  ASSERT_CUDA_OK(cudaMemsetAsync(arena.data(), kPoison, kPageBytes * kPages, stream()));
  ASSERT_CUDA_OK(cudaMemsetAsync(source.data(), 0x11, kPageBytes * kPages, stream()));
  std::vector<const void*> src(kPages);
  std::vector<void*> dst(kPages);
  for (int64_t i = 0; i < kPages; ++i) {
    src[i] = source.data() + i * kPageBytes;
    dst[i] = arena.data() + i * kPageBytes;
  }
  ASSERT_CUDA_OK(cudaMemcpyAsync(src_array.data(), src.data(), kPages * sizeof(void*),
                                 cudaMemcpyHostToDevice, stream()));
  ASSERT_CUDA_OK(cudaMemcpyAsync(dst_array.data(), dst.data(), kPages * sizeof(void*),
                                 cudaMemcpyHostToDevice, stream()));
  PageCopyParams good;
  good.src = src_array.as<const void*>();
  good.dst = dst_array.as<void*>();
  good.num_pages = kPages;
  good.page_bytes = kPageBytes;

  struct Case {
    std::string what;
    PageCopyParams params;
  };
  std::vector<Case> cases;
  for (int64_t bad_size : {int64_t{0}, int64_t{-4096}, int64_t{8}, int64_t{4100}}) {
    cases.push_back({"page_bytes " + std::to_string(bad_size), good});
    cases.back().params.page_bytes = bad_size;
  }
  cases.push_back({"negative num_pages", good});
  cases.back().params.num_pages = -1;
  cases.push_back({"null src array", good});
  cases.back().params.src = nullptr;
  cases.push_back({"null dst array", good});
  cases.back().params.dst = nullptr;
  cases.push_back({"misaligned dst array", good});
  cases.back().params.dst = reinterpret_cast<void* const*>(dst_array.data() + 4);
  for (const Case& c : cases) {
    const absl::Status status = LaunchPageCopy(c.params, stream());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << status;
  }
  PageCopyParams none = good;
  none.num_pages = 0;
  EXPECT_TRUE(LaunchPageCopy(none, stream()).ok());

  std::vector<uint8_t> after(kPageBytes * kPages);
  ASSERT_CUDA_OK(
      cudaMemcpyAsync(after.data(), arena.data(), after.size(), cudaMemcpyDeviceToHost, stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  EXPECT_TRUE(std::all_of(after.begin(), after.end(), [](uint8_t b) { return b == kPoison; }))
      << "a rejected launch wrote to the destination";
  ASSERT_CUDA_OK(cudaGetLastError());  // no launch error left behind
}

}  // namespace
}  // namespace kvtier
