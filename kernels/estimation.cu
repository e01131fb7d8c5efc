// Estimation on the GPU (contract in estimation.h). A thread block per item, group of up to
// kHeadsPerBlock query heads and run of the item's list. The block stages its run's ids in
// shared memory with the excluded ones struck out (the item's exclusion list sits there too),
// then streams the run in tiles of kTileEntries clusters through kStages cp.async stages.
// Per tile, three phases with a barrier between:
//  1. logits: a thread takes one centroid, one head and half of the channels (q in shared
//     memory, a broadcast; padded key rows, no bank conflicts);
//  2. softmax: warp h folds the tile's logits of head h into its running max and denominator
//     and leaves the tile's weights and the state's rescale factor in shared memory;
//  3. numerators: a thread keeps two channels of every head over a share of the tile's
//     centroids (the shares summed at the end).
// A warp per cluster, folding it with a butterfly and 32 lanes' worth of the same exponentials,
// ran the zone at 25-30% of the HBM rate on the H200. A centroid's key and mean value are read
// once for four heads. Given the logits of the zone's scoring pass, estimation_logits.cu's
// kernel runs instead. With several runs an item (a batch of few items: 6 x 8 KV heads left two
// thirds of an H200's SMs idle at one block an item), each run writes a partial result to the
// workspace and the split-K merge (merge.cu) combines them.
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
#include "kernels/cp_async.cuh"
#include "kernels/decode_attention.h"
#include "kernels/dispatch.cuh"
#include "kernels/estimation.h"
#include "kernels/estimation_device.cuh"
#include "kernels/launch.cuh"

namespace kvtier {
namespace {

using internal::Contains;
using internal::kMaxExcludeBytes;
using internal::NanMax;
using internal::RunOutput;
using internal::ToFloat;
using internal::ToFloat2;
using internal::WarpNanMax;
using internal::WarpSum;

// A thread block: 8 warps. The item's list is taken in tiles of kTileEntries entries
// (kTileCentroids centroids), streamed through kStages shared-memory stages by cp.async.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kParts = 2;  // the most centroids a cluster (block_summary.h)
constexpr int kTileEntries = 16;
constexpr int kTileCentroids = kTileEntries * kParts;  // 32: a warp's lanes
constexpr int kStages = 3;
// Ids a block stages at a time (a run longer than this is taken in segments).
constexpr int kSegmentIds = 1024;
// Heads a thread block estimates together: it reads each centroid once for all of them.
constexpr int kHeadsPerBlock = 4;
constexpr int H = kHeadsPerBlock;
static_assert(kWarps == 2 * H, "a tile's dot products: a warp a head and half of the channels");

// One stage: a tile's mean keys (a padded row a centroid, so that 32 lanes reading 32 rows
// hit distinct banks), then mean values, counts and spreads. Centroid c is part c % 2 of
// entry c / 2.
template <typename T, int kDim>
struct Stage {
  static constexpr int kKeyRow = kDim * static_cast<int>(sizeof(T)) + 16;
  static constexpr int kValueOffset = kTileCentroids * kKeyRow;
  static constexpr int kCountOffset =
      kValueOffset + kTileCentroids * kDim * static_cast<int>(sizeof(T));
  static constexpr int kSpreadOffset = kCountOffset + kTileCentroids * 4;
  static constexpr int kBytes = kSpreadOffset + kTileCentroids * 4;
  static_assert(kBytes % 16 == 0 && kKeyRow % 16 == 0);
};

// Channel pairs of the numerators: a thread holds two channels of every head; groups of
// kDim / 2 threads take a share of a tile's centroids each, summed at the end.
template <int kDim>
struct Numerators {
  static constexpr int kThreadsPerGroup = kDim / 2;
  static constexpr int kGroups = kThreads / kThreadsPerGroup;
  static constexpr int kCentroidsPerGroup = kTileCentroids / kGroups;
  static_assert(kThreadsPerGroup >= 32 && kTileCentroids % kGroups == 0);
};

// Dynamic shared memory of a block: the stages (reused at the end for the groups'
// numerators), the staged ids, the exclusion list.
template <typename T, int kDim>
constexpr size_t StagesBytes() {
  constexpr size_t stages = size_t{kStages} * Stage<T, kDim>::kBytes;
  constexpr size_t numerators = size_t{Numerators<kDim>::kGroups} * H * kDim * 4;
  return stages > numerators ? stages : numerators;
}
template <typename T, int kDim>
size_t EstimationSharedBytes(int32_t exclude_stride) {
  return StagesBytes<T, kDim>() + size_t{kSegmentIds} * 4 + static_cast<size_t>(exclude_stride) * 4;
}

// The per-item arrays a block reads.
struct ItemArrays {
  const char* key_mean = nullptr;
  const char* value_mean = nullptr;
  const int32_t* count = nullptr;
  const float* key_spread = nullptr;  // null: spreads count 0
  int parts = 1;
  bool vector = false;  // key_mean and value_mean are 16-byte aligned: 16-byte copies
};

// Copies of `units` kUnit-byte pieces a centroid row of an array: piece k of the tile is
// centroid k / units, bytes (k % units) kUnit on; the block's threads take every kThreads-th.
// Rows of absent centroids (id < 0, or a part the clusters do not have) are not read.
template <int kUnit, int kRowBytes>
__device__ __forceinline__ void IssueRows(const char* base, int parts, const int32_t* ids,
                                          uint32_t dst, int dst_row_bytes) {
  constexpr int kUnits = kRowBytes / kUnit;
#pragma unroll
  for (int k = threadIdx.x; k < kTileCentroids * kUnits; k += kThreads) {
    const int c = k / kUnits, offset = k % kUnits * kUnit;  // constant divisors
    const int32_t id = ids[c / kParts];
    const int part = c % kParts;
    if (id < 0 || part >= parts) continue;
    const char* src = base + (static_cast<size_t>(id) * parts + part) * kRowBytes + offset;
    if constexpr (kUnit == 16) {
      internal::CpAsync16(dst + c * dst_row_bytes + offset, src, 16);
    } else {
      internal::CpAsync4(dst + c * dst_row_bytes + offset, src);
    }
  }
}

// The whole block issues the copies of the tile whose ids are `ids` (-1: none, its centroids
// count 0) into the stage at shared address `stage` (generic pointer `stage_pointer`).
template <typename T, int kDim>
__device__ __forceinline__ void IssueTile(const ItemArrays& a, const int32_t* ids, uint32_t stage,
                                          char* stage_pointer) {
  using S = Stage<T, kDim>;
  constexpr int kKeyBytes = kDim * sizeof(T);  // a centroid's
  constexpr int kValueBytes = kDim * sizeof(T);
  if (a.vector) {
    IssueRows<16, kKeyBytes>(a.key_mean, a.parts, ids, stage, S::kKeyRow);
    IssueRows<16, kValueBytes>(a.value_mean, a.parts, ids, stage + S::kValueOffset, kValueBytes);
  } else {
    IssueRows<4, kKeyBytes>(a.key_mean, a.parts, ids, stage, S::kKeyRow);
    IssueRows<4, kValueBytes>(a.value_mean, a.parts, ids, stage + S::kValueOffset, kValueBytes);
  }
  if (threadIdx.x < kTileCentroids) {
    const int c = threadIdx.x;
    const int32_t id = ids[c / kParts];
    const int part = c % kParts;
    int32_t* count = reinterpret_cast<int32_t*>(stage_pointer + S::kCountOffset);
    float* spread = reinterpret_cast<float*>(stage_pointer + S::kSpreadOffset);
    if (id < 0 || part >= a.parts) {
      count[c] = 0;
      spread[c] = 0.0f;
    } else {
      const size_t row = static_cast<size_t>(id) * a.parts + part;
      internal::CpAsync4(stage + S::kCountOffset + c * 4, a.count + row);
      if (a.key_spread != nullptr) {
        internal::CpAsync4(stage + S::kSpreadOffset + c * 4, a.key_spread + row);
      } else {
        spread[c] = 0.0f;
      }
    }
  }
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads, 2)
    EstimationKernel(EstimationParams p, RunOutput runs) {
  internal::ChainedKernelStart();
  using S = Stage<T, kDim>;
  using N = Numerators<kDim>;
  constexpr int kHalf = kDim / 2;  // channels of a phase-1 thread's dot product
  __shared__ __align__(16) float q_s[H][kDim];
  __shared__ float dot_s[2][H][kTileCentroids];                // the two halves' dot products
  __shared__ __align__(16) float weight_s[kTileCentroids][H];  // n e^{l - max}, 0: none
  __shared__ float correction_s[H];                            // this tile's rescale of the state
  __shared__ float max_s[H], denominator_s[H], spread_s[H];
  extern __shared__ __align__(16) char smem[];
  int32_t* ids = reinterpret_cast<int32_t*>(smem + StagesBytes<T, kDim>());
  int32_t* exclude = ids + kSegmentIds;  // the item's exclusion list, [exclude_stride]

  const int chunks = (p.group_size + H - 1) / H;
  const int run = static_cast<int>(blockIdx.x % runs.runs);
  const int item = static_cast<int>(blockIdx.x / runs.runs / chunks);
  const int first_head = static_cast<int>(blockIdx.x / runs.runs % chunks) * H;
  const int heads = min(H, p.group_size - first_head);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  for (int j = threadIdx.x; j < H * kDim; j += kThreads) {
    const int h = j / kDim, d = j % kDim;
    const int head = first_head + min(h, heads - 1);  // a missing head repeats the last one
    q_s[h][d] = ToFloat(
        static_cast<const T*>(p.q)[(static_cast<int64_t>(item) * p.group_size + head) * kDim + d]);
  }
  int32_t begin, end;
  internal::RunRange(p, runs, item, run, begin, end);
  const int32_t num_exclude =
      p.exclude_ids != nullptr ? min(max(p.exclude_count[item], 0), p.exclude_stride) : 0;
  for (int j = threadIdx.x; j < num_exclude; j += kThreads) {
    exclude[j] = p.exclude_ids[int64_t{item} * p.exclude_stride + j];
  }
  __syncthreads();

  // Phase-1 role: head warp % H, channels [half * kHalf, +kHalf), centroid `lane`. Warps
  // 0..H-1 (head = warp) also keep that head's softmax state, the same on every lane.
  const int my_head = warp % H, half = warp / H;
  float running_max = -INFINITY, denominator = 0.0f;
  float spread_sum = 0.0f;     // sum of weight x key spread (EstimationParams::value_shift)
  float spread_weight = 0.0f;  // kSpreadWeight scale^2 / 2 |q|^2 (estimation.h)
  if (warp < H) {
    for (int d = lane; d < kDim; d += 32)
      spread_weight = fmaf(q_s[warp][d], q_s[warp][d], spread_weight);
    spread_weight =
        WarpSum(spread_weight) * (0.5f * kSpreadWeight * p.softmax_scale * p.softmax_scale);
  }
  // Phase-2 role: channels 2 pair, 2 pair + 1 of every head, over the group's centroids.
  const int pair = threadIdx.x % N::kThreadsPerGroup, group = threadIdx.x / N::kThreadsPerGroup;
  float numerator[H][2];
#pragma unroll
  for (int h = 0; h < H; ++h) numerator[h][0] = numerator[h][1] = 0.0f;

  ItemArrays arrays;
  if (end > begin) {
    arrays.key_mean = static_cast<const char*>(p.key_mean[item]);
    arrays.value_mean = static_cast<const char*>(p.value_mean[item]);
    arrays.count = p.count[item];
    arrays.key_spread = p.key_spread != nullptr ? p.key_spread[item] : nullptr;
    arrays.parts = min(p.centroid_parts, kParts);
    arrays.vector = ((reinterpret_cast<uintptr_t>(arrays.key_mean) |
                      reinterpret_cast<uintptr_t>(arrays.value_mean)) &
                     15) == 0;
  }
  const uint32_t stages = internal::SharedAddress(smem);
  for (int32_t segment = begin; segment < end; segment += kSegmentIds) {
    const int32_t length = min(kSegmentIds, end - segment);
    const int32_t tiles = (length + kTileEntries - 1) / kTileEntries;
    __syncthreads();  // the previous segment's ids and stages are no longer read
    for (int32_t j = threadIdx.x; j < tiles * kTileEntries; j += kThreads) {
      const int32_t id = j < length ? internal::EntryCluster(p, segment + j) : -1;
      ids[j] = id >= 0 && !Contains(exclude, num_exclude, id) ? id : -1;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kStages - 1; ++t) {
      if (t < tiles) {
        IssueTile<T, kDim>(arrays, ids + t * kTileEntries, stages + t * S::kBytes,
                           smem + t * S::kBytes);
      }
      internal::CpAsyncCommit();
    }
    for (int32_t t = 0; t < tiles; ++t) {
      internal::CpAsyncWait<kStages - 2>();
      __syncthreads();  // tile t is in; every thread is done with tile t - 1's stage
      const int32_t ahead = t + kStages - 1;
      if (ahead < tiles) {
        const int s = ahead % kStages;
        IssueTile<T, kDim>(arrays, ids + ahead * kTileEntries, stages + s * S::kBytes,
                           smem + s * S::kBytes);
      }
      internal::CpAsyncCommit();
      const char* stage = smem + (t % kStages) * S::kBytes;
      const int32_t* count = reinterpret_cast<const int32_t*>(stage + S::kCountOffset);

      // Phase 1: half a dot product a thread, q from shared memory (a broadcast).
      {
        const T* key = reinterpret_cast<const T*>(stage + lane * S::kKeyRow) + half * kHalf;
        const float* q = &q_s[my_head][half * kHalf];
        float dot0 = 0.0f, dot1 = 0.0f;
#pragma unroll
        for (int v = 0; v < kHalf / 8; ++v) {
          const uint4 packed = *reinterpret_cast<const uint4*>(key + v * 8);
          const T* k8 = reinterpret_cast<const T*>(&packed);
          const float4 qa = *reinterpret_cast<const float4*>(q + v * 8);
          const float4 qb = *reinterpret_cast<const float4*>(q + v * 8 + 4);
          dot0 = fmaf(qa.x, ToFloat(k8[0]), dot0);
          dot1 = fmaf(qa.y, ToFloat(k8[1]), dot1);
          dot0 = fmaf(qa.z, ToFloat(k8[2]), dot0);
          dot1 = fmaf(qa.w, ToFloat(k8[3]), dot1);
          dot0 = fmaf(qb.x, ToFloat(k8[4]), dot0);
          dot1 = fmaf(qb.y, ToFloat(k8[5]), dot1);
          dot0 = fmaf(qb.z, ToFloat(k8[6]), dot0);
          dot1 = fmaf(qb.w, ToFloat(k8[7]), dot1);
        }
        dot_s[half][my_head][lane] = dot0 + dot1;
        __syncthreads();
      }
      // Phase 1b: warp h folds the tile's logits of head h into its softmax state.
      if (warp < H) {
        const int n = count[lane];
        const float spread = reinterpret_cast<const float*>(stage + S::kSpreadOffset)[lane];
        const float scaled_dot = (dot_s[0][warp][lane] + dot_s[1][warp][lane]) * p.softmax_scale;
        const float logit = n > 0 ? fmaf(spread_weight, spread, scaled_dot) : -INFINITY;
        const float new_max = NanMax(running_max, WarpNanMax(logit));
        // First contributions: running_max is -inf and the state 0, e^{-inf} = 0 keeps it. A
        // tile without any leaves the state as it is.
        const float correction = new_max == -INFINITY ? 1.0f : expf(running_max - new_max);
        // n e^{l - max}: the cluster's share of the denominator and its mean value's weight.
        const float weight =
            logit == -INFINITY ? 0.0f : expf(logit - new_max) * static_cast<float>(n);
        denominator = fmaf(denominator, correction, WarpSum(weight));
        if (p.value_shift != nullptr) {
          // Only contributing centroids: 0 x a spread that is not finite would not be 0.
          const float spread_term = logit == -INFINITY ? 0.0f : weight * spread;
          spread_sum = fmaf(spread_sum, correction, WarpSum(spread_term));
        }
        running_max = new_max;
        weight_s[lane][warp] = weight;
        if (lane == 0) correction_s[warp] = correction;
      }
      __syncthreads();
      // Phase 2: the numerators += n e^{l - max} mean value.
      {
        float correction[H];
#pragma unroll
        for (int h = 0; h < H; ++h) correction[h] = correction_s[h];
#pragma unroll
        for (int h = 0; h < H; ++h) {
          numerator[h][0] *= correction[h];
          numerator[h][1] *= correction[h];
        }
        const T* values = reinterpret_cast<const T*>(stage + S::kValueOffset);
#pragma unroll
        for (int j = 0; j < N::kCentroidsPerGroup; ++j) {
          const int c = group * N::kCentroidsPerGroup + j;
          if (count[c] <= 0) continue;  // warp-uniform: a group spans whole warps
          const float4 w = *reinterpret_cast<const float4*>(&weight_s[c][0]);
          const float2 v = ToFloat2(values + c * kDim + 2 * pair);
          const float weights[H] = {w.x, w.y, w.z, w.w};
#pragma unroll
          for (int h = 0; h < H; ++h) {
            numerator[h][0] = fmaf(weights[h], v.x, numerator[h][0]);
            numerator[h][1] = fmaf(weights[h], v.y, numerator[h][1]);
          }
        }
      }
    }
    internal::CpAsyncWait<0>();  // only empty groups remain; none lands after the loop
  }
  __syncthreads();  // the stages are drained: they now hold the groups' numerators
  float* numerators = reinterpret_cast<float*>(smem);  // [kGroups][H][kDim]
#pragma unroll
  for (int h = 0; h < H; ++h) {
    float* row = numerators + (group * H + h) * kDim + 2 * pair;
    row[0] = numerator[h][0];
    row[1] = numerator[h][1];
  }
  if (warp < H && lane == 0) {
    max_s[warp] = running_max;
    denominator_s[warp] = denominator;
    spread_s[warp] = spread_sum;
  }
  __syncthreads();

  const int64_t rows = static_cast<int64_t>(p.num_items) * p.group_size;
  for (int j = threadIdx.x; j < heads * kDim; j += kThreads) {
    const int h = j / kDim, d = j % kDim;
    const int64_t item_row = static_cast<int64_t>(item) * p.group_size + first_head + h;
    const int64_t row = runs.runs > 1 ? run * rows + item_row : item_row;
    float* out = (runs.runs > 1 ? runs.partial_out : p.out) + row * kDim;
    float* lse = (runs.runs > 1 ? runs.partial_lse : p.lse) + row;
    if (max_s[h] == -INFINITY) {  // no contributing cluster
      out[d] = 0.0f;
      if (d == 0) *lse = -INFINITY;
      continue;
    }
    float value = 0.0f;
    for (int g = 0; g < N::kGroups; ++g) value += numerators[(g * H + h) * kDim + d];
    // The value shift: every centroid's m + s shift, so the sum gains (sum w s) shift.
    if (p.value_shift != nullptr)
      value = fmaf(spread_s[h], p.value_shift[item_row * kDim + d], value);
    out[d] = value / denominator_s[h];
    if (d == 0) *lse = max_s[h] + logf(denominator_s[h]);
  }
}

// A fixed-stride list is cut into runs of at least this many entries.
constexpr int kMinEntriesPerBlock = 4 * kTileEntries;

// One launch (and the merge of its runs).
template <typename T, int kDim>
absl::Status LaunchKernel(const EstimationParams& params, int64_t blocks, cudaStream_t stream) {
  // Beyond the default 48 KiB of shared memory a block: the rings take up to about 76 KiB.
  const size_t smem =
      EstimationSharedBytes<T, kDim>(params.exclude_ids != nullptr ? params.exclude_stride : 0);
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(EstimationKernel<T, kDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(EstimationSharedBytes<T, kDim>(kMaxExcludeBytes / 4))));
  RunOutput runs;
  KVTIER_RETURN_IF_ERROR(internal::ChooseRuns(params, EstimationKernel<T, kDim>, kThreads, smem,
                                              blocks, kMinEntriesPerBlock, &runs));
  if (blocks * runs.runs > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EstimationParams: ", params.num_items, " items exceed one grid"));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(EstimationKernel<T, kDim>,
                                                      static_cast<int>(blocks * runs.runs),
                                                      kThreads, smem, stream, params, runs));
  KVTIER_RETURN_IF_LAUNCH_FAILED("EstimationKernel", stream);
  if (runs.runs == 1) return absl::OkStatus();
  return internal::LaunchMergeStridedPartials(
      runs.partial_out, runs.partial_lse, runs.runs,
      static_cast<int>(int64_t{params.num_items} * params.group_size), kDim, DType::kFP32,
      params.out, params.lse, stream);
}

}  // namespace

absl::Status LaunchEstimation(const EstimationParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateEstimationShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  const size_t exclude_bytes =
      params.exclude_ids != nullptr ? sizeof(int32_t) * params.exclude_stride : 0;
  if (exclude_bytes > kMaxExcludeBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("EstimationParams: exclude_stride is ", params.exclude_stride,
                     "; the kernel keeps an item's exclusion list in shared memory, at most ",
                     kMaxExcludeBytes / 4, " ids"));
  }
  if (params.logits != nullptr) {
    KVTIER_RETURN_IF_ERROR(internal::LaunchLogitEstimation(params, stream));
  } else {
    const int64_t blocks = static_cast<int64_t>(params.num_items) *
                           ((params.group_size + kHeadsPerBlock - 1) / kHeadsPerBlock);
    const absl::Status launched =
        DispatchInt<64, 128, 256>("head_dim", params.head_dim, [&](auto dim) {
          return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
            using T = typename decltype(element)::type;
            constexpr int kDim = decltype(dim)::value;
            return LaunchKernel<T, kDim>(params, blocks, stream);
          });
        });
    KVTIER_RETURN_IF_ERROR(launched);
  }
  if (params.superset_out == nullptr) return absl::OkStatus();
  return internal::LaunchRestOfSuperset(params, stream);
}

namespace internal {
namespace {

// One warp a row: out = (superset out - f out) / (1 - f), f = e^{lse - superset lse}
// (estimation.h; the twin's EstimateRow in double).
__global__ void RestOfSupersetKernel(const float* superset_out, const float* superset_lse,
                                     float* out, float* lse, int64_t rows, int dim) {
  ChainedKernelStart();
  const int64_t row = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const float whole = superset_lse[row], part = lse[row];
  const float* from = superset_out + row * dim;
  float* to = out + row * dim;
  if (whole != whole || part != part) {
    for (int d = lane; d < dim; d += 32) to[d] = NAN;
    __syncwarp();
    if (lane == 0) lse[row] = NAN;
    return;
  }
  const float f = part == -INFINITY ? 0.0f : expf(part - whole);
  const float rest = 1.0f - f;
  const bool empty = whole == -INFINITY || !(rest > kRestFloor);
  for (int d = lane; d < dim; d += 32) to[d] = empty ? 0.0f : (from[d] - f * to[d]) / rest;
  __syncwarp();  // every lane has read lse[row] before lane 0 rewrites it
  if (lane == 0) lse[row] = empty ? -INFINITY : whole + logf(rest);
}

}  // namespace

absl::Status LaunchRestOfSuperset(const EstimationParams& p, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t rows = int64_t{p.num_items} * p.group_size;
  const int64_t blocks = (rows * 32 + kThreads - 1) / kThreads;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EstimationParams: ", p.num_items, " items exceed one grid"));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(LaunchChained(RestOfSupersetKernel, static_cast<int>(blocks),
                                            kThreads, 0, stream, p.superset_out, p.superset_lse,
                                            p.out, p.lse, rows, p.head_dim));
  KVTIER_RETURN_IF_LAUNCH_FAILED("RestOfSupersetKernel", stream);
  return absl::OkStatus();
}

}  // namespace internal

}  // namespace kvtier
