// What the segment-clustering kernel files share (segment_cluster.cu: unit keys, seeds, the
// tensor-core similarities, update, repair and the launcher; segment_cluster_order.cu: the
// counting sort's offsets and scatter, the chain and the output order): the constants, the
// kernels' arguments and small device helpers, and the kernels of the second file. Internal
// to kernels/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cp_async.cuh"
#include "kernels/mma.cuh"
#include "kernels/segment_cluster.h"
#include "kernels/warp_math.cuh"

namespace kvtier::internal::segment_cluster {

using internal::CpAsync16;
using internal::CpAsyncCommit;
using internal::CpAsyncWait;
using internal::SharedAddress;

using internal::ClusterCount;
using internal::SegmentClusterLayout;

constexpr int kTileRows = 128;         // rows of X per similarity block; tokens per tile
constexpr int kStepCols = 64;          // centroids per pipeline step
constexpr int kGemmThreads = 256;      // 8 warps: 4 along rows x 2 along columns, 32 x 32 each
constexpr int kChunkTokens = 64;       // tokens per block of the unit-key kernels
constexpr int kRowThreads = 256;       // unit keys, init, update: a warp per row
constexpr int kSegmentThreads = 1024;  // offsets, repair: a thread per cluster
constexpr int kChainThreads = 1024;    // chain: a thread per cluster, then one warp walks
constexpr int kCandidates = 8;         // chain: listed most similar clusters per cluster
static_assert(kSegmentThreads >= kMaxSegmentClusters);
static_assert(kChainThreads == kMaxSegmentClusters, "the chain's visited bits: a word a warp");
constexpr uint64_t kNoToken = ~uint64_t{0};

enum class GemmMode { kAssign, kNearest, kStore };

// What every kernel reads: the workspace layout and the parameters, by value.
struct Args {
  unsigned char* workspace;
  SegmentClusterLayout layout;
  int max_tokens;
  int tokens_per_cluster;
  const void* const* keys;
  int64_t key_stride;
  const int32_t* num_tokens;
  int32_t* const* order;
  int32_t* const* cluster_of;
  int32_t* num_clusters;
};

template <typename U>
__device__ __forceinline__ U* Array(const Args& a, int segment, size_t offset) {
  return reinterpret_cast<U*>(a.workspace + segment * a.layout.segment_bytes + offset);
}
// Segment tokens, clamped into [0, max_tokens].
__device__ __forceinline__ int Tokens(const Args& a, int segment) {
  return min(max(a.num_tokens[segment], 0), a.max_tokens);
}

// Whether candidate (v, i) beats (best, arg): larger similarity, then lower index; i < 0 is
// no candidate.
__device__ __forceinline__ bool Beats(float v, int i, float best, int arg) {
  return i >= 0 && (arg < 0 || v > best || (v == best && i < arg));
}

// Ascending key of a similarity (-0 as +0), above it the token: atomicMin finds the least
// similar token, ties to the lowest token.
__device__ __forceinline__ uint64_t FarthestKey(float similarity, int token) {
  if (similarity == 0.0f) similarity = 0.0f;
  const uint32_t bits = __float_as_uint(similarity);
  const uint32_t key = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(key) << 32) | static_cast<uint32_t>(token);
}

// Copies a D-element fp16 row, a warp at a time (D / 2 words, a word a lane at a time).
template <int kDim>
__device__ __forceinline__ void CopyRow(__half* dst, const __half* src, int lane) {
#pragma unroll
  for (int w = lane; w < kDim / 2; w += 32) {
    reinterpret_cast<uint32_t*>(dst)[w] = reinterpret_cast<const uint32_t*>(src)[w];
  }
}

using internal::LdMatrixX4;
// D += A B, one m16n8k16 tile of fp16 inputs, fp32 accumulators.
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  internal::Mma<__half>(d, a, b0, b1);
}

// segment_cluster_order.cu's kernels (the launcher's order in segment_cluster.cu).
__global__ void __launch_bounds__(kSegmentThreads) OffsetsKernel(Args a);
__global__ void __launch_bounds__(kTileRows) ScatterKernel(Args a);
__global__ void __launch_bounds__(kChainThreads) ChainKernel(Args a);
__global__ void __launch_bounds__(kTileRows) OutputKernel(Args a);

}  // namespace kvtier::internal::segment_cluster
