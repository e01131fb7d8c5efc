// Estimation on the GPU (contract in estimation.h). A thread block per item, group of up to
// kHeadsPerBlock query heads and run of the item's list; the item's exclusion list sits in
// shared memory; each warp reads the run's clusters warp, warp + W, ... once (two entries an
// iteration, both entries' parts' loads in flight together: one entry at a time read the zone at
// 27% of the HBM rate on the H200) and folds each into an online softmax per head (running max,
// denominator and numerator, the numerator's D values spread over the lanes), then the warps'
// states merge by log-sum-exp. A centroid's key and value sum are read once for four heads rather than once
// per head. With several runs an item (a batch of few items: 6 x 8 KV heads left two thirds of
// an H200's SMs idle at one block an item), each run writes a partial result to the workspace
// and the split-K merge (merge.cu) combines them.
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
#include "kernels/decode_attention.h"
#include "kernels/dispatch.cuh"
#include "kernels/estimation.h"
#include "kernels/launch.cuh"

namespace kvtier {
namespace {

// Warps a thread block: enough resident warps that the per-cluster chain of loads, butterfly
// and exponentials of one warp hides behind the others' (a zone of a thousand clusters over 192
// items left 6 warps an SM at 4 warps a block). D = 256 halves them to keep the numerators'
// shared memory at 32 KiB.
template <int kDim>
constexpr int EstimationWarps() {
  return kDim == 256 ? 8 : 16;
}

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }

// max that keeps NaN: once either side is NaN the result is NaN.
__device__ __forceinline__ float NanMax(float a, float b) { return (b > a || b != b) ? b : a; }

// Binary search of an ascending list in shared memory (every lane searches the same id).
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

// Whether `id` is in the ascending list (shared memory); every lane of the warp calls it with
// the same id and gets the same answer. Short lists (a retrieval budget) are searched by all
// lanes at once, a load or two a lane and a vote; longer ones by binary search.
constexpr int32_t kLaneSearchMax = 256;
__device__ __forceinline__ bool Excluded(const int32_t* list, int32_t n, int32_t id, int lane) {
  if (n > kLaneSearchMax) return Contains(list, n, id);
  bool hit = false;
  for (int32_t i = lane; i < n; i += 32) hit |= list[i] == id;
  return __any_sync(0xFFFFFFFFu, hit);
}

// The warp sums of four values, each left on every lane: a reduce-scatter (the first step
// trades two of the four with the partner lane, the second one of the two, then the butterfly
// of one sum over 8 lanes) and an all-gather back; 9 shuffles where four butterflies take 20.
// Each sum pairs the same lanes' values as the butterfly does, so every lane gets the same
// bits and the lanes' online-softmax states stay identical.
__device__ __forceinline__ void HeadQuadWarpSum(float (&value)[4], int lane) {
  const bool upper = (lane & 16) != 0;
  const float pair0 =
      (upper ? value[2] : value[0]) + __shfl_xor_sync(0xFFFFFFFFu, upper ? value[0] : value[2], 16);
  const float pair1 =
      (upper ? value[3] : value[1]) + __shfl_xor_sync(0xFFFFFFFFu, upper ? value[1] : value[3], 16);
  const bool odd = (lane & 8) != 0;
  float sum = (odd ? pair1 : pair0) + __shfl_xor_sync(0xFFFFFFFFu, odd ? pair0 : pair1, 8);
#pragma unroll
  for (int offset = 4; offset >= 1; offset /= 2) {
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
  }
  // This lane holds sum 2 * upper + odd; gather the other three.
  const float neighbour = __shfl_xor_sync(0xFFFFFFFFu, sum, 8);
  const float even_sum = odd ? neighbour : sum, odd_sum = odd ? sum : neighbour;
  const float far_even = __shfl_xor_sync(0xFFFFFFFFu, even_sum, 16);
  const float far_odd = __shfl_xor_sync(0xFFFFFFFFu, odd_sum, 16);
  value[0] = upper ? far_even : even_sum;
  value[1] = upper ? far_odd : odd_sum;
  value[2] = upper ? even_sum : far_even;
  value[3] = upper ? odd_sum : far_odd;
}

// The largest exclusion list a block holds (shared memory): 16K ids, beyond any budget.
constexpr size_t kMaxExcludeBytes = 64 * 1024;

// Heads a thread block estimates together: its warps read each centroid once for all of them.
constexpr int kHeadsPerBlock = 4;  // HeadQuadWarpSum's four

// Where the blocks of one launch write: p.out / p.lse with one run an item, else run r's
// partial rows at partial_out[(r * rows + row) * D] and partial_lse[r * rows + row].
struct RunOutput {
  int runs = 1;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
};

template <typename T, int kDim>
__global__ void __launch_bounds__(EstimationWarps<kDim>() * 32)
    EstimationKernel(EstimationParams p, RunOutput runs) {
  internal::ChainedKernelStart();
  constexpr int kWarps = EstimationWarps<kDim>();
  constexpr int kThreads = kWarps * 32;
  constexpr int kPerLane = kDim / 32;
  constexpr int kParts = 2;  // the most centroids a cluster (block_summary.h)
  constexpr int H = kHeadsPerBlock;
  __shared__ float warp_max[kWarps][H];
  __shared__ float warp_denominator[kWarps][H];
  __shared__ float warp_numerator[kWarps][H][kDim];
  extern __shared__ int32_t exclude[];  // the item's exclusion list, [exclude_stride]

  const int chunks = (p.group_size + H - 1) / H;
  const int run = static_cast<int>(blockIdx.x % runs.runs);
  const int item = static_cast<int>(blockIdx.x / runs.runs / chunks);
  const int first_head = static_cast<int>(blockIdx.x / runs.runs % chunks) * H;
  const int heads = min(H, p.group_size - first_head);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;

  float q[H][kPerLane];
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const int head = first_head + min(h, heads - 1);  // a missing head repeats the last one
    const T* q_row = static_cast<const T*>(p.q) +
                     (static_cast<int64_t>(item) * p.group_size + head) * kDim + lane * kPerLane;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) q[h][j] = ToFloat(q_row[j]);
  }

  int32_t begin, end;
  if (p.list_count != nullptr) {
    begin = item * p.list_stride;
    end = begin + min(max(p.list_count[item], 0), p.list_stride);
  } else {
    begin = p.cluster_offsets[item];
    end = p.cluster_offsets[item + 1];
  }
  if (runs.runs > 1) {  // this block's run of the list
    const int32_t length = (max(end - begin, 0) + runs.runs - 1) / runs.runs;
    begin = min(end, begin + run * length);
    end = min(end, begin + length);
  }
  const int32_t num_exclude =
      p.exclude_ids != nullptr ? min(max(p.exclude_count[item], 0), p.exclude_stride) : 0;
  for (int j = threadIdx.x; j < num_exclude; j += kThreads) {
    exclude[j] = p.exclude_ids[int64_t{item} * p.exclude_stride + j];
  }
  __syncthreads();

  float running_max[H], denominator[H], numerator[H][kPerLane];
#pragma unroll
  for (int h = 0; h < H; ++h) {
    running_max[h] = -INFINITY;
    denominator[h] = 0.0f;
#pragma unroll
    for (int d = 0; d < kPerLane; ++d) numerator[h][d] = 0.0f;
  }
  const int parts = min(p.centroid_parts, kParts);
  // The spread term's weight a head: kSpreadWeight scale^2 / 2 |q|^2 (estimation.h).
  float spread_weight[H];
#pragma unroll
  for (int h = 0; h < H; ++h) {
    spread_weight[h] = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) spread_weight[h] = fmaf(q[h][j], q[h][j], spread_weight[h]);
  }
  HeadQuadWarpSum(spread_weight, lane);
#pragma unroll
  for (int h = 0; h < H; ++h) {
    spread_weight[h] *= 0.5f * kSpreadWeight * p.softmax_scale * p.softmax_scale;
  }
  if (end > begin) {
    const T* key_mean = static_cast<const T*>(p.key_mean[item]);
    const float* value_sum = p.value_sum[item];
    const int32_t* count = p.count[item];
    const float* key_spread = p.key_spread != nullptr ? p.key_spread[item] : nullptr;
    // kAtOnce list entries a warp iteration (entries j and j + kWarps): their id loads, then
    // every part's loads, are in flight together; then they are folded in list order.
    constexpr int kAtOnce = 2;
    for (int32_t j0 = begin + warp; j0 < end; j0 += kAtOnce * kWarps) {
      int32_t n[kAtOnce][kParts];
      float key[kAtOnce][kParts][kPerLane], value[kAtOnce][kParts][kPerLane];
      float spread[kAtOnce][kParts];
      int32_t cluster[kAtOnce];
#pragma unroll
      for (int u = 0; u < kAtOnce; ++u) {
        const int32_t j = j0 + u * kWarps;
        cluster[u] = j < end ? p.cluster_ids[j] : -1;
      }
#pragma unroll
      for (int u = 0; u < kAtOnce; ++u) {
        // Warp-uniform: an entry past the end or excluded reads nothing and counts 0.
        const bool live = cluster[u] >= 0 && !Excluded(exclude, num_exclude, cluster[u], lane);
#pragma unroll
        for (int part = 0; part < kParts; ++part) {
          const bool read = live && part < parts;
          const size_t id = read ? static_cast<size_t>(cluster[u]) * parts + part : 0;
          n[u][part] = read ? count[id] : 0;
          spread[u][part] = read && key_spread != nullptr ? key_spread[id] : 0.0f;
          const T* c = key_mean + id * kDim + lane * kPerLane;
          const float* sv = value_sum + id * kDim + lane * kPerLane;
#pragma unroll
          for (int d = 0; d < kPerLane; ++d) {
            key[u][part][d] = read ? ToFloat(c[d]) : 0.0f;
            value[u][part][d] = read ? sv[d] : 0.0f;
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kAtOnce; ++u) {
#pragma unroll
        for (int part = 0; part < kParts; ++part) {
          if (n[u][part] <= 0) continue;  // warp-uniform (also a missing part or entry)
          float dot[H];
#pragma unroll
          for (int h = 0; h < H; ++h) {
            dot[h] = 0.0f;
#pragma unroll
            for (int d = 0; d < kPerLane; ++d) {
              dot[h] = fmaf(q[h][d], key[u][part][d], dot[h]);
            }
          }
          HeadQuadWarpSum(dot, lane);
#pragma unroll
          for (int h = 0; h < H; ++h) {
            const float logit = fmaf(spread_weight[h], spread[u][part], dot[h] * p.softmax_scale);
            // The state is rescaled only when the max grows (warp-uniform: every lane holds the
            // same logit), which after the first clusters is rare; otherwise the correction
            // would be exp(0) = 1 exactly. First cluster: running_max is -inf and the old state
            // is 0; exp(-inf) = 0 keeps it.
            if (logit > running_max[h] || logit != logit) {
              const float new_max = NanMax(running_max[h], logit);
              const float correction = expf(running_max[h] - new_max);
              denominator[h] *= correction;
#pragma unroll
              for (int d = 0; d < kPerLane; ++d) numerator[h][d] *= correction;
              running_max[h] = new_max;
            }
            const float weight = expf(logit - running_max[h]);
            denominator[h] = fmaf(weight, static_cast<float>(n[u][part]), denominator[h]);
#pragma unroll
            for (int d = 0; d < kPerLane; ++d) {
              numerator[h][d] = fmaf(weight, value[u][part][d], numerator[h][d]);
            }
          }
        }
      }
    }
  }
  // A warp that saw no cluster has max -inf and contributes nothing below.
#pragma unroll
  for (int h = 0; h < H; ++h) {
    if (lane == 0) {
      warp_max[warp][h] = running_max[h];
      warp_denominator[warp][h] = denominator[h];
    }
#pragma unroll
    for (int d = 0; d < kPerLane; ++d) {
      warp_numerator[warp][h][lane * kPerLane + d] = numerator[h][d];
    }
  }
  __syncthreads();

  const int64_t rows = static_cast<int64_t>(p.num_items) * p.group_size;
  for (int h = 0; h < heads; ++h) {
    const int64_t item_row = static_cast<int64_t>(item) * p.group_size + first_head + h;
    const int64_t row = runs.runs > 1 ? run * rows + item_row : item_row;
    float* out = (runs.runs > 1 ? runs.partial_out : p.out) + row * kDim;
    float* lse = (runs.runs > 1 ? runs.partial_lse : p.lse) + row;
    float total_max = -INFINITY;
    for (int w = 0; w < kWarps; ++w) total_max = NanMax(total_max, warp_max[w][h]);
    if (total_max == -INFINITY) {  // no contributing cluster
      for (int d = threadIdx.x; d < kDim; d += kThreads) out[d] = 0.0f;
      if (threadIdx.x == 0) *lse = -INFINITY;
      continue;
    }
    float total_denominator = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float scale = warp_max[w][h] == -INFINITY ? 0.0f : expf(warp_max[w][h] - total_max);
      total_denominator += warp_denominator[w][h] * scale;
    }
    for (int d = threadIdx.x; d < kDim; d += kThreads) {
      float value = 0.0f;
      for (int w = 0; w < kWarps; ++w) {
        const float scale = warp_max[w][h] == -INFINITY ? 0.0f : expf(warp_max[w][h] - total_max);
        value += warp_numerator[w][h][d] * scale;
      }
      out[d] = value / total_denominator;
    }
    if (threadIdx.x == 0) *lse = total_max + logf(total_denominator);
  }
}

// Runs an item's list is cut into: enough blocks to fill the GPU's block slots about twice
// (whole waves, the last one not nearly empty), at least kMinClustersPerWarp clusters a warp
// of a fixed-stride list, at most what the workspace holds.
constexpr int kMinClustersPerWarp = 8;

template <typename Kernel>
absl::Status ChooseRuns(const EstimationParams& p, Kernel kernel, int warps, size_t smem,
                        int64_t blocks, int* runs) {
  *runs = 1;
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
  int device = 0, sm_count = 0, per_sm = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, warps * 32, smem));
  const int64_t slots = int64_t{sm_count} * std::max(per_sm, 1);
  int64_t want = (2 * slots + blocks - 1) / blocks;
  if (p.list_count != nullptr) {
    want = std::min<int64_t>(
        want, std::max<int64_t>(1, p.list_stride / (int64_t{warps} * kMinClustersPerWarp)));
  }
  *runs = static_cast<int>(std::clamp<int64_t>(want, 1, kMaxEstimationSplits));
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchEstimation(const EstimationParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateEstimationShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  const int64_t blocks = static_cast<int64_t>(params.num_items) *
                         ((params.group_size + kHeadsPerBlock - 1) / kHeadsPerBlock);
  return DispatchInt<64, 128, 256>("head_dim", params.head_dim, [&](auto dim) {
    return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      constexpr int kDim = decltype(dim)::value;
      const size_t exclude_bytes =
          params.exclude_ids != nullptr ? sizeof(int32_t) * params.exclude_stride : 0;
      if (exclude_bytes > kMaxExcludeBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("EstimationParams: exclude_stride is ", params.exclude_stride,
                         "; the kernel keeps "
                         "an item's exclusion list in shared memory, at most ",
                         kMaxExcludeBytes / 4, " ids"));
      }
      // Beyond the default 48 KiB of shared memory a block (numerators take 32 KiB).
      KVTIER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(EstimationKernel<T, kDim>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       static_cast<int>(kMaxExcludeBytes)));
      RunOutput runs;
      KVTIER_RETURN_IF_ERROR(ChooseRuns(params, EstimationKernel<T, kDim>, EstimationWarps<kDim>(),
                                        exclude_bytes, blocks, &runs.runs));
      const int64_t rows = int64_t{params.num_items} * params.group_size;
      if (runs.runs > 1) {
        runs.partial_out = static_cast<float*>(params.workspace);
        const size_t out_bytes = (size_t{kMaxEstimationSplits} * rows * kDim * 4 + 255) / 256 * 256;
        runs.partial_lse =
            reinterpret_cast<float*>(static_cast<char*>(params.workspace) + out_bytes);
      }
      if (blocks * runs.runs > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(
            absl::StrCat("EstimationParams: ", params.num_items, " items exceed one grid"));
      }
      KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(
          EstimationKernel<T, kDim>, static_cast<int>(blocks * runs.runs),
          EstimationWarps<kDim>() * 32, exclude_bytes, stream, params, runs));
      KVTIER_RETURN_IF_LAUNCH_FAILED("EstimationKernel", stream);
      if (runs.runs == 1) return absl::OkStatus();
      return internal::LaunchMergeStridedPartials(runs.partial_out, runs.partial_lse, runs.runs,
                                                  static_cast<int>(rows), kDim, DType::kFP32,
                                                  params.out, params.lse, stream);
    });
  });
}

}  // namespace kvtier
