// Block scoring on the GPU (contract in block_select.h; the selection in block_select.cu).
//
// Scoring kernel: grid over (item, chunk), each item's candidates cut into `chunks` equal runs;
// the item's query sits in shared memory as floats. The chunk count fills the GPU's thread
// block slots in one wave when the batch has fewer items than slots (whole waves matter: with
// fixed 512-candidate chunks, 48 items x 7.6K candidates made 1.45 waves, the second less
// than half full), and never cuts a run below kMinChunkBlocks. A group of L = D / 8 lanes scores
// one block: each lane loads 16 bytes of every summary row it needs (coalesced across the group),
// chains fused multiply-adds over its 8 channels and the xor butterfly sums the lanes. Each lane
// keeps kUnroll blocks' loads in flight. Two blocks a lane keep the kernel at 60 registers, so four
// thread blocks (32 warps) share an SM and one warp's arithmetic hides another's loads; with
// four blocks a lane (93 registers, two thread blocks an SM) it read the summaries at 71% of
// the HBM rate on the H100 (94 us for 201 MB). Scores (kPageBounds) or logits (kCentroid, one row
// per head) go to the workspace (LayoutWorkspace) or BlockSelectParams::logits, by candidate.
// kCentroid sums four heads' lane partials with one reduce-scatter (HeadQuadSum, the butterfly's
// bits): four butterflies a row made the centroid scoring 1.9x page bounds' time over the same
// bytes on the H200 (143 against 77 us, 24 x 32K), 128 us with it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/block_select.h"
#include "kernels/block_select_device.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/warp_math.cuh"

namespace kvtier {
namespace {

using internal::ToFloat;

using internal::ItemRange;
using internal::kMassSegment;
using internal::WorkspaceLayout;

constexpr int kScoreThreads = 256;
constexpr int kScoreBlocksPerSm = 4;  // 64 registers a thread: 32 warps an SM hide the loads
constexpr int kMinChunkBlocks = 64;   // kPageBounds: candidates of the shortest chunk

struct ScoreArgs {
  const void* q;
  int group_size;
  float scale;
  int max_blocks;
  int parts;  // kCentroid: centroids a block; the scored rows are block * parts + part
  // Per item: the item's candidates in `chunks` runs of equal length (kCentroid: whole
  // segments of kMassSegment candidates but for the last).
  int chunks;
  const int32_t* block_begin;
  const int32_t* block_end;
  const void* const* summaries;  // bounds or key_mean, per item
  const int32_t* const* count;   // kCentroid: token counts, per item
  WorkspaceLayout w;             // kPageBounds: scores; kCentroid: logits and segment masses
};

__device__ __forceinline__ void Unpack(const uint4& raw, const __nv_bfloat16*, float* out) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void Unpack(const uint4& raw, const __half*, float* out) {
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// The xor butterfly over a group of kLanes lanes (block_select.cc's Butterfly).
template <int kLanes>
__device__ __forceinline__ float GroupSum(float value) {
#pragma unroll
  for (int offset = kLanes / 2; offset >= 1; offset /= 2) {
    value = internal::Add(value, __shfl_xor_sync(0xFFFFFFFFu, value, offset));
  }
  return value;
}

// Four sums over a group of kLanes lanes (kLanes >= 4) at once, by reduce-scatter: the first
// step trades two of the four values with the partner lane, the second one of the two, then
// each lane finishes one sum with the plain butterfly; 5 shuffles for kLanes = 16 where four
// butterflies take 16. Every add pairs the same lanes' values as GroupSum's butterfly (xor
// offsets kLanes/2, kLanes/4, ... 1; a + b == b + a exactly), so each sum has GroupSum's bits.
// `head` gets which of the four this lane holds: 2 * (lane & kLanes/2 set) + (lane & kLanes/4
// set); lane % (kLanes/4) == 0 is one lane a sum.
template <int kLanes>
__device__ __forceinline__ float HeadQuadSum(const float (&value)[4], int lane, int& head) {
  constexpr int kHalf = kLanes / 2, kQuarter = kLanes / 4;
  const bool upper = (lane & kHalf) != 0;
  const float keep0 = upper ? value[2] : value[0], keep1 = upper ? value[3] : value[1];
  const float send0 = upper ? value[0] : value[2], send1 = upper ? value[1] : value[3];
  const float pair0 = internal::Add(keep0, __shfl_xor_sync(0xFFFFFFFFu, send0, kHalf));
  const float pair1 = internal::Add(keep1, __shfl_xor_sync(0xFFFFFFFFu, send1, kHalf));
  const bool odd = (lane & kQuarter) != 0;
  float sum = internal::Add(odd ? pair1 : pair0,
                            __shfl_xor_sync(0xFFFFFFFFu, odd ? pair0 : pair1, kQuarter));
#pragma unroll
  for (int offset = kQuarter / 2; offset >= 1; offset /= 2) {
    sum = internal::Add(sum, __shfl_xor_sync(0xFFFFFFFFu, sum, offset));
  }
  head = 2 * (upper ? 1 : 0) + (odd ? 1 : 0);
  return sum;
}

// This lane's kChannelsPerLane query values of head h (shared memory, [G, D] floats).
__device__ __forceinline__ void LoadQuery(const float* q_shared, int h, int dim, int lane,
                                          float* qv) {
  const float4* qp =
      reinterpret_cast<const float4*>(q_shared + h * dim + lane * internal::kChannelsPerLane);
  *reinterpret_cast<float4*>(qv) = qp[0];
  *reinterpret_cast<float4*>(qv + 4) = qp[1];
}

// kCentroid, after the chunk's logits: the max and the weight sum (block_select.h's
// denominator) of every segment of the chunk, candidates [chunk_start, chunk_end) of the item,
// for every head: a warp a segment and four heads, lane l over candidates l, l + 32, ... of
// the segment, the lane sums combined by the xor butterfly. A lane loads all its counts and
// logits at once (one trip to L2 a task; a loop of dependent loads a head made this phase a
// quarter of the kernel). `logits`: the item's head-0 row from its first candidate (head h at
// h * head_stride); `counts` from the first candidate too. The arithmetic is the twin's
// (internal::CentroidMaxLogit, CentroidWeight), spelled out over registers.
constexpr int kSegmentLoads = internal::kMassSegment / 32;  // candidates a lane of a segment
constexpr int kMaxParts = 2;
constexpr int kSegmentHeads = 4;

__device__ __forceinline__ void SegmentMasses(const ScoreArgs& a, int item, const float* logits,
                                              size_t head_stride, const int32_t* counts,
                                              int chunk_start, int chunk_end) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int G = a.group_size, parts = a.parts;
  const int head_batches = (G + kSegmentHeads - 1) / kSegmentHeads;
  const int first_segment = chunk_start / kMassSegment;
  const int segments = (chunk_end - chunk_start + kMassSegment - 1) / kMassSegment;
  for (int task = warp; task < segments * head_batches; task += kScoreThreads / 32) {
    const int s = first_segment + task / head_batches;
    const int h0 = task % head_batches * kSegmentHeads;
    const int segment_begin = s * kMassSegment;
    const int end = min(chunk_end, segment_begin + kMassSegment);
    int32_t c[kSegmentLoads][kMaxParts];
    float l[kSegmentHeads][kSegmentLoads][kMaxParts];
#pragma unroll
    for (int i = 0; i < kSegmentLoads; ++i) {
      const int r = segment_begin + lane + 32 * i;
#pragma unroll
      for (int part = 0; part < kMaxParts; ++part) {
        const bool held = r < end && part < parts;
        c[i][part] = held ? counts[r * parts + part] : 0;
#pragma unroll
        for (int j = 0; j < kSegmentHeads; ++j) {
          l[j][i][part] =
              held && h0 + j < G ? logits[(h0 + j) * head_stride + r * parts + part] : 0.0f;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kSegmentHeads; ++j) {
      if (h0 + j >= G) break;  // warp-uniform
      float m = -INFINITY;
#pragma unroll
      for (int i = 0; i < kSegmentLoads; ++i) {
#pragma unroll
        for (int part = 0; part < kMaxParts; ++part) {
          if (c[i][part] > 0) m = internal::Fmax(m, l[j][i][part]);
        }
      }
#pragma unroll
      for (int offset = 16; offset >= 1; offset /= 2) {
        m = internal::Fmax(m, __shfl_xor_sync(0xFFFFFFFFu, m, offset));
      }
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kSegmentLoads; ++i) {
        if (segment_begin + lane + 32 * i >= end) continue;
        float w = 0.0f;
#pragma unroll
        for (int part = 0; part < kMaxParts; ++part) {
          if (part >= parts) continue;
          const float wp =
              c[i][part] > 0
                  ? internal::Mul(static_cast<float>(c[i][part]),
                                  internal::CanonicalExp(internal::Add(l[j][i][part], -m)))
                  : 0.0f;
          w = part == 0 ? wp : internal::Add(w, wp);
        }
        sum = internal::Add(sum, w);
      }
      sum = GroupSum<32>(sum);
      if (lane == 0) {
        const size_t at = (static_cast<size_t>(item) * G + h0 + j) * a.w.segments + s;
        a.w.segment_max[at] = m;
        a.w.segment_sum[at] = sum;
      }
    }
  }
}

template <typename T, int kDim, BlockScoreKind kKind>
__global__ void __launch_bounds__(kScoreThreads, kScoreBlocksPerSm) ScoreKernel(ScoreArgs a) {
  internal::ChainedKernelStart();
  constexpr int kLanes = kDim / internal::kChannelsPerLane;
  constexpr int kGroups = kScoreThreads / kLanes;
  constexpr int kRows = kKind == BlockScoreKind::kPageBounds ? 2 : 1;
  // Summary rows a lane has in flight: 4 x 16 bytes for either kind (a centroid is one row,
  // a block's bounds two).
  constexpr int kUnroll = 4 / kRows;
  extern __shared__ float q_shared[];  // [G, D]

  const int item = blockIdx.x / a.chunks;
  const int chunk = blockIdx.x - item * a.chunks;
  int first, n;  // the item's candidates
  ItemRange(a.block_begin, a.block_end, item, a.max_blocks, first, n);
  int chunk_length = (n + a.chunks - 1) / a.chunks;
  if constexpr (kKind == BlockScoreKind::kCentroid) {
    chunk_length = (chunk_length + kMassSegment - 1) / kMassSegment * kMassSegment;
  }
  if (chunk * chunk_length >= n) return;
  // The chunk's summary rows (kCentroid: centroid rows, parts a candidate).
  const int begin = first * a.parts;
  const int chunk_start = chunk * chunk_length * a.parts;
  const int chunk_end = min(n, (chunk + 1) * chunk_length) * a.parts;

  const int G = a.group_size;
  const T* q = static_cast<const T*>(a.q) + static_cast<size_t>(item) * G * kDim;
  for (int i = threadIdx.x; i < G * kDim; i += kScoreThreads) q_shared[i] = ToFloat(q[i]);
  __syncthreads();

  const int lane = threadIdx.x % kLanes;
  const int group = threadIdx.x / kLanes;
  const T* summaries = static_cast<const T*>(a.summaries[item]);
  for (int tile = chunk_start; tile < chunk_end; tile += kGroups * kUnroll) {
    float x[kUnroll][kRows][internal::kChannelsPerLane];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int r = tile + u * kGroups + group;
      if (r < chunk_end) {
        const T* row = summaries + static_cast<size_t>(begin + r) * kRows * kDim +
                       lane * internal::kChannelsPerLane;
#pragma unroll
        for (int s = 0; s < kRows; ++s) {
          Unpack(__ldg(reinterpret_cast<const uint4*>(row + s * kDim)), row, x[u][s]);
        }
      } else {
#pragma unroll
        for (int s = 0; s < kRows; ++s) {
#pragma unroll
          for (int j = 0; j < internal::kChannelsPerLane; ++j) x[u][s][j] = 0.0f;
        }
      }
    }
    if constexpr (kKind == BlockScoreKind::kPageBounds) {
      float acc[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) acc[u] = 0.0f;
      for (int h = 0; h < G; ++h) {
        float qv[internal::kChannelsPerLane];
        LoadQuery(q_shared, h, kDim, lane, qv);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
          for (int j = 0; j < internal::kChannelsPerLane; ++j) {
            acc[u] = internal::Fma(qv[j], qv[j] >= 0.0f ? x[u][0][j] : x[u][1][j], acc[u]);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float score = GroupSum<kLanes>(acc[u]);
        const int r = tile + u * kGroups + group;
        if (lane == 0 && r < chunk_end) a.w.scores[item * a.w.score_stride + r] = score;
      }
    } else {
      // Row h of the item's logits, indexed by centroid (block * parts + part).
      const size_t head_stride = static_cast<size_t>(a.max_blocks) * a.parts;
      const size_t item_floats = static_cast<size_t>(item) * G * head_stride + begin;
      int h = 0;
      // Four heads at a time: their sums share one reduce-scatter (HeadQuadSum).
      for (; h + 4 <= G && kLanes >= 4; h += 4) {
        float acc[kUnroll][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float qv[internal::kChannelsPerLane];
          LoadQuery(q_shared, h + i, kDim, lane, qv);
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            acc[u][i] = 0.0f;
#pragma unroll
            for (int j = 0; j < internal::kChannelsPerLane; ++j) {
              acc[u][i] = internal::Fma(qv[j], x[u][0][j], acc[u][i]);
            }
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          int head;
          const float logit = internal::Mul(HeadQuadSum<kLanes>(acc[u], lane, head), a.scale);
          const int r = tile + u * kGroups + group;
          if (lane % (kLanes / 4) == 0 && r < chunk_end) {
            a.w.logits[item_floats + static_cast<size_t>(h + head) * head_stride + r] = logit;
          }
        }
      }
      for (; h < G; ++h) {
        float qv[internal::kChannelsPerLane];
        LoadQuery(q_shared, h, kDim, lane, qv);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          float acc = 0.0f;
#pragma unroll
          for (int j = 0; j < internal::kChannelsPerLane; ++j) {
            acc = internal::Fma(qv[j], x[u][0][j], acc);
          }
          const float logit = internal::Mul(GroupSum<kLanes>(acc), a.scale);
          const int r = tile + u * kGroups + group;
          if (lane == 0 && r < chunk_end) {
            a.w.logits[item_floats + static_cast<size_t>(h) * head_stride + r] = logit;
          }
        }
      }
    }
  }
  if constexpr (kKind == BlockScoreKind::kCentroid) {
    __syncthreads();  // the chunk's logits are written (global memory, visible to the block)
    const size_t head_stride = static_cast<size_t>(a.max_blocks) * a.parts;
    SegmentMasses(a, item, a.w.logits + static_cast<size_t>(item) * G * head_stride + begin,
                  head_stride, a.count[item] + begin, chunk_start / a.parts, chunk_end / a.parts);
  }
}

template <typename T, int kDim, BlockScoreKind kKind>
absl::Status LaunchScore(const BlockSelectParams& p, cudaStream_t stream) {
  ScoreArgs a;
  a.q = p.q;
  a.group_size = p.group_size;
  a.scale = p.softmax_scale;
  a.max_blocks = p.max_blocks;
  a.parts = kKind == BlockScoreKind::kCentroid ? p.centroid_parts : 1;
  // Chunks per item: as many as fill the GPU's block slots once, at most one per
  // kMinChunkBlocks candidates; one when the items alone fill the slots.
  int sm_count = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(internal::CurrentSmCount(&sm_count));
  const int64_t slots = int64_t{sm_count} * kScoreBlocksPerSm;
  const int64_t longest = kKind == BlockScoreKind::kCentroid
                              ? internal::MassSegments(p.max_blocks)
                              : (int64_t{p.max_blocks} + kMinChunkBlocks - 1) / kMinChunkBlocks;
  a.chunks = static_cast<int>(std::clamp<int64_t>(slots / std::max<int64_t>(p.num_items, 1), 1,
                                                  std::max<int64_t>(longest, 1)));
  a.block_begin = p.block_begin;
  a.block_end = p.block_end;
  a.summaries = kKind == BlockScoreKind::kPageBounds ? p.bounds : p.key_mean;
  a.count = p.count;
  a.w = internal::LayoutWorkspace(p);
  const int64_t blocks = static_cast<int64_t>(a.chunks) * p.num_items;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("BlockSelectParams: num_items ", p.num_items,
                                                   " x ", a.chunks, " chunks exceed one grid"));
  }
  const size_t smem = sizeof(float) * p.group_size * kDim;
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(
      ScoreKernel<T, kDim, kKind>, static_cast<int>(blocks), kScoreThreads, smem, stream, a));
  KVTIER_RETURN_IF_LAUNCH_FAILED("ScoreKernel", stream);
  return absl::OkStatus();
}

}  // namespace

absl::Status internal::LaunchBlockScores(const BlockSelectParams& params, cudaStream_t stream) {
  return DispatchInt<64, 128, 256>("head_dim", params.head_dim, [&](auto dim) {
    return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      constexpr int kDim = decltype(dim)::value;
      if (params.kind == BlockScoreKind::kPageBounds) {
        return LaunchScore<T, kDim, BlockScoreKind::kPageBounds>(params, stream);
      }
      return LaunchScore<T, kDim, BlockScoreKind::kCentroid>(params, stream);
    });
  });
}

}  // namespace kvtier
