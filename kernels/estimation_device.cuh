// What the two estimation kernel files share (estimation.cu: the kernel that computes the
// logits from the mean keys; estimation_logits.cu: the one that takes them from the zone's
// scoring pass). Internal to kernels/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/estimation.h"
#include "kernels/launch.cuh"
#include "kernels/warp_math.cuh"

namespace kvtier::internal {

// Two consecutive elements (4-byte aligned) as floats.
__device__ __forceinline__ float2 ToFloat2(const __nv_bfloat16* x) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x));
}
__device__ __forceinline__ float2 ToFloat2(const __half* x) {
  return __half22float2(*reinterpret_cast<const __half2*>(x));
}

// max that keeps NaN: once either side is NaN the result is NaN.
__device__ __forceinline__ float NanMax(float a, float b) { return (b > a || b != b) ? b : a; }

__device__ __forceinline__ float WarpNanMax(float x) {
#pragma unroll
  for (int offset = 16; offset >= 1; offset /= 2) {
    x = NanMax(x, __shfl_xor_sync(0xFFFFFFFFu, x, offset));
  }
  return x;
}

// Binary search of an ascending list in shared memory.
__device__ __forceinline__ bool Contains(const int32_t* list, int32_t n, int32_t id) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (list[mid] < id) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < n && list[lo] == id;
}

// The largest exclusion list a block holds (shared memory): 16K ids, beyond any budget.
inline constexpr size_t kMaxExcludeBytes = 64 * 1024;

// Where the blocks of one launch write: p.out / p.lse with one run an item, else run r's
// partial rows at partial_out[(r * rows + row) * D] and partial_lse[r * rows + row].
struct RunOutput {
  int runs = 1;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
};

// The block's run of an item's entries, [begin, end): the item's whole list (fixed-stride or
// offsets) or cluster range, cut into runs.runs equal pieces. Entry e names cluster
// EntryCluster(p, e).
__device__ __forceinline__ void RunRange(const EstimationParams& p, const RunOutput& runs, int item,
                                         int run, int32_t& begin, int32_t& end) {
  if (p.range_begin != nullptr) {
    begin = max(p.range_begin[item], 0);
    end = max(p.range_end[item], begin);
  } else if (p.list_count != nullptr) {
    begin = item * p.list_stride;
    end = begin + min(max(p.list_count[item], 0), p.list_stride);
  } else {
    begin = p.cluster_offsets[item];
    end = p.cluster_offsets[item + 1];
  }
  if (runs.runs > 1) {
    const int32_t length = (max(end - begin, 0) + runs.runs - 1) / runs.runs;
    begin = min(end, begin + run * length);
    end = min(end, begin + length);
  }
}

__device__ __forceinline__ int32_t EntryCluster(const EstimationParams& p, int32_t e) {
  return p.range_begin != nullptr ? e : p.cluster_ids[e];
}

// Runs an item's list is cut into: enough blocks to fill the GPU's block slots at least
// twice, in waves whose last one is nearly full, at least min_entries entries a block of a
// fixed-stride list, at most what the workspace holds; 1 without a workspace. The partial
// results' arrays (RunOutput) are set up too. InvalidArgument for a workspace too small.
template <typename Kernel>
absl::Status ChooseRuns(const EstimationParams& p, Kernel kernel, int threads, size_t smem,
                        int64_t blocks, int min_entries, RunOutput* out) {
  out->runs = 1;
  if (p.workspace == nullptr) return absl::OkStatus();
  if (p.workspace_bytes < EstimationWorkspaceBytes(p.num_items, p.group_size, p.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("EstimationParams: workspace has ", p.workspace_bytes,
                     " bytes; expected at least ", "EstimationWorkspaceBytes = ",
                     EstimationWorkspaceBytes(p.num_items, p.group_size, p.head_dim)));
  }
  if (reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0) {
    return absl::InvalidArgumentError("EstimationParams: workspace is not 16-byte aligned");
  }
  int sm_count = 0, per_sm = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(CurrentSmCount(&sm_count));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const int64_t slots = int64_t{sm_count} * std::max(per_sm, 1);
  int64_t limit = kMaxEstimationSplits;
  if (p.list_count != nullptr) {
    limit = std::clamp<int64_t>(p.list_stride / min_entries, 1, limit);
  }
  // From two waves' worth up, the first run count whose last wave is nearly full (a wave of
  // 2.2 took as long as one of 3), else the fullest. One wave's worth (longer runs, no more
  // than 16 warps an SM) was no faster for estimation_logits.cu's kernel on the H200.
  const int64_t first = std::clamp<int64_t>((2 * slots + blocks - 1) / blocks, 1, limit);
  int64_t best = first;
  double best_fill = 0.0;
  for (int64_t r = first; r <= limit; ++r) {
    const int64_t waves = (blocks * r + slots - 1) / slots;
    const double fill = static_cast<double>(blocks * r) / static_cast<double>(waves * slots);
    if (fill > best_fill + 1e-9) {
      best = r;
      best_fill = fill;
    }
    if (fill >= 0.9) break;
  }
  out->runs = static_cast<int>(best);
  if (out->runs > 1) {
    const size_t rows = static_cast<size_t>(p.num_items) * p.group_size;
    const size_t out_bytes =
        (size_t{kMaxEstimationSplits} * rows * p.head_dim * 4 + 255) / 256 * 256;
    out->partial_out = static_cast<float*>(p.workspace);
    out->partial_lse = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + out_bytes);
  }
  return absl::OkStatus();
}

// EstimationParams::superset_out: the superset's estimate less the one in out / lse, in place
// (one warp a row; a launch after the estimation on `stream`). `p` is validated.
absl::Status LaunchRestOfSuperset(const EstimationParams& p, cudaStream_t stream);

// The estimation from the zone's scoring logits (p.logits set; estimation_logits.cu). `p` is
// validated and has items.
absl::Status LaunchLogitEstimation(const EstimationParams& p, cudaStream_t stream);

}  // namespace kvtier::internal
