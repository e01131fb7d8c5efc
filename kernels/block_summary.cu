// Page summaries on the GPU: one thread block per page, one thread per channel. A thread walks
// the page's tokens in order, so its loads of one token row are coalesced across the block and
// its sums have the same order as the host twin's (bit-identical results).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/block_summary.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"

namespace kvtier {
namespace {

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half FromFloat(float x) {
  return __float2half_rn(x);
}

template <typename T>
__global__ void PageSummaryKernel(PageSummaryParams p) {
  internal::ChainedKernelStart();
  const int j = blockIdx.x;
  const int d = threadIdx.x;
  const int dim = blockDim.x;
  const int tokens = min(max(p.tokens[j], 0), p.page_size);
  const T* k_page = static_cast<const T*>(p.k_pages[j]);
  const T* v_page = p.value_sum != nullptr ? static_cast<const T*>(p.v_pages[j]) : nullptr;
  float hi = -INFINITY, lo = INFINITY, key_sum = 0.0f, value_sum = 0.0f;
  // kBatch rows' loads are issued before any is used, so a page costs a few memory latencies
  // rather than one a row; the rows are then folded in order, as the twin does.
  constexpr int kBatch = 8;
  for (int t0 = 0; t0 < tokens; t0 += kBatch) {
    float k_rows[kBatch], v_rows[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int t = t0 + u;
      k_rows[u] = t < tokens ? ToFloat(k_page[t * dim + d]) : 0.0f;
      v_rows[u] = t < tokens && v_page != nullptr ? ToFloat(v_page[t * dim + d]) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int t = t0 + u;
      if (t >= tokens) break;
      const float k = k_rows[u];
      if (k > hi || isnan(k)) hi = isnan(hi) ? hi : k;
      if (k < lo || isnan(k)) lo = isnan(lo) ? lo : k;
      key_sum = t == 0 ? k : __fadd_rn(key_sum, k);
      if (v_page != nullptr) value_sum = t == 0 ? v_rows[u] : __fadd_rn(value_sum, v_rows[u]);
    }
  }
  if (p.bounds != nullptr) {
    T* bounds = static_cast<T*>(p.bounds[j]);
    bounds[d] = FromFloat<T>(hi);
    bounds[dim + d] = FromFloat<T>(lo);
  }
  if (p.key_mean != nullptr) {
    const float mean = tokens == 0 ? 0.0f : __fdiv_rn(key_sum, static_cast<float>(tokens));
    static_cast<T*>(p.key_mean[j])[d] = FromFloat<T>(mean);
  }
  if (p.value_sum != nullptr) p.value_sum[j][d] = value_sum;
  if (p.count != nullptr && d == 0) *p.count[j] = tokens;
}

}  // namespace

absl::Status LaunchPageSummaries(const PageSummaryParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageSummaryShape(params));
  if (params.num_pages == 0) return absl::OkStatus();
  return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
    using T = typename decltype(element)::type;
    KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(PageSummaryKernel<T>, params.num_pages,
                                                        params.head_dim, 0, stream, params));
    KVTIER_RETURN_IF_LAUNCH_FAILED("PageSummaryKernel", stream);
    return absl::OkStatus();
  });
}

}  // namespace kvtier
