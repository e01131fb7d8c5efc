// Segment clustering on the GPU (contract and algorithm in segment_cluster.h). Every kernel
// covers all segments (grid y, or one block per segment); the launcher queues, per round,
//   assign (tensor cores) -> offsets -> [scatter -> update -> [nearest (tensor cores) -> repair]]
// and at the end a centroid similarity matrix (tensor cores) -> chain -> output. Offsets,
// scatter, chain and output are in segment_cluster_order.cu; what both files share is in
// segment_cluster_device.cuh.
//
// The similarity kernel computes X C^T for a 128-row tile of X (unit keys, or centroids)
// against all centroids, 64 at a time, with mma.sync m16n8k16 (fp16 in, fp32 accumulate):
// the tile's rows stay in shared memory, centroid tiles stream through a cp.async double
// buffer (they are L2-resident: a segment's centroids are 128 KiB at D = 128), and each
// thread keeps a running argmax of its accumulator rows, so the tokens x centroids matrix is
// never stored. Ties go to the lowest column on both sides of every comparison.
//
// Determinism: no floating-point atomics. Cluster sums run in ascending token order over a
// member list built by a stable counting sort (per-tile histograms, a scan over tiles, ranks
// within a tile); the least similar member of a cluster is an integer atomicMin of
// (similarity key, token).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/cp_async.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/segment_cluster.h"
#include "kernels/segment_cluster_device.cuh"

namespace kvtier {
namespace internal::segment_cluster {
// ---- Step 1: unit keys -------------------------------------------------------------------

// Per 64-token chunk: the sum of its finite keys and their count (mean_sums, chunk_finite);
// the warps' sums are added in warp order, so the result is deterministic.
template <typename T, int kDim>
__global__ void __launch_bounds__(kRowThreads) MeanSumsKernel(Args a) {
  internal::ChainedKernelStart();
  constexpr int kWarps = kRowThreads / 32, kPerLane = kDim / 32;
  __shared__ float warp_sums[kWarps][kDim];
  __shared__ int warp_finite[kWarps];
  const int segment = blockIdx.y, chunk = blockIdx.x;
  const int n = Tokens(a, segment);
  if (chunk * kChunkTokens >= n) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* keys = static_cast<const T*>(a.keys[segment]);
  float sum[kPerLane] = {};
  int finite = 0;
  for (int t = chunk * kChunkTokens + warp; t < min(n, (chunk + 1) * kChunkTokens); t += kWarps) {
    float v[kPerLane];
    bool ok = true;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      v[j] = ToFloat(keys[t * a.key_stride + lane + 32 * j]);
      ok &= isfinite(v[j]);
    }
    if (__all_sync(0xFFFFFFFFu, ok)) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) sum[j] += v[j];
      ++finite;
    }
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) warp_sums[warp][lane + 32 * j] = sum[j];
  if (lane == 0) warp_finite[warp] = finite;
  __syncthreads();
  if (threadIdx.x < kDim) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][threadIdx.x];
    Array<float>(a, segment, a.layout.mean_sums)[chunk * kDim + threadIdx.x] = total;
  }
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kWarps; ++w) total += warp_finite[w];
    Array<int32_t>(a, segment, a.layout.chunk_finite)[chunk] = total;
  }
}

// Unit keys of a 64-token chunk of tokens_pad (rows from n on are zero and degenerate). With
// kCenter the mean is formed first from the chunks' sums, in chunk order.
template <typename T, int kDim, bool kCenter>
__global__ void __launch_bounds__(kRowThreads) UnitKeysKernel(Args a) {
  internal::ChainedKernelStart();
  constexpr int kWarps = kRowThreads / 32, kPerLane = kDim / 32;
  constexpr int kParts = kRowThreads / kDim;  // threads a channel of the mean
  static_assert(kParts >= 1);
  __shared__ float mean[kDim];
  __shared__ float part_sum[kParts][kDim];
  __shared__ int part_count[kParts];
  const int segment = blockIdx.y, chunk = blockIdx.x;
  const int n = Tokens(a, segment);
  if (n == 0) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if constexpr (kCenter) {
    // Thread (part, d) sums chunks part, part + kParts, ...; the parts then add in order.
    const float* sums = Array<float>(a, segment, a.layout.mean_sums);
    const int32_t* finite = Array<int32_t>(a, segment, a.layout.chunk_finite);
    const int chunks = (n + kChunkTokens - 1) / kChunkTokens;
    const int d = threadIdx.x % kDim, part = threadIdx.x / kDim;
    float sum = 0.0f;
    int count = 0;
#pragma unroll 8
    for (int c = part; c < chunks; c += kParts) {
      sum += sums[c * kDim + d];
      count += finite[c];
    }
    part_sum[part][d] = sum;
    if (d == 0) part_count[part] = count;
    __syncthreads();
    if (threadIdx.x < kDim) {
      float total = 0.0f;
      int total_count = 0;
      for (int q = 0; q < kParts; ++q) {
        total += part_sum[q][threadIdx.x];
        total_count += part_count[q];
      }
      mean[threadIdx.x] = total_count > 0 ? total / static_cast<float>(total_count) : 0.0f;
    }
  } else {
    if (threadIdx.x < kDim) mean[threadIdx.x] = 0.0f;
  }
  __syncthreads();
  const T* keys = static_cast<const T*>(a.keys[segment]);
  __half* unit = Array<__half>(a, segment, a.layout.unit_keys);
  uint8_t* degenerate = Array<uint8_t>(a, segment, a.layout.degenerate);
  for (int t = chunk * kChunkTokens + warp; t < (chunk + 1) * kChunkTokens; t += kWarps) {
    float v[kPerLane];
    bool ok = t < n;
    float norm2 = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      v[j] = 0.0f;
      if (t < n) v[j] = ToFloat(keys[t * a.key_stride + lane + 32 * j]);
      ok &= isfinite(v[j]);
      v[j] -= mean[lane + 32 * j];
      norm2 = fmaf(v[j], v[j], norm2);
    }
    ok = __all_sync(0xFFFFFFFFu, ok);
    norm2 = WarpSum(norm2);
    ok &= norm2 > 0.0f && isfinite(norm2);
    const float scale = ok ? rsqrtf(norm2) : 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      unit[t * kDim + lane + 32 * j] = __float2half_rn(ok ? v[j] * scale : 0.0f);
    }
    if (lane == 0) degenerate[t] = ok ? 0 : 1;
  }
}

// ---- Step 2: seeds -----------------------------------------------------------------------

// Centroid j = unit key of SeedToken(j); rows k .. clusters_pad - 1 zero; farthest cleared.
template <int kDim>
__global__ void __launch_bounds__(kRowThreads) InitKernel(Args a) {
  internal::ChainedKernelStart();
  const int segment = blockIdx.y;
  const int j = blockIdx.x * (kRowThreads / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = Tokens(a, segment);
  if (n == 0 || j >= a.layout.clusters_pad) return;
  const int k = ClusterCount(n, a.tokens_per_cluster);
  __half* centroid = Array<__half>(a, segment, a.layout.centroids) + j * kDim;
  if (j < k) {
    const int seed = internal::SeedToken(j, n, k);
    CopyRow<kDim>(centroid, Array<__half>(a, segment, a.layout.unit_keys) + seed * kDim, lane);
  } else {
    for (int w = lane; w < kDim / 2; w += 32) reinterpret_cast<uint32_t*>(centroid)[w] = 0;
  }
  if (lane == 0) Array<uint64_t>(a, segment, a.layout.farthest)[j] = kNoToken;
}

// ---- Similarities on tensor cores ----------------------------------------------------------

template <int kDim>
struct GemmShape {
  static constexpr int kStride = kDim + 8;  // halves a shared row: 16 bytes of padding keep the
                                            // 8 rows an ldmatrix reads in distinct banks
  static constexpr int kRowBytes = kStride * 2;
  static constexpr int kVectors = kDim / 8;  // 16-byte vectors a row
  static constexpr int kTileBytes = kTileRows * kRowBytes;
  static constexpr int kStepBytes = kStepCols * kRowBytes;
  static constexpr int kSmemBytes = kTileBytes + 2 * kStepBytes;
};

// Rows: unit keys (kAssign) or centroids (kNearest, kStore) of the block's 128-row tile;
// columns: the segment's k centroids.
//  - kAssign: assignment, tile_rank, the tile's histogram (tile_counts), farthest.
//  - kNearest: nearest[j] = argmax over the other centroids (-1 when k = 1).
//  - kStore: similarity[row][col] for row, col < k.
template <int kDim, GemmMode kMode>
__global__ void __launch_bounds__(kGemmThreads) SimilarityKernel(Args a) {
  internal::ChainedKernelStart();
  using S = GemmShape<kDim>;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ float reduce_value[2][kTileRows];
  __shared__ int reduce_index[2][kTileRows];
  __shared__ int histogram[kMaxSegmentClusters];

  const int segment = blockIdx.y;
  const int row0 = blockIdx.x * kTileRows;
  const int n = Tokens(a, segment);
  if (n == 0) return;
  const int k = ClusterCount(n, a.tokens_per_cluster);
  const int rows = kMode == GemmMode::kAssign ? n : k;
  if (row0 >= rows) return;
  const __half* centroids = Array<__half>(a, segment, a.layout.centroids);
  const __half* source =
      kMode == GemmMode::kAssign ? Array<__half>(a, segment, a.layout.unit_keys) : centroids;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp % 4, warp_n = warp / 4;

  if constexpr (kMode == GemmMode::kAssign) {
    for (int c = threadIdx.x; c < k; c += kGemmThreads) histogram[c] = 0;
  }
  const uint32_t tile = SharedAddress(smem);
  auto step_buffer = [&](int step) { return tile + S::kTileBytes + (step & 1) * S::kStepBytes; };
  for (int idx = threadIdx.x; idx < kTileRows * S::kVectors; idx += kGemmThreads) {
    const int r = idx / S::kVectors, v = idx % S::kVectors;
    const bool in = row0 + r < rows;
    CpAsync16(tile + r * S::kRowBytes + v * 16, in ? source + (row0 + r) * kDim + v * 8 : source,
              in ? 16 : 0);
  }
  auto issue_step = [&](int step) {
    const uint32_t buffer = step_buffer(step);
    for (int idx = threadIdx.x; idx < kStepCols * S::kVectors; idx += kGemmThreads) {
      const int r = idx / S::kVectors, v = idx % S::kVectors;
      const int col = step * kStepCols + r;
      CpAsync16(buffer + r * S::kRowBytes + v * 16,
                col < k ? centroids + col * kDim + v * 8 : centroids, col < k ? 16 : 0);
    }
  };
  issue_step(0);
  CpAsyncCommit();

  // Thread rows: slot s = 2 mi + h is tile row warp_m * 32 + 16 mi + lane / 4 + 8 h.
  float best[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int arg[4] = {-1, -1, -1, -1};
  float* similarity = Array<float>(a, segment, a.layout.similarity);
  const int steps = (k + kStepCols - 1) / kStepCols;
  for (int step = 0; step < steps; ++step) {
    if (step + 1 < steps) issue_step(step + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    const uint32_t buffer = step_buffer(step);
    float acc[2][4][4] = {};
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
      uint32_t fa[2][4], fb[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int r = warp_m * 32 + mi * 16 + (lane & 15);
        LdMatrixX4(fa[mi], tile + r * S::kRowBytes + (2 * kk + (lane >> 4)) * 16);
      }
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        const int r = warp_n * 32 + pair * 16 + (lane & 7) + (lane >> 4) * 8;
        LdMatrixX4(fb[pair], buffer + r * S::kRowBytes + (2 * kk + ((lane >> 3) & 1)) * 16);
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          Mma(acc[mi][ni], fa[mi], fb[ni / 2][(ni % 2) * 2], fb[ni / 2][(ni % 2) * 2 + 1]);
        }
      }
    }
    // acc[mi][ni][e]: row warp_m * 32 + 16 mi + lane / 4 + 8 (e / 2), column
    // step * 64 + warp_n * 32 + 8 ni + 2 (lane % 4) + e % 2. Per slot the columns ascend.
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = warp_m * 32 + mi * 16 + (lane >> 2) + (e >> 1) * 8;
          const int col = step * kStepCols + warp_n * 32 + ni * 8 + (lane & 3) * 2 + (e & 1);
          const float v = acc[mi][ni][e];
          if constexpr (kMode == GemmMode::kStore) {
            if (row0 + r < k && col < k) {
              similarity[static_cast<size_t>(row0 + r) * a.layout.clusters_pad + col] = v;
            }
          } else {
            const int slot = mi * 2 + (e >> 1);
            const bool valid = col < k && (kMode != GemmMode::kNearest || col != row0 + r);
            if (valid && v > best[slot]) {
              best[slot] = v;
              arg[slot] = col;
            }
          }
        }
      }
    }
    __syncthreads();  // the buffer is refilled by the next step's prefetch
  }
  if constexpr (kMode == GemmMode::kStore) {
    return;
  } else {
    // The 4 lanes of a quad share rows; then the two column halves meet in shared memory.
#pragma unroll
    for (int slot = 0; slot < 4; ++slot) {
#pragma unroll
      for (int offset = 1; offset <= 2; offset *= 2) {
        const float v = __shfl_xor_sync(0xFFFFFFFFu, best[slot], offset);
        const int i = __shfl_xor_sync(0xFFFFFFFFu, arg[slot], offset);
        if (Beats(v, i, best[slot], arg[slot])) {
          best[slot] = v;
          arg[slot] = i;
        }
      }
      if ((lane & 3) == 0) {
        const int r = warp_m * 32 + (slot / 2) * 16 + (lane >> 2) + (slot % 2) * 8;
        reduce_value[warp_n][r] = best[slot];
        reduce_index[warp_n][r] = arg[slot];
      }
    }
    __syncthreads();
    const int r = threadIdx.x;
    const int row = row0 + r;
    int index = -1;
    float value = -INFINITY;
    if (r < kTileRows) {
      value = reduce_value[0][r];
      index = reduce_index[0][r];
      if (Beats(reduce_value[1][r], reduce_index[1][r], value, index)) {
        value = reduce_value[1][r];
        index = reduce_index[1][r];
      }
    }
    if constexpr (kMode == GemmMode::kNearest) {
      if (r < kTileRows && row < k) Array<int32_t>(a, segment, a.layout.nearest)[row] = index;
    } else {
      // Every row < n has a finite similarity to centroid 0 at least, so index >= 0; the
      // clamp only keeps a broken invariant from writing out of bounds.
      index = max(index, 0);
      int* tile_index = reinterpret_cast<int*>(reduce_index[0]);  // reused: the tile's choices
      __syncthreads();
      if (r < kTileRows) tile_index[r] = row < n ? index : -1;
      if (r < kTileRows && row < n) {
        Array<int32_t>(a, segment, a.layout.assignment)[row] = index;
        atomicAdd(&histogram[index], 1);
        if (!Array<uint8_t>(a, segment, a.layout.degenerate)[row]) {
          atomicMin(reinterpret_cast<unsigned long long*>(
                        Array<uint64_t>(a, segment, a.layout.farthest) + index),
                    static_cast<unsigned long long>(FarthestKey(value, row)));
        }
      }
      __syncthreads();
      if (r < kTileRows && row < n) {
        int rank = 0;
        for (int q = 0; q < r; ++q) rank += tile_index[q] == index;
        Array<int32_t>(a, segment, a.layout.tile_rank)[row] = rank;
      }
      int32_t* counts =
          Array<int32_t>(a, segment, a.layout.tile_counts) + blockIdx.x * a.layout.clusters_pad;
      for (int c = threadIdx.x; c < k; c += kGemmThreads) counts[c] = histogram[c];
    }
  }
}

// A warp per cluster: the fp32 sum of its members' unit keys in ascending token order, then
// the centroid is that sum normalised (kept when the sum is 0). Lane l holds channels
// 2 l + 64 j and 2 l + 64 j + 1.
template <int kDim>
__global__ void __launch_bounds__(kRowThreads) UpdateKernel(Args a) {
  internal::ChainedKernelStart();
  constexpr int kPairs = kDim / 64;
  const int segment = blockIdx.y;
  const int c = blockIdx.x * (kRowThreads / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = Tokens(a, segment);
  if (n == 0 || c >= ClusterCount(n, a.tokens_per_cluster)) return;
  const int size = Array<int32_t>(a, segment, a.layout.sizes)[c];
  const int32_t* members =
      Array<int32_t>(a, segment, a.layout.members) + Array<int32_t>(a, segment, a.layout.starts)[c];
  const __half2* unit = Array<__half2>(a, segment, a.layout.unit_keys);
  float2 sum[kPairs] = {};
  for (int base = 0; base < size; base += 32) {
    const int mine = base + lane < size ? members[base + lane] : 0;
    const int count = min(32, size - base);
#pragma unroll 4
    for (int i = 0; i < count; ++i) {
      const int t = __shfl_sync(0xFFFFFFFFu, mine, i);
#pragma unroll
      for (int j = 0; j < kPairs; ++j) {
        const float2 x = __half22float2(unit[t * (kDim / 2) + lane + 32 * j]);
        sum[j].x += x.x;
        sum[j].y += x.y;
      }
    }
  }
  float norm2 = 0.0f;
#pragma unroll
  for (int j = 0; j < kPairs; ++j) norm2 += sum[j].x * sum[j].x + sum[j].y * sum[j].y;
  norm2 = WarpSum(norm2);
  if (!(norm2 > 0.0f)) return;
  const float scale = rsqrtf(norm2);
  __half2* centroid = Array<__half2>(a, segment, a.layout.centroids) + c * (kDim / 2);
#pragma unroll
  for (int j = 0; j < kPairs; ++j) {
    centroid[lane + 32 * j] = __floats2half2_rn(sum[j].x * scale, sum[j].y * scale);
  }
}

// Step 3c for one segment (a thread per cluster), then farthest is cleared for the next round.
template <int kDim>
__global__ void __launch_bounds__(kSegmentThreads) RepairKernel(Args a) {
  internal::ChainedKernelStart();
  using Scan = cub::BlockScan<int, kSegmentThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int size_of[kMaxSegmentClusters];
  __shared__ int listed[2][kMaxSegmentClusters];  // small, large ids ascending
  __shared__ int sorted[2][kMaxSegmentClusters];  // in pairing order
  const int segment = blockIdx.x;
  const int n = Tokens(a, segment);
  if (n == 0) return;
  const int k = ClusterCount(n, a.tokens_per_cluster);
  const int tpc = a.tokens_per_cluster;
  const int c = threadIdx.x;
  uint64_t* farthest = Array<uint64_t>(a, segment, a.layout.farthest);
  const int size = c < k ? Array<int32_t>(a, segment, a.layout.sizes)[c] : 0;
  if (c < kMaxSegmentClusters) size_of[c] = size;
  __syncthreads();
  int small = 0, large = 0;
  if (c < k && k >= 2) {
    const int nearest = Array<int32_t>(a, segment, a.layout.nearest)[c];
    small = nearest >= 0 && internal::IsSmallCluster(size, tpc) &&
            internal::RanksBelow(size, c, size_of[nearest], nearest);
    large = internal::IsLargeCluster(size, tpc) && farthest[c] != kNoToken;
  }
  int small_at = 0, smalls = 0, large_at = 0, larges = 0;
  Scan(scan).ExclusiveSum(small, small_at, smalls);
  __syncthreads();
  Scan(scan).ExclusiveSum(large, large_at, larges);
  if (small) listed[0][small_at] = c;
  if (large) listed[1][large_at] = c;
  __syncthreads();
  if (c < smalls) {  // rank by (size, id) ascending
    const int j = listed[0][c];
    int rank = 0;
    for (int i = 0; i < smalls; ++i) {
      const int o = listed[0][i];
      rank += size_of[o] < size_of[j] || (size_of[o] == size_of[j] && o < j);
    }
    sorted[0][rank] = j;
  }
  if (c < larges) {  // rank by size descending, then id ascending
    const int j = listed[1][c];
    int rank = 0;
    for (int i = 0; i < larges; ++i) {
      const int o = listed[1][i];
      rank += size_of[o] > size_of[j] || (size_of[o] == size_of[j] && o < j);
    }
    sorted[1][rank] = j;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __half* centroids = Array<__half>(a, segment, a.layout.centroids);
  const __half* unit = Array<__half>(a, segment, a.layout.unit_keys);
  for (int pair = warp; pair < min(smalls, larges); pair += kSegmentThreads / 32) {
    const int token = static_cast<int>(static_cast<uint32_t>(farthest[sorted[1][pair]]));
    CopyRow<kDim>(centroids + sorted[0][pair] * kDim, unit + token * kDim, lane);
  }
  __syncthreads();  // every read of farthest is done
  if (c < a.layout.clusters_pad) farthest[c] = kNoToken;
}

// ---- Launcher ---------------------------------------------------------------------------

// Allows a similarity kernel its shared memory on the current device, once per device.
template <int kDim, GemmMode kMode>
absl::Status PrepareSimilarityKernel() {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<bool> prepared[kMaxCachedDevices] = {};
  int device = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable && prepared[device].load(std::memory_order_acquire)) return absl::OkStatus();
  KVTIER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(SimilarityKernel<kDim, kMode>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   GemmShape<kDim>::kSmemBytes));
  if (cacheable) prepared[device].store(true, std::memory_order_release);
  return absl::OkStatus();
}

#define KVTIER_CLUSTER_LAUNCH(kernel, grid, block, smem)                                        \
  do {                                                                                          \
    KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(kernel, grid, block, smem, stream, a)); \
    KVTIER_RETURN_IF_LAUNCH_FAILED(#kernel, stream);                                            \
  } while (false)

template <typename T, int kDim>
absl::Status LaunchTyped(const Args& a, int num_segments, int iterations, bool center,
                         cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR((PrepareSimilarityKernel<kDim, GemmMode::kAssign>()));
  KVTIER_RETURN_IF_ERROR((PrepareSimilarityKernel<kDim, GemmMode::kNearest>()));
  KVTIER_RETURN_IF_ERROR((PrepareSimilarityKernel<kDim, GemmMode::kStore>()));
  const SegmentClusterLayout& l = a.layout;
  const unsigned segments = static_cast<unsigned>(num_segments);
  const dim3 chunk_grid(l.chunks, segments), tile_grid(l.tiles, segments);
  const dim3 row_grid(l.clusters_pad / (kRowThreads / 32), segments);
  const dim3 centroid_tile_grid((l.clusters_pad + kTileRows - 1) / kTileRows, segments);
  constexpr int kSmem = GemmShape<kDim>::kSmemBytes;
  if (center) {
    KVTIER_CLUSTER_LAUNCH((MeanSumsKernel<T, kDim>), chunk_grid, kRowThreads, 0);
    KVTIER_CLUSTER_LAUNCH((UnitKeysKernel<T, kDim, true>), chunk_grid, kRowThreads, 0);
  } else {
    KVTIER_CLUSTER_LAUNCH((UnitKeysKernel<T, kDim, false>), chunk_grid, kRowThreads, 0);
  }
  KVTIER_CLUSTER_LAUNCH(InitKernel<kDim>, row_grid, kRowThreads, 0);
  for (int round = 0; round < iterations; ++round) {
    KVTIER_CLUSTER_LAUNCH((SimilarityKernel<kDim, GemmMode::kAssign>), tile_grid, kGemmThreads,
                          kSmem);
    KVTIER_CLUSTER_LAUNCH(OffsetsKernel, segments, kSegmentThreads, 0);
    if (round + 1 == iterations) break;
    KVTIER_CLUSTER_LAUNCH(ScatterKernel, tile_grid, kTileRows, 0);
    KVTIER_CLUSTER_LAUNCH(UpdateKernel<kDim>, row_grid, kRowThreads, 0);
    if (round + 2 < iterations) {
      KVTIER_CLUSTER_LAUNCH((SimilarityKernel<kDim, GemmMode::kNearest>), centroid_tile_grid,
                            kGemmThreads, kSmem);
      KVTIER_CLUSTER_LAUNCH(RepairKernel<kDim>, segments, kSegmentThreads, 0);
    }
  }
  KVTIER_CLUSTER_LAUNCH((SimilarityKernel<kDim, GemmMode::kStore>), centroid_tile_grid,
                        kGemmThreads, kSmem);
  KVTIER_CLUSTER_LAUNCH(ChainKernel, segments, kChainThreads, 0);
  KVTIER_CLUSTER_LAUNCH(OutputKernel, tile_grid, kTileRows, 0);
  return absl::OkStatus();
}

#undef KVTIER_CLUSTER_LAUNCH

}  // namespace internal::segment_cluster

absl::Status LaunchSegmentCluster(const SegmentClusterParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateSegmentClusterShape(params));
  if (params.num_segments == 0) return absl::OkStatus();
  const size_t needed = SegmentClusterWorkspaceBytes(params);
  if (params.workspace == nullptr || params.workspace_bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("SegmentClusterParams: workspace has ", params.workspace_bytes, " bytes at ",
                     absl::Hex(reinterpret_cast<uintptr_t>(params.workspace)),
                     "; expected at least SegmentClusterWorkspaceBytes = ", needed));
  }
  if (reinterpret_cast<uintptr_t>(params.workspace) % 256 != 0) {
    return absl::InvalidArgumentError("SegmentClusterParams: workspace is not 256-byte aligned");
  }
  internal::segment_cluster::Args a;
  a.workspace = static_cast<unsigned char*>(params.workspace);
  a.layout = internal::SegmentClusterWorkspaceLayout(params);
  a.max_tokens = params.max_tokens;
  a.tokens_per_cluster = params.tokens_per_cluster;
  a.keys = params.keys;
  a.key_stride = params.key_stride;
  a.num_tokens = params.num_tokens;
  a.order = params.order;
  a.cluster_of = params.cluster_of;
  a.num_clusters = params.num_clusters;
  return DispatchInt<64, 128, 256>("head_dim", params.head_dim, [&](auto dim) {
    return DispatchKvDType(params.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      return internal::segment_cluster::LaunchTyped<T, decltype(dim)::value>(
          a, params.num_segments, params.iterations, params.center, stream);
    });
  });
}

}  // namespace kvtier
