// Estimation from the zone scoring pass's logits on the GPU (contract in estimation.h, the
// EstimationParams::logits case; the kernel that computes logits from mean keys is
// estimation.cu's). The centroid's logits are already known, so what is left is a weighted sum
// of mean values: one read of each zone centroid's D-channel mean value, which the kernel
// streams at the HBM rate with no block-wide barrier until the end.
//
// A thread block per item, group of up to kHeads query heads and run of the item's list (the
// runs as in estimation.cu: ChooseRuns). Each warp takes a contiguous share of the block's run
// and keeps its own online softmax, a batch of 32 centroids at a time (lane i: entry i / parts,
// part i % parts). A lane loads its centroid's id, count, spread and logits one batch ahead;
// the warp copies the batch's mean values into a stage of its own by cp.async while it folds
// the batch's max into the running max per head. The weighted sum of the 32 mean values is
// then one small matrix product on the tensor cores, C[D x 8] += V^T[D x 32] W[32 x 8], W's
// columns the four heads' weights rounded to the KV dtype and the remainders of that rounding
// (hi + lo keeps a weight to about 2^-16; the values are exact), fp32 accumulators. The warps'
// states meet once, at the end, in shared memory.
// On the H200 at 24 x 32K (192 items, 1054-page zones, 106 MB): 86 us (1.23 TB/s; 77 us at
// 6 x 120K). Without the look-ahead 106 us; with fp32 FMAs in place of the MMA (16 a mean
// value and lane) 101 us; estimation.cu's block-wide tiles 98 us. The kernel is bound by
// latency (a dependent chain of loads a batch, 16 warps an SM at 128 registers), not by the
// memory's rate: what would speed it up further is a deeper pipeline (two batches' copies in
// flight a warp) or fewer registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

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
#include "kernels/mma.cuh"

namespace kvtier::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kHeads = 4;     // query heads a block: each mean value is read once for all
constexpr int kMaxParts = 2;  // centroids a cluster (block_summary.h)
// A fixed-stride list is cut into runs of at least this many entries (a warp's batch of 16
// two-part entries for each warp).
constexpr int kMinEntriesPerBlock = kWarps * 32 / kMaxParts;

// Weight columns of the MMA's B operand: the four heads' weights rounded to T (hi), then what
// that rounding left (lo), so that hi + lo carries the fp32 weight to about 2^-16.
constexpr int kWeightColumns = 2 * kHeads;
// Centroids a row of the transposed weights is padded to: rows 80 bytes apart put the 8 rows
// that one B-fragment load reads in distinct banks.
constexpr int kWeightStride = 40;

// One warp's stage of its batch of 32 centroids: whether each adds anything, its row in the
// item's arrays (-1: none), and the weights transposed, weight[column][centroid] of T (the B
// operand); the mean values are in dynamic shared memory (ValueRows).
template <typename T>
struct WarpStage {
  int32_t adds[32];
  int32_t row[32];
  T weight[kWeightColumns][kWeightStride];
};

// A staged mean-value row: kDim elements and 16 bytes of padding, so that the 8 rows one
// ldmatrix reads fall in distinct banks.
template <int kDim>
constexpr int kRowElements = kDim + 8;

// Dynamic shared memory: every warp's 32 mean-value rows (reused at the end for the warps'
// numerators, [kWarps][kHeads][kDim] floats), then the exclusion list.
template <typename T, int kDim>
constexpr size_t ValueStageBytes() {
  constexpr size_t values = size_t{kWarps} * 32 * kRowElements<kDim> * sizeof(T);
  constexpr size_t numerators = size_t{kWarps} * kHeads * kDim * 4;
  return values > numerators ? values : numerators;
}

// The warp copies the stage's rows of mean values (row -1: zeros) into `dst` ([32] rows of
// kRowElements), by cp.async in 16-byte pieces when the item's array is 16-byte aligned
// (`vector`), else one element a lane at a time.
template <typename T, int kDim>
__device__ __forceinline__ void StageValues(const WarpStage<T>& ws, const T* values, bool vector,
                                            T* dst, int lane) {
  constexpr int kPerPiece = 16 / static_cast<int>(sizeof(T));
  constexpr int kPieces = kDim / kPerPiece;  // 16-byte pieces a row
  if (vector) {
    const uint32_t base = SharedAddress(dst);
#pragma unroll
    for (int k = lane; k < 32 * kPieces; k += 32) {
      const int j = k / kPieces, piece = k % kPieces;
      const int32_t row = ws.row[j];
      const uint32_t at = base + (j * kRowElements<kDim> + piece * kPerPiece) * sizeof(T);
      if (row >= 0) {
        CpAsync16(at, values + int64_t{row} * kDim + piece * kPerPiece, 16);
      } else {
        *reinterpret_cast<uint4*>(dst + j * kRowElements<kDim> + piece * kPerPiece) = uint4{};
      }
    }
  } else {
    for (int j = 0; j < 32; ++j) {
      const int32_t row = ws.row[j];
      for (int d = lane; d < kDim; d += 32) {
        dst[j * kRowElements<kDim> + d] = row >= 0 ? values[int64_t{row} * kDim + d] : T{};
      }
    }
  }
  CpAsyncCommit();
}

// The fp32 weight as T, rounded, and the rest.
template <typename T>
__device__ __forceinline__ void SplitWeight(float w, T& hi, T& lo) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    hi = __float2bfloat16_rn(w);
    lo = __float2bfloat16_rn(w - __bfloat162float(hi));
  } else {
    hi = __float2half_rn(w);
    lo = __float2half_rn(w - __half2float(hi));
  }
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads, 2)
    LogitEstimationKernel(EstimationParams p, RunOutput runs) {
  ChainedKernelStart();
  constexpr int kTiles = kDim / 16;  // m16 tiles of channels
  constexpr int kRow = kRowElements<kDim>;
  __shared__ WarpStage<T> stage[kWarps];
  __shared__ float warp_max[kWarps][kHeads], warp_denominator[kWarps][kHeads];
  __shared__ float warp_spread[kWarps][kHeads];  // sum of weight x key spread (value_shift)
  extern __shared__ __align__(16) char smem[];
  int32_t* exclude = reinterpret_cast<int32_t*>(smem + ValueStageBytes<T, kDim>());

  const int chunks = (p.group_size + kHeads - 1) / kHeads;
  const int run = static_cast<int>(blockIdx.x % runs.runs);
  const int item = static_cast<int>(blockIdx.x / runs.runs / chunks);
  const int first_head = static_cast<int>(blockIdx.x / runs.runs % chunks) * kHeads;
  const int heads = min(kHeads, p.group_size - first_head);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // MMA fragment roles: g = lane / 4 (a row of A and C, a column of B), t = lane % 4.
  const int g = lane / 4, t = lane % 4;
  T* my_values = reinterpret_cast<T*>(smem) + warp * 32 * kRow;

  int32_t begin, end;
  RunRange(p, runs, item, run, begin, end);
  const int32_t num_exclude =
      p.exclude_ids != nullptr ? min(max(p.exclude_count[item], 0), p.exclude_stride) : 0;
  for (int j = threadIdx.x; j < num_exclude; j += kThreads) {
    exclude[j] = p.exclude_ids[int64_t{item} * p.exclude_stride + j];
  }
  __syncthreads();

  float running_max[kHeads], denominator[kHeads], spread_sum[kHeads];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    running_max[h] = -INFINITY;
    denominator[h] = 0.0f;
    spread_sum[h] = 0.0f;
  }
  const bool shifts = p.value_shift != nullptr;
  // The numerators, C = V^T [w_hi | w_lo]: tile i's c[i][0..1] are channel 16 i + g, c[i][2..3]
  // channel 16 i + g + 8, at columns 2t and 2t + 1 (heads 2t % 4 and 2t % 4 + 1; t < 2: the
  // hi part, t >= 2 the lo part).
  float c[kTiles][4];
#pragma unroll
  for (int i = 0; i < kTiles; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.0f;
  const int head_a = (2 * t) % kHeads, head_b = head_a + 1;  // this lane's C columns' heads

  // This warp's share of the run.
  const int32_t share = (max(end - begin, 0) + kWarps - 1) / kWarps;
  const int32_t warp_begin = min(end, begin + warp * share);
  const int32_t warp_end = min(end, warp_begin + share);
  if (warp_end > warp_begin) {
    const int parts = min(max(p.centroid_parts, 1), kMaxParts);
    // Per head: the logit row (a missing head repeats the last one) and the spread weight
    // kSpreadWeight scale^2 / 2 |q|^2 (estimation.h).
    const float* logit_row[kHeads];
    float spread_weight[kHeads];
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      const int64_t head = int64_t{item} * p.group_size + first_head + min(h, heads - 1);
      logit_row[h] = p.logits + head * p.logit_stride;
      const T* q = static_cast<const T*>(p.q) + head * kDim;
      float square = 0.0f;
      for (int d = lane; d < kDim; d += 32) {
        const float x = ToFloat(q[d]);
        square = fmaf(x, x, square);
      }
      spread_weight[h] =
          WarpSum(square) * (0.5f * kSpreadWeight * p.softmax_scale * p.softmax_scale);
    }
    const T* values = static_cast<const T*>(p.value_mean[item]);
    const bool vector = reinterpret_cast<uintptr_t>(values) % 16 == 0;
    const int32_t* counts = p.count[item];
    const float* spreads = p.key_spread != nullptr ? p.key_spread[item] : nullptr;
    const int entries_per_batch = 32 / parts;
    WarpStage<T>& ws = stage[warp];
    const uint32_t values_address = SharedAddress(my_values);
    // A lane's centroid of a batch: its row (-1: none, or excluded), count, spread and
    // logits, loaded one batch ahead so that they travel while the batch before is summed.
    struct Centroid {
      int32_t row = -1;
      int32_t n = 0;
      float spread = 0.0f;
      float logit[kHeads] = {};
    };
    auto load = [&](int32_t e0) {
      Centroid x;
      const int32_t e = e0 + lane / parts;
      int32_t id = e < warp_end ? EntryCluster(p, e) : -1;
      if (id >= 0 && num_exclude > 0 && Contains(exclude, num_exclude, id)) id = -1;
      if (id < 0) return x;
      x.row = id * parts + lane % parts;
      x.n = counts[x.row];
      if (spreads != nullptr) x.spread = spreads[x.row];
#pragma unroll
      for (int h = 0; h < kHeads; ++h) x.logit[h] = logit_row[h][x.row];
      return x;
    };
    Centroid next = load(warp_begin);
    for (int32_t e0 = warp_begin; e0 < warp_end; e0 += entries_per_batch) {
      const Centroid x = next;
      ws.row[lane] = x.row;
      __syncwarp();
      StageValues<T, kDim>(ws, values, vector, my_values, lane);
      if (e0 + entries_per_batch < warp_end) next = load(e0 + entries_per_batch);
      const bool adds = x.row >= 0 && x.n > 0;
      float correction[kHeads];
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        // -inf: the centroid adds nothing (absent, excluded, or without tokens).
        const float logit = adds ? fmaf(spread_weight[h], x.spread, x.logit[h]) : -INFINITY;
        const float new_max = NanMax(running_max[h], WarpNanMax(logit));
        // First contributions: running_max is -inf and the state 0, e^{-inf} = 0 keeps it. A
        // batch without any leaves the state as it is.
        correction[h] = new_max == -INFINITY ? 1.0f : expf(running_max[h] - new_max);
        const float weight =
            logit == -INFINITY ? 0.0f : expf(logit - new_max) * static_cast<float>(x.n);
        denominator[h] = fmaf(denominator[h], correction[h], WarpSum(weight));
        if (shifts) {
          // Only contributing centroids: 0 x a spread that is not finite would not be 0.
          const float spread_term = logit == -INFINITY ? 0.0f : weight * x.spread;
          spread_sum[h] = fmaf(spread_sum[h], correction[h], WarpSum(spread_term));
        }
        running_max[h] = new_max;
        SplitWeight(weight, ws.weight[h][lane], ws.weight[kHeads + h][lane]);
      }
      ws.adds[lane] = adds;
      CpAsyncWait<0>();
      __syncwarp();  // every lane's copies and stage entries are in
      // Rows copied for a centroid that adds nothing (no tokens) are zeroed: its weight is 0,
      // and 0 x a NaN there would not be.
      for (int j = 0; j < 32; ++j) {
        if (ws.row[j] >= 0 && !ws.adds[j]) {  // warp-uniform
          for (int d = lane; d < kDim; d += 32) my_values[j * kRow + d] = T{};
        }
      }
      __syncwarp();
      // The state's rescale, then C += V^T W over the batch's two k16 steps.
#pragma unroll
      for (int i = 0; i < kTiles; ++i) {
        c[i][0] *= correction[head_a];
        c[i][1] *= correction[head_b];
        c[i][2] *= correction[head_a];
        c[i][3] *= correction[head_b];
      }
#pragma unroll
      for (int k0 = 0; k0 < 32; k0 += 16) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&ws.weight[g][k0 + 2 * t]);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&ws.weight[g][k0 + 2 * t + 8]);
        // ldmatrix rows: lane l gives matrix l / 8's row l % 8: centroid k0 + (l / 16) 8 +
        // l % 8, channels (l / 8 % 2) 8 on from the tile's first.
        const int centroid = k0 + (lane / 16) * 8 + lane % 8;
        const uint32_t row_address =
            values_address + (centroid * kRow + (lane / 8 % 2) * 8) * static_cast<int>(sizeof(T));
#pragma unroll
        for (int i = 0; i < kTiles; ++i) {
          uint32_t a[4];
          LdMatrixX4Trans(a, row_address + i * 16 * static_cast<int>(sizeof(T)));
          Mma<T>(c[i], a, b0, b1);
        }
      }
      __syncwarp();  // the stage is read before the next batch overwrites it
    }
  }

  // The warps' states, merged by log-sum-exp. A lane's hi and lo columns meet first (lanes t
  // and t ^ 2 hold the same heads).
  __syncthreads();  // every warp is done with its value stage: it now holds the numerators
  float* numerators = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < kTiles; ++i) {
#pragma unroll
    for (int r = 0; r < 4; ++r) c[i][r] += __shfl_xor_sync(0xFFFFFFFFu, c[i][r], 2);
    if (t < 2) {
      const int channel = 16 * i + g;
      numerators[(warp * kHeads + head_a) * kDim + channel] = c[i][0];
      numerators[(warp * kHeads + head_b) * kDim + channel] = c[i][1];
      numerators[(warp * kHeads + head_a) * kDim + channel + 8] = c[i][2];
      numerators[(warp * kHeads + head_b) * kDim + channel + 8] = c[i][3];
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      warp_max[warp][h] = running_max[h];
      warp_denominator[warp][h] = denominator[h];
      warp_spread[warp][h] = spread_sum[h];
    }
  }
  __syncthreads();
  const int64_t rows = int64_t{p.num_items} * p.group_size;
  for (int j = threadIdx.x; j < heads * kDim; j += kThreads) {
    const int h = j / kDim, d = j % kDim;
    float top = -INFINITY;
    for (int w = 0; w < kWarps; ++w) top = NanMax(top, warp_max[w][h]);
    const int64_t item_row = int64_t{item} * p.group_size + first_head + h;
    const int64_t at = runs.runs > 1 ? run * rows + item_row : item_row;
    float* out = (runs.runs > 1 ? runs.partial_out : p.out) + at * kDim;
    float* lse = (runs.runs > 1 ? runs.partial_lse : p.lse) + at;
    if (top == -INFINITY) {  // no contributing cluster
      out[d] = 0.0f;
      if (d == 0) *lse = -INFINITY;
      continue;
    }
    float total = 0.0f, value = 0.0f, spread = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      if (warp_max[w][h] == -INFINITY) continue;  // an empty warp (its state is 0)
      const float scale = expf(warp_max[w][h] - top);
      total = fmaf(warp_denominator[w][h], scale, total);
      value = fmaf(numerators[(w * kHeads + h) * kDim + d], scale, value);
      spread = fmaf(warp_spread[w][h], scale, spread);
    }
    // The value shift: every centroid's m + s shift, so the sum gains (sum w s) shift.
    if (shifts) value = fmaf(spread, p.value_shift[item_row * kDim + d], value);
    out[d] = value / total;
    if (d == 0) *lse = top + logf(total);
  }
}

template <typename T, int kDim>
size_t SharedBytes(int32_t exclude_stride) {
  return ValueStageBytes<T, kDim>() + static_cast<size_t>(exclude_stride) * 4;
}

template <typename T, int kDim>
absl::Status LaunchKernel(const EstimationParams& p, int64_t blocks, cudaStream_t stream) {
  auto* kernel = LogitEstimationKernel<T, kDim>;
  const size_t smem = SharedBytes<T, kDim>(p.exclude_ids != nullptr ? p.exclude_stride : 0);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(SharedBytes<T, kDim>(static_cast<int32_t>(kMaxExcludeBytes / 4)))));
  RunOutput runs;
  KVTIER_RETURN_IF_ERROR(ChooseRuns(p, kernel, kThreads, smem, blocks, kMinEntriesPerBlock, &runs));
  if (blocks * runs.runs > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("EstimationParams: ", p.num_items, " items exceed one grid"));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(
      LaunchChained(kernel, static_cast<int>(blocks * runs.runs), kThreads, smem, stream, p, runs));
  KVTIER_RETURN_IF_LAUNCH_FAILED("LogitEstimationKernel", stream);
  if (runs.runs == 1) return absl::OkStatus();
  return LaunchMergeStridedPartials(runs.partial_out, runs.partial_lse, runs.runs,
                                    static_cast<int>(int64_t{p.num_items} * p.group_size), kDim,
                                    DType::kFP32, p.out, p.lse, stream);
}

}  // namespace

absl::Status LaunchLogitEstimation(const EstimationParams& p, cudaStream_t stream) {
  const int64_t blocks = static_cast<int64_t>(p.num_items) * ((p.group_size + kHeads - 1) / kHeads);
  return DispatchInt<64, 128, 256>("head_dim", p.head_dim, [&](auto dim) {
    return DispatchKvDType(p.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      constexpr int kDim = decltype(dim)::value;
      return LaunchKernel<T, kDim>(p, blocks, stream);
    });
  });
}

}  // namespace kvtier::internal
