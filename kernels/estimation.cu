// Estimation on the GPU (contract in estimation.h). A thread block per query row (item, head);
// each of its warps folds clusters warp, warp + W, ... into an online softmax (running max,
// denominator and numerator, the numerator's D values spread over the lanes), then the warps'
// states merge by log-sum-exp. Estimation zones are hundreds to a few thousand clusters, so
// one block per row has enough work; the cluster summaries of an item are shared by its G
// rows through L2.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/dispatch.cuh"
#include "kernels/estimation.h"
#include "kernels/launch.cuh"

namespace kvtier {
namespace {

constexpr int kEstimationThreads = 128;
constexpr int kEstimationWarps = kEstimationThreads / 32;

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }

// max that keeps NaN: once either side is NaN the result is NaN.
__device__ __forceinline__ float NanMax(float a, float b) { return (b > a || b != b) ? b : a; }

// Binary search of an ascending list (every lane of a warp searches the same id).
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

template <typename T, int kDim>
__global__ void __launch_bounds__(kEstimationThreads) EstimationKernel(EstimationParams p) {
  internal::ChainedKernelStart();
  constexpr int kPerLane = kDim / 32;
  __shared__ float warp_max[kEstimationWarps];
  __shared__ float warp_denominator[kEstimationWarps];
  __shared__ float warp_numerator[kEstimationWarps][kDim];

  const int64_t row = blockIdx.x;
  const int item = static_cast<int>(row / p.group_size);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  float q[kPerLane];
  const T* q_row = static_cast<const T*>(p.q) + row * kDim + lane * kPerLane;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) q[j] = ToFloat(q_row[j]);

  int32_t begin, end;
  if (p.list_count != nullptr) {
    begin = item * p.list_stride;
    end = begin + min(max(p.list_count[item], 0), p.list_stride);
  } else {
    begin = p.cluster_offsets[item];
    end = p.cluster_offsets[item + 1];
  }
  const int32_t* exclude =
      p.exclude_ids != nullptr ? p.exclude_ids + int64_t{item} * p.exclude_stride : nullptr;
  const int32_t num_exclude =
      exclude != nullptr ? min(max(p.exclude_count[item], 0), p.exclude_stride) : 0;
  float running_max = -INFINITY, denominator = 0.0f, numerator[kPerLane] = {};
  if (end > begin) {
    const T* key_mean = static_cast<const T*>(p.key_mean[item]);
    const float* value_sum = p.value_sum[item];
    const int32_t* count = p.count[item];
    for (int32_t j = begin + warp; j < end; j += kEstimationWarps) {
      const int32_t id = p.cluster_ids[j];
      const int32_t n = count[id];
      if (n <= 0 || Contains(exclude, num_exclude, id)) continue;  // warp-uniform
      const T* c = key_mean + static_cast<size_t>(id) * kDim + lane * kPerLane;
      float dot = 0.0f;
#pragma unroll
      for (int d = 0; d < kPerLane; ++d) dot = fmaf(q[d], ToFloat(c[d]), dot);
#pragma unroll
      for (int offset = 16; offset >= 1; offset /= 2) {
        dot += __shfl_xor_sync(0xFFFFFFFFu, dot, offset);
      }
      const float logit = dot * p.softmax_scale;
      const float new_max = NanMax(running_max, logit);
      // First cluster: running_max is -inf and the old state is 0; exp(-inf) = 0 keeps it so.
      const float correction = expf(running_max - new_max);
      const float weight = expf(logit - new_max);
      const float* s = value_sum + static_cast<size_t>(id) * kDim + lane * kPerLane;
      denominator = denominator * correction + weight * static_cast<float>(n);
#pragma unroll
      for (int d = 0; d < kPerLane; ++d) numerator[d] = numerator[d] * correction + weight * s[d];
      running_max = new_max;
    }
  }
  // A warp that saw no cluster has max -inf and contributes nothing below.
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_denominator[warp] = denominator;
  }
#pragma unroll
  for (int d = 0; d < kPerLane; ++d) warp_numerator[warp][lane * kPerLane + d] = numerator[d];
  __syncthreads();

  float total_max = -INFINITY;
  for (int w = 0; w < kEstimationWarps; ++w) total_max = NanMax(total_max, warp_max[w]);
  float* out = p.out + row * kDim;
  if (total_max == -INFINITY) {  // no contributing cluster
    for (int d = threadIdx.x; d < kDim; d += kEstimationThreads) out[d] = 0.0f;
    if (threadIdx.x == 0) p.lse[row] = -INFINITY;
    return;
  }
  float scale[kEstimationWarps];
  float total_denominator = 0.0f;
  for (int w = 0; w < kEstimationWarps; ++w) {
    scale[w] = warp_max[w] == -INFINITY ? 0.0f : expf(warp_max[w] - total_max);
    total_denominator += warp_denominator[w] * scale[w];
  }
  for (int d = threadIdx.x; d < kDim; d += kEstimationThreads) {
    float value = 0.0f;
    for (int w = 0; w < kEstimationWarps; ++w) value += warp_numerator[w][d] * scale[w];
    out[d] = value / total_denominator;
  }
  if (threadIdx.x == 0) p.lse[row] = total_max + logf(total_denominator);
}

}  // namespace

absl::Status LaunchEstimation(const EstimationParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateEstimationShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  const int64_t rows = static_cast<int64_t>(params.num_items) * params.group_size;
  if (rows > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EstimationParams: ", rows, " query rows exceed one grid"));
  }
  return DispatchInt<64, 128, 256>("head_dim", params.head_dim, [&](auto dim) {
    return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(EstimationKernel<T, decltype(dim)::value>,
                                                          static_cast<int>(rows),
                                                          kEstimationThreads, 0, stream, params));
      KVTIER_RETURN_IF_LAUNCH_FAILED("EstimationKernel", stream);
      return absl::OkStatus();
    });
  });
}

}  // namespace kvtier
