// The miss load on the GPU. Grid: (item, split). The blocks of one item share its misses'
// K and V pages, laid end to end as 16-byte vectors, and stride over them; each thread
// issues kUnroll independent loads before storing, so enough PCIe reads are in flight
// (the same reasoning as page_copy.cu). Blocks beyond an item's miss count exit at once,
// which is what lets the count stay on the device.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/launch.cuh"
#include "kernels/miss_load.h"

namespace kvtier {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

// Address of vector `v` of the item's misses: pages ordered (miss 0 K, miss 0 V, miss 1 K,
// ...), `vectors_per_page` vectors each. Returns the source and sets `dst`.
__device__ __forceinline__ const uint4* MissVector(const MissLoadParams& p, int32_t item, int64_t v,
                                                   int64_t vectors_per_page, uint4** dst) {
  const int64_t page = v / vectors_per_page;  // 2 pages (K, V) per miss
  const int64_t offset = v - page * vectors_per_page;
  const int64_t at = int64_t{item} * p.max_misses + page / 2;
  const int64_t entry = p.page_table_offset[item] + __ldg(p.miss_pages + at);
  const int64_t slot_offset = int64_t{__ldg(p.miss_slots + at)} * vectors_per_page;
  const bool is_v = (page & 1) != 0;
  auto* base = static_cast<uint4*>(is_v ? p.slot_v_base[item] : p.slot_k_base[item]);
  *dst = base + slot_offset + offset;
  const void* src = is_v ? p.host_v_pages[entry] : p.host_k_pages[entry];
  return static_cast<const uint4*>(src) + offset;
}

__global__ void __launch_bounds__(kThreads) MissLoadKernel(MissLoadParams p) {
  internal::ChainedKernelStart();
  const int32_t item = static_cast<int32_t>(blockIdx.x);
  const int32_t count = min(max(__ldg(p.miss_count + item), 0), p.max_misses);
  const int64_t vectors_per_page = p.page_bytes / 16;
  const int64_t total = int64_t{count} * 2 * vectors_per_page;
  constexpr int64_t kTile = int64_t{kThreads} * kUnroll;
  for (int64_t tile = int64_t{blockIdx.y} * kTile; tile < total;
       tile += int64_t{gridDim.y} * kTile) {
    uint4 value[kUnroll];
    uint4* dst[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t v = tile + k * kThreads + threadIdx.x;
      if (v < total) value[k] = *MissVector(p, item, v, vectors_per_page, &dst[k]);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t v = tile + k * kThreads + threadIdx.x;
      if (v < total) *dst[k] = value[k];
    }
  }
}

}  // namespace

absl::Status LaunchMissLoad(const MissLoadParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateMissLoadShape(params));
  if (params.num_items == 0 || params.max_misses == 0) return absl::OkStatus();
  // Splits per item: enough blocks in all to fill the GPU even when the batch has few items,
  // never more than an item's largest possible miss list needs.
  int sm_count = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(internal::CurrentSmCount(&sm_count));
  const int64_t max_tiles =
      (int64_t{params.max_misses} * 2 * (params.page_bytes / 16) + kThreads * kUnroll - 1) /
      (kThreads * kUnroll);
  const int64_t wanted = (int64_t{sm_count} * 8 + params.num_items - 1) / params.num_items;
  const int splits =
      static_cast<int>(std::clamp<int64_t>(wanted, 1, std::min<int64_t>(max_tiles, 65535)));
  KVTIER_CUDA_RETURN_IF_ERROR(
      internal::LaunchChained(MissLoadKernel, dim3(static_cast<unsigned>(params.num_items), splits),
                              kThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("MissLoadKernel", stream);
  return absl::OkStatus();
}

}  // namespace kvtier
