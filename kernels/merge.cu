// Exact log-sum-exp merge of partial attention results on the GPU: one block per query row. Parts
// come either as device arrays of pointers (the public LaunchMergePartials) or back to back in one
// buffer (the split-K reduction of LaunchPagedDecodeAttention); both share the row merge below.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/decode_attention.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"

namespace kvtier {
namespace {

constexpr int kMergeWarps = 8;
constexpr int kMergeThreads = kMergeWarps * 32;

// Parts given as [num_parts] device arrays of device pointers.
struct PointerParts {
  const float* const* out;
  const float* const* lse;
  __device__ float Lse(int j, int64_t row) const {
    return __ldg(reinterpret_cast<const float*>(
                     __ldg(reinterpret_cast<const unsigned long long*>(lse) + j)) +
                 row);
  }
  __device__ const float* OutRow(int j, int64_t row, int head_dim) const {
    return reinterpret_cast<const float*>(
               __ldg(reinterpret_cast<const unsigned long long*>(out) + j)) +
           row * head_dim;
  }
};

// Parts stored back to back: part j at out + j * num_rows * head_dim, lse + j * num_rows.
struct StridedParts {
  const float* out;
  const float* lse;
  int64_t num_rows;
  __device__ float Lse(int j, int64_t row) const { return __ldg(lse + j * num_rows + row); }
  __device__ const float* OutRow(int j, int64_t row, int head_dim) const {
    return out + (j * num_rows + row) * head_dim;
  }
};

template <typename OutT>
__device__ __forceinline__ OutT FromFloat(float x) {
  if constexpr (std::is_same_v<OutT, float>) {
    return x;
  } else if constexpr (std::is_same_v<OutT, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return __float2half_rn(x);
  }
}

// A block-wide reduction of one float per thread; every thread gets the result.
template <typename Op>
__device__ __forceinline__ float BlockReduce(float value, Op op, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  __syncthreads();  // scratch is free
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = value;
  __syncthreads();
  value = scratch[0];
#pragma unroll
  for (int w = 1; w < kMergeWarps; ++w) value = op(value, scratch[w]);
  return value;
}

// One block per row. Same rules as the host twin: a NaN lse makes the row NaN; parts at -inf
// are skipped and their rows never read; no contributing part gives 0 and -inf; the weights
// are exp(lse_j - max) so the largest is 1 (a +inf maximum gives NaN, as in the twin).
// A merge moves little data but may have many parts (split-K uses up to 256): the parts are
// spread over the block's warps, each warp loading kVec floats a lane from several part rows
// at once, so the row costs a few memory latencies instead of one per part.
template <typename OutT, typename Parts, int kVec>
__global__ void __launch_bounds__(kMergeThreads)
    MergeKernel(Parts parts, int num_parts, int head_dim, OutT* out, float* lse) {
  internal::ChainedKernelStart();
  __shared__ float scratch[kMergeWarps];
  __shared__ float weights[kMergeThreads];
  __shared__ float partial[kMergeWarps][32 * kVec];
  const int64_t row = blockIdx.x;
  const int t = threadIdx.x;
  const int warp = t / 32;
  const int lane = t % 32;
  OutT* const out_row = out + row * head_dim;

  float max_lse = -INFINITY;
  bool any_nan = false;
  for (int j = t; j < num_parts; j += kMergeThreads) {
    const float x = parts.Lse(j, row);
    any_nan |= isnan(x);
    max_lse = fmaxf(max_lse, x);
  }
  any_nan = __syncthreads_or(any_nan);
  max_lse = BlockReduce(
      max_lse, [](float a, float b) { return fmaxf(a, b); }, scratch);
  if (any_nan || isinf(max_lse)) {
    // NaN for a NaN or a +inf part (exp(inf - inf) in the twin), else no part contributes.
    const bool nan_row = any_nan || max_lse > 0.0f;
    for (int d = t; d < head_dim; d += kMergeThreads) {
      out_row[d] = FromFloat<OutT>(nan_row ? NAN : 0.0f);
    }
    if (t == 0) lse[row] = nan_row ? NAN : -INFINITY;
    return;
  }
  // Weight of part j, or -1 for a part that contributes nothing (its row is not read).
  auto weight_of = [&](int j) {
    if (j >= num_parts) return -1.0f;
    const float x = parts.Lse(j, row);
    return x == -INFINITY ? -1.0f : expf(x - max_lse);
  };
  float weight_sum = 0.0f;
  for (int j = t; j < num_parts; j += kMergeThreads) weight_sum += fmaxf(weight_of(j), 0.0f);
  weight_sum = BlockReduce(
      weight_sum, [](float a, float b) { return a + b; }, scratch);
  const float inverse = 1.0f / weight_sum;

  for (int d0 = 0; d0 < head_dim; d0 += 32 * kVec) {
    const int d = d0 + lane * kVec;
    float acc[kVec] = {};
    for (int tile = 0; tile < num_parts; tile += kMergeThreads) {
      __syncthreads();  // the previous tile's weights are used up
      weights[t] = weight_of(tile + t);
      __syncthreads();
      const int count = min(kMergeThreads, num_parts - tile);
#pragma unroll 4
      for (int k = warp; k < count; k += kMergeWarps) {
        const float w = weights[k];
        if (w >= 0.0f && d < head_dim) {
          const float* src = parts.OutRow(tile + k, row, head_dim) + d;
          if constexpr (kVec == 4) {
            const float4 v = __ldg(reinterpret_cast<const float4*>(src));
            acc[0] += w * v.x;
            acc[1] += w * v.y;
            acc[2] += w * v.z;
            acc[3] += w * v.w;
          } else {
            acc[0] += w * __ldg(src);
          }
        }
      }
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) partial[warp][lane * kVec + e] = acc[e];
    __syncthreads();
    for (int i = t; i < 32 * kVec; i += kMergeThreads) {
      if (d0 + i >= head_dim) break;
      float value = 0.0f;
#pragma unroll
      for (int w = 0; w < kMergeWarps; ++w) value += partial[w][i];
      out_row[d0 + i] = FromFloat<OutT>(value * inverse);
    }
    __syncthreads();  // partial is read before the next slice overwrites it
  }
  if (t == 0) lse[row] = max_lse + logf(weight_sum);
}

// The widest row MergeFewPartsKernel takes (8 columns a lane).
constexpr int kFewPartsMaxDim = 256;

// One warp per row, for at most 32 parts (a decode step's merges have a handful): lane j
// reads part j's lse and row address once, the weights come from warp shuffles, and each lane
// sums its columns over the parts. The same rules as MergeKernel, without its block-wide
// barriers, which cost more than the data moved when parts are few (7 us for 768 rows of 3
// parts on the H100, against about 3 us for the memory latencies).
template <typename OutT, typename Parts>
__global__ void __launch_bounds__(kMergeThreads)
    MergeFewPartsKernel(Parts parts, int num_parts, int num_rows, int head_dim, OutT* out,
                        float* lse) {
  internal::ChainedKernelStart();
  const int64_t row = int64_t{blockIdx.x} * kMergeWarps + threadIdx.x / 32;
  if (row >= num_rows) return;
  const int lane = threadIdx.x % 32;
  OutT* const out_row = out + row * head_dim;
  const bool has_part = lane < num_parts;
  const float x = has_part ? parts.Lse(lane, row) : -INFINITY;
  const bool any_nan = __any_sync(0xffffffffu, isnan(x));
  float max_lse = isnan(x) ? -INFINITY : x;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    max_lse = fmaxf(max_lse, __shfl_xor_sync(0xffffffffu, max_lse, offset));
  }
  if (any_nan || isinf(max_lse)) {
    const bool nan_row = any_nan || max_lse > 0.0f;
    for (int d = lane; d < head_dim; d += 32) out_row[d] = FromFloat<OutT>(nan_row ? NAN : 0.0f);
    if (lane == 0) lse[row] = nan_row ? NAN : -INFINITY;
    return;
  }
  // Weight of this lane's part, or -1 for a part that contributes nothing (never read).
  const float weight = has_part && x != -INFINITY ? expf(x - max_lse) : -1.0f;
  float weight_sum = fmaxf(weight, 0.0f);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    weight_sum += __shfl_xor_sync(0xffffffffu, weight_sum, offset);
  }
  const float inverse = 1.0f / weight_sum;
  const auto address = has_part && weight >= 0.0f
                           ? reinterpret_cast<unsigned long long>(parts.OutRow(lane, row, head_dim))
                           : 0ull;
  // Every column of a part at once (head_dim <= kFewPartsMaxDim), parts in order: a part's
  // loads travel together instead of one column slice at a time.
  constexpr int kMaxColumns = kFewPartsMaxDim / 32;
  float acc[kMaxColumns];
#pragma unroll
  for (int k = 0; k < kMaxColumns; ++k) acc[k] = 0.0f;
#pragma unroll 2
  for (int j = 0; j < num_parts; ++j) {
    const float w = __shfl_sync(0xffffffffu, weight, j);
    const auto* src = reinterpret_cast<const float*>(__shfl_sync(0xffffffffu, address, j));
    if (w < 0.0f) continue;  // warp-uniform
#pragma unroll
    for (int k = 0; k < kMaxColumns; ++k) {
      const int d = lane + 32 * k;
      if (d < head_dim) acc[k] += w * __ldg(src + d);
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxColumns; ++k) {
    const int d = lane + 32 * k;
    if (d < head_dim) out_row[d] = FromFloat<OutT>(acc[k] * inverse);
  }
  if (lane == 0) lse[row] = max_lse + logf(weight_sum);
}

// kVec 4 needs head_dim % 4 == 0 and 16-byte aligned part rows.
template <int kVec, typename Parts>
absl::Status LaunchMerge(const Parts& parts, int num_parts, int num_rows, int head_dim,
                         DType out_dtype, void* out, float* lse, cudaStream_t stream) {
  return DispatchOutputDType(out_dtype, [&](auto element) -> absl::Status {
    using OutT = typename decltype(element)::type;
    if (num_parts <= 32 && head_dim <= kFewPartsMaxDim) {
      const int blocks = (num_rows + kMergeWarps - 1) / kMergeWarps;
      KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(
          MergeFewPartsKernel<OutT, Parts>, blocks, kMergeThreads, 0, stream, parts, num_parts,
          num_rows, head_dim, static_cast<OutT*>(out), lse));
      KVTIER_RETURN_IF_LAUNCH_FAILED("MergeFewPartsKernel", stream);
      return absl::OkStatus();
    }
    KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(MergeKernel<OutT, Parts, kVec>, num_rows,
                                                        kMergeThreads, 0, stream, parts, num_parts,
                                                        head_dim, static_cast<OutT*>(out), lse));
    KVTIER_RETURN_IF_LAUNCH_FAILED("MergeKernel", stream);
    return absl::OkStatus();
  });
}

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("MergeParams: ", message));
}

absl::Status ValidateSizes(int num_parts, int num_rows, int head_dim) {
  if (num_parts < 1) return Invalid(absl::StrCat("num_parts is ", num_parts, "; expected >= 1"));
  if (num_rows < 1) return Invalid(absl::StrCat("num_rows is ", num_rows, "; expected >= 1"));
  if (head_dim < 1) return Invalid(absl::StrCat("head_dim is ", head_dim, "; expected >= 1"));
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchMergePartials(const MergeParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(ValidateSizes(params.num_parts, params.num_rows, params.head_dim));
  if (params.part_out == nullptr) return Invalid("part_out is null");
  if (params.part_lse == nullptr) return Invalid("part_lse is null");
  if (params.out == nullptr) return Invalid("out is null");
  if (params.lse == nullptr) return Invalid("lse is null");
  // Scalar loads: the alignment of the parts' rows is not known on the host.
  return LaunchMerge<1>(PointerParts{params.part_out, params.part_lse}, params.num_parts,
                        params.num_rows, params.head_dim, params.out_dtype, params.out, params.lse,
                        stream);
}

namespace internal {

absl::Status LaunchMergeStridedPartials(const float* part_out, const float* part_lse, int num_parts,
                                        int num_rows, int head_dim, DType out_dtype, void* out,
                                        float* lse, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(ValidateSizes(num_parts, num_rows, head_dim));
  if (part_out == nullptr || part_lse == nullptr || out == nullptr || lse == nullptr) {
    return Invalid("a strided merge pointer is null");
  }
  const StridedParts parts{part_out, part_lse, num_rows};
  // The workspace is 16-byte aligned; rows are head_dim floats apart.
  if (head_dim % 4 == 0 && reinterpret_cast<uintptr_t>(part_out) % 16 == 0) {
    return LaunchMerge<4>(parts, num_parts, num_rows, head_dim, out_dtype, out, lse, stream);
  }
  return LaunchMerge<1>(parts, num_parts, num_rows, head_dim, out_dtype, out, lse, stream);
}

}  // namespace internal
}  // namespace kvtier
