// Batched page copy on the GPU: the zero-copy page load. With sources in pinned, mapped host
// memory every load crosses PCIe; the rate depends on how many reads are in flight, so each
// thread issues several independent 16-byte loads before it stores any of them, and the grid
// fills every SM (grid-stride beyond that).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/launch.cuh"
#include "kernels/page_copy.h"

namespace kvtier {
namespace {

constexpr int kPageCopyThreads = 256;
// 16-byte loads in flight per thread. At 40 registers a thread (sm_90, 6 blocks an SM),
// 4 x 16 B x 1536 threads x 132 SMs is ~13 MB requested at once on an H100, far beyond
// PCIe's bandwidth-latency product (~100 KB), with registers to spare.
constexpr int kPageCopyUnroll = 4;

// The kernel's view of PageCopyParams: pages as runs of 16-byte vectors. `Index` is 32-bit
// when every vector index of the batch (plus one grid's worth of tiles) fits, which makes
// the per-vector page division cheap; 64-bit otherwise.
template <typename Index>
struct PageCopyKernelParams {
  const uint4* const* src;  // [num_pages] page sources, 16-byte aligned
  uint4* const* dst;        // [num_pages] page destinations, 16-byte aligned
  Index vectors_per_page;   // page_bytes / 16
  Index total_vectors;      // num_pages * vectors_per_page
};

// Entry i of a pointer array. The arrays do not change while the kernel runs, so they are
// read through the read-only data cache.
template <typename T, typename Index>
__device__ __forceinline__ T* LoadPagePointer(T* const* array, Index i) {
  static_assert(sizeof(T*) == sizeof(unsigned long long));
  return reinterpret_cast<T*>(__ldg(reinterpret_cast<const unsigned long long*>(array) + i));
}

// A block copies tiles of kThreads * kUnroll consecutive vectors of the flattened batch
// (pages back to back); thread t takes vectors t, t + kThreads, ... of the tile, so each
// warp load is 512 contiguous bytes unless it straddles a page end. Tiles are grid-strided.
template <typename Index, int kThreads, int kUnroll>
__global__ void __launch_bounds__(kThreads) PageCopyKernel(PageCopyKernelParams<Index> p) {
  internal::ChainedKernelStart();
  constexpr Index kTile = static_cast<Index>(kThreads) * kUnroll;
  for (Index tile_start = static_cast<Index>(blockIdx.x) * kTile; tile_start < p.total_vectors;
       tile_start += static_cast<Index>(gridDim.x) * kTile) {
    uint4 value[kUnroll];
    Index page[kUnroll];
    Index offset[kUnroll];
    // All loads first: they are independent, so they are in flight together.
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const Index v = tile_start + static_cast<Index>(k * kThreads + threadIdx.x);
      page[k] = v / p.vectors_per_page;
      offset[k] = v - page[k] * p.vectors_per_page;
      if (v < p.total_vectors) value[k] = LoadPagePointer(p.src, page[k])[offset[k]];
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const Index v = tile_start + static_cast<Index>(k * kThreads + threadIdx.x);
      if (v < p.total_vectors) LoadPagePointer(p.dst, page[k])[offset[k]] = value[k];
    }
  }
}

// Resident blocks of `kernel` on the whole current device. Cached per device (the launcher
// runs every decode step; occupancy does not change during a process).
template <typename Kernel>
absl::StatusOr<int> ResidentBlocks(Kernel kernel, int device) {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<int> cache[kMaxCachedDevices] = {};
  if (device >= 0 && device < kMaxCachedDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sm_count = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  int blocks_per_sm = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_sm, kernel, kPageCopyThreads, /*dynamicSMemSize=*/0));
  const int blocks = std::max(1, sm_count * std::max(1, blocks_per_sm));
  if (device >= 0 && device < kMaxCachedDevices) {
    cache[device].store(blocks, std::memory_order_relaxed);
  }
  return blocks;
}

template <typename Index>
absl::Status LaunchTyped(const PageCopyParams& params, cudaStream_t stream) {
  constexpr auto kernel = PageCopyKernel<Index, kPageCopyThreads, kPageCopyUnroll>;
  PageCopyKernelParams<Index> p;
  p.src = reinterpret_cast<const uint4* const*>(params.src);
  p.dst = reinterpret_cast<uint4* const*>(params.dst);
  p.vectors_per_page = static_cast<Index>(params.page_bytes / 16);
  p.total_vectors = static_cast<Index>(params.num_pages * (params.page_bytes / 16));

  int device = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  KVTIER_ASSIGN_OR_RETURN(const int resident_blocks, ResidentBlocks(kernel, device));
  constexpr int64_t kTile = int64_t{kPageCopyThreads} * kPageCopyUnroll;
  const int64_t tiles = (static_cast<int64_t>(p.total_vectors) + kTile - 1) / kTile;
  const int blocks = static_cast<int>(std::min<int64_t>(tiles, resident_blocks));
  KVTIER_CUDA_RETURN_IF_ERROR(
      internal::LaunchChained(kernel, blocks, kPageCopyThreads, 0, stream, p));
  KVTIER_RETURN_IF_LAUNCH_FAILED("PageCopyKernel", stream);
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchPageCopy(const PageCopyParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageCopyShape(params));
  if (params.num_pages == 0) return absl::OkStatus();
  const int64_t total_vectors = params.num_pages * (params.page_bytes / 16);
  // 32-bit indexes while the last tile start plus one grid stride stays below 2^32.
  if (total_vectors <= std::numeric_limits<int32_t>::max()) {
    return LaunchTyped<uint32_t>(params, stream);
  }
  return LaunchTyped<uint64_t>(params, stream);
}

}  // namespace kvtier
