// Page summaries on the GPU: one thread block per page, one thread per channel. A thread walks
// the page's tokens in order, so its loads of one token row are coalesced across the block and
// its sums have the same order as the host twin's (bit-identical results).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/block_summary.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/warp_math.cuh"

namespace kvtier {
namespace {

using internal::ToFloat;

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

// The mean over the channels of one value a thread (a thread a channel, blockDim.x = D): each
// warp's xor butterfly, the groups added in order, / D (block_summary.cc's ChannelSum). Every
// thread of the block calls it and gets the same bits; `scratch` holds D / 32 floats.
__device__ __forceinline__ float ChannelMean(float v, float* scratch) {
  const int dim = blockDim.x;
#pragma unroll
  for (int offset = 16; offset >= 1; offset /= 2) {
    v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = scratch[0];
  for (int w = 1; w < dim / 32; ++w) total = __fadd_rn(total, scratch[w]);
  __syncthreads();  // scratch free for the next call
  return __fdiv_rn(total, static_cast<float>(dim));
}

template <typename T>
__global__ void PageSummaryKernel(PageSummaryParams p) {
  internal::ChainedKernelStart();
  const int j = blockIdx.x;
  const int d = threadIdx.x;
  const int dim = blockDim.x;
  const int tokens = min(max(p.tokens[j], 0), p.page_size);
  const T* k_page = static_cast<const T*>(p.k_pages[j]);
  const T* v_page = p.value_mean != nullptr ? static_cast<const T*>(p.v_pages[j]) : nullptr;
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
  if (p.value_mean != nullptr) {
    const float mean = tokens == 0 ? 0.0f : __fdiv_rn(value_sum, static_cast<float>(tokens));
    static_cast<T*>(p.value_mean[j])[d] = FromFloat<T>(mean);
  }
  if (p.count != nullptr && d == 0) *p.count[j] = tokens;
  if (p.key_spread != nullptr) {
    const float mean = tokens == 0 ? 0.0f : __fdiv_rn(key_sum, static_cast<float>(tokens));
    float square_sum = 0.0f;
    for (int t = 0; t < tokens; ++t) {
      const float deviation = __fadd_rn(ToFloat(k_page[t * dim + d]), -mean);
      const float square = __fmul_rn(deviation, deviation);
      square_sum = t == 0 ? square : __fadd_rn(square_sum, square);
    }
    const float variance = tokens == 0 ? 0.0f : __fdiv_rn(square_sum, static_cast<float>(tokens));
    __shared__ float scratch[8];  // D <= 256
    const float spread = ChannelMean(variance, scratch);
    if (d == 0) p.key_spread[j][0] = spread;
  }
}

// The split centroid (centroid_parts = 2, block_summary.h): one thread per channel, as above.
// dist(t, c) for every token: each warp's butterfly over its 32 channels, lane 0 parks the
// group sum, thread t adds the groups in order. Every thread then reads the same distances
// and takes the same decisions.
template <typename T>
__global__ void SplitSummaryKernel(PageSummaryParams p) {
  internal::ChainedKernelStart();
  __shared__ float group_sum[kMaxSplitPageSize][8];  // [token][channel group], D <= 256
  __shared__ float distance[kMaxSplitPageSize];
  __shared__ int part[kMaxSplitPageSize];
  const int j = blockIdx.x;
  const int d = threadIdx.x;
  const int dim = blockDim.x;
  const int lane = d % 32;
  const int group = d / 32;
  const int tokens = min(max(p.tokens[j], 0), p.page_size);
  const T* k_page = static_cast<const T*>(p.k_pages[j]);
  auto key = [&](int t) { return ToFloat(k_page[t * dim + d]); };
  // Fills distance[t] = dist(t, c) for c this thread's channel value `centre`.
  auto distances = [&](auto centre_of) {
    for (int t = 0; t < tokens; ++t) {
      const float diff = __fadd_rn(key(t), -centre_of(t));
      float v = __fmul_rn(diff, diff);
#pragma unroll
      for (int offset = 16; offset >= 1; offset /= 2) {
        v = __fadd_rn(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
      }
      if (lane == 0) group_sum[t][group] = v;
    }
    __syncthreads();
    if (d < tokens) {
      float total = group_sum[d][0];
      for (int w = 1; w < dim / 32; ++w) total = __fadd_rn(total, group_sum[d][w]);
      distance[d] = total;
    }
    __syncthreads();
  };
  // Mean over the tokens of part `which` (token order), or `fallback` for an empty part.
  auto part_mean = [&](int which, float fallback) {
    float sum = 0.0f;
    int count = 0;
    for (int t = 0; t < tokens; ++t) {
      if (part[t] != which) continue;
      sum = count == 0 ? key(t) : __fadd_rn(sum, key(t));
      ++count;
    }
    return count > 0 ? __fdiv_rn(sum, static_cast<float>(count)) : fallback;
  };

  for (int t = d; t < tokens; t += dim) part[t] = 0;
  __syncthreads();
  if (tokens >= 2) {
    const float mean = part_mean(0, 0.0f);
    distances([&](int) { return mean; });
    int a = 0;
    float best = -1.0f;
    for (int t = 0; t < tokens; ++t) {
      if (distance[t] > best) {
        best = distance[t];
        a = t;
      }
    }
    __syncthreads();
    for (int t = d; t < tokens; t += dim) part[t] = t == a ? 0 : 1;
    __syncthreads();
    float c0 = key(a);
    float c1 = part_mean(1, 0.0f);
    __syncthreads();
    for (int iteration = 0; iteration < kSplitIterations; ++iteration) {
      distances([&](int) { return c1; });
      // distance[] holds dist(t, c1); keep it per token while dist(t, c0) is computed.
      float to_c1 = d < tokens ? distance[d] : 0.0f;
      __syncthreads();
      distances([&](int) { return c0; });
      if (d < tokens) part[d] = to_c1 < distance[d] ? 1 : 0;
      __syncthreads();
      c0 = part_mean(0, c0);
      c1 = part_mean(1, c1);
      __syncthreads();
    }
  }

  // The summaries of both parts (and the page's bounds) in token order.
  const T* v_page = p.value_mean != nullptr ? static_cast<const T*>(p.v_pages[j]) : nullptr;
  float hi = -INFINITY, lo = INFINITY;
  float key_sum[2] = {0.0f, 0.0f}, value_sum[2] = {0.0f, 0.0f};
  int count[2] = {0, 0};
  for (int t = 0; t < tokens; ++t) {
    const float k = key(t);
    if (k > hi || isnan(k)) hi = isnan(hi) ? hi : k;
    if (k < lo || isnan(k)) lo = isnan(lo) ? lo : k;
    const int which = part[t];
    key_sum[which] = count[which] == 0 ? k : __fadd_rn(key_sum[which], k);
    if (v_page != nullptr) {
      const float v = ToFloat(v_page[t * dim + d]);
      value_sum[which] = count[which] == 0 ? v : __fadd_rn(value_sum[which], v);
    }
    ++count[which];
  }
  if (p.bounds != nullptr) {
    T* bounds = static_cast<T*>(p.bounds[j]);
    bounds[d] = FromFloat<T>(hi);
    bounds[dim + d] = FromFloat<T>(lo);
  }
  for (int which = 0; which < 2; ++which) {
    const float mean =
        count[which] == 0 ? 0.0f : __fdiv_rn(key_sum[which], static_cast<float>(count[which]));
    static_cast<T*>(p.key_mean[j])[which * dim + d] = FromFloat<T>(mean);
    if (p.value_mean != nullptr) {
      const float value_mean =
          count[which] == 0 ? 0.0f : __fdiv_rn(value_sum[which], static_cast<float>(count[which]));
      static_cast<T*>(p.value_mean[j])[which * dim + d] = FromFloat<T>(value_mean);
    }
    if (p.count != nullptr && d == 0) p.count[j][which] = count[which];
  }
  if (p.key_spread != nullptr) {
    float mean[2], square_sum[2] = {0.0f, 0.0f};
    int seen[2] = {0, 0};
    for (int which = 0; which < 2; ++which) {
      mean[which] =
          count[which] == 0 ? 0.0f : __fdiv_rn(key_sum[which], static_cast<float>(count[which]));
    }
    for (int t = 0; t < tokens; ++t) {
      const int which = part[t];
      const float deviation = __fadd_rn(key(t), -mean[which]);
      const float square = __fmul_rn(deviation, deviation);
      square_sum[which] = seen[which] == 0 ? square : __fadd_rn(square_sum[which], square);
      ++seen[which];
    }
    for (int which = 0; which < 2; ++which) {
      const float variance =
          count[which] == 0 ? 0.0f : __fdiv_rn(square_sum[which], static_cast<float>(count[which]));
      const float spread = ChannelMean(variance, group_sum[0]);
      if (d == 0) p.key_spread[j][which] = spread;
    }
  }
}

}  // namespace

absl::Status LaunchPageSummaries(const PageSummaryParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageSummaryShape(params));
  if (params.num_pages == 0) return absl::OkStatus();
  return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
    using T = typename decltype(element)::type;
    if (params.centroid_parts == 2) {
      KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(SplitSummaryKernel<T>, params.num_pages,
                                                          params.head_dim, 0, stream, params));
      KVTIER_RETURN_IF_LAUNCH_FAILED("SplitSummaryKernel", stream);
      return absl::OkStatus();
    }
    KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(PageSummaryKernel<T>, params.num_pages,
                                                        params.head_dim, 0, stream, params));
    KVTIER_RETURN_IF_LAUNCH_FAILED("PageSummaryKernel", stream);
    return absl::OkStatus();
  });
}

}  // namespace kvtier
