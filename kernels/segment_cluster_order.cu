// Segment clustering on the GPU, the order half (contract in segment_cluster.h, the launcher in
// segment_cluster.cu): the counting sort's offsets and scatter of each round, then the chain of
// clusters by similarity and the output order.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "kernels/launch.cuh"
#include "kernels/segment_cluster_device.cuh"

namespace kvtier::internal::segment_cluster {

// ---- Step 3: counting sort, update, repair -------------------------------------------------

// Per cluster: tile_counts becomes the exclusive prefix over tiles (the rank of a tile's
// first member among the cluster's members), sizes the total; starts the exclusive prefix of
// sizes over cluster ids.
__global__ void __launch_bounds__(kSegmentThreads) OffsetsKernel(Args a) {
  internal::ChainedKernelStart();
  using Scan = cub::BlockScan<int, kSegmentThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int segment = blockIdx.x;
  const int n = Tokens(a, segment);
  if (n == 0) return;
  const int k = ClusterCount(n, a.tokens_per_cluster);
  const int c = threadIdx.x;
  const int tiles = (n + kTileRows - 1) / kTileRows;
  int total = 0;
  if (c < k) {
    // 16 tiles' counts are loaded at a time, so their latencies overlap.
    constexpr int kBatch = 16;
    int32_t* counts = Array<int32_t>(a, segment, a.layout.tile_counts) + c;
    const int stride = a.layout.clusters_pad;
    for (int t0 = 0; t0 < tiles; t0 += kBatch) {
      int v[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) v[i] = t0 + i < tiles ? counts[(t0 + i) * stride] : 0;
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        if (t0 + i < tiles) counts[(t0 + i) * stride] = total;
        total += v[i];
      }
    }
    Array<int32_t>(a, segment, a.layout.sizes)[c] = total;
  }
  int start = 0;
  Scan(scan).ExclusiveSum(total, start);
  if (c < k) Array<int32_t>(a, segment, a.layout.starts)[c] = start;
}

// Where token t of cluster c (this block's tile of tokens) goes in a list that holds each
// cluster's members from first[c] on: first[c] + the members of c in earlier tiles + t's rank
// among c's members in its tile.
__device__ __forceinline__ int MemberPosition(const Args& a, int segment, size_t first, int c,
                                              int t) {
  return Array<int32_t>(a, segment, first)[c] +
         Array<int32_t>(a, segment, a.layout.tile_counts)[blockIdx.x * a.layout.clusters_pad + c] +
         Array<int32_t>(a, segment, a.layout.tile_rank)[t];
}

// members[starts[a] + rank of t among a's members] = t, for every token t of cluster a.
__global__ void __launch_bounds__(kTileRows) ScatterKernel(Args a) {
  internal::ChainedKernelStart();
  const int segment = blockIdx.y;
  const int t = blockIdx.x * kTileRows + threadIdx.x;
  if (t >= Tokens(a, segment)) return;
  const int c = Array<int32_t>(a, segment, a.layout.assignment)[t];
  const int position = MemberPosition(a, segment, a.layout.starts, c, t);
  Array<int32_t>(a, segment, a.layout.members)[position] = t;
}

// ---- Step 4: chain and output ----------------------------------------------------------------

// One block per segment. The walk is a chain of dependent argmaxes, each a read of one row of
// the similarity matrix (latency-bound), so first every warp lists, for its share of the
// non-empty clusters, the kCandidates most similar other non-empty clusters (similarity
// descending, index ascending: the walk's own order). A step then takes the first unvisited
// listed cluster, which is the argmax over all unvisited ones; only when all are visited does
// warp 0 scan the row. Writes output_id and chain_start (the first output position of each
// non-empty cluster), and num_clusters.
__global__ void __launch_bounds__(kChainThreads) ChainKernel(Args a) {
  internal::ChainedKernelStart();
  constexpr uint32_t kAll = 0xFFFFFFFFu;
  __shared__ int16_t candidates[kMaxSegmentClusters][kCandidates];
  __shared__ uint32_t visited[kMaxSegmentClusters / 32];  // bit b of word w: cluster 32 w + b
  const int segment = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = Tokens(a, segment);
  if (n == 0) {
    if (threadIdx.x == 0 && a.num_clusters != nullptr) a.num_clusters[segment] = 0;
    return;
  }
  const int k = ClusterCount(n, a.tokens_per_cluster);
  const int32_t* sizes = Array<int32_t>(a, segment, a.layout.sizes);
  const float* similarity = Array<float>(a, segment, a.layout.similarity);
  // Empty clusters and ids >= k start visited.
  const bool live = threadIdx.x < k && sizes[threadIdx.x] > 0;
  const uint32_t dead = __ballot_sync(kAll, !live);
  if (lane == 0) visited[warp] = dead;
  __syncthreads();

  for (int j = warp; j < k; j += kChainThreads / 32) {
    if (((visited[j / 32] >> (j % 32)) & 1u) != 0) continue;  // warp-uniform
    const float* row = similarity + static_cast<size_t>(j) * a.layout.clusters_pad;
    float value[kCandidates];
    int index[kCandidates];
#pragma unroll
    for (int s = 0; s < kCandidates; ++s) {
      value[s] = -INFINITY;
      index[s] = -1;
    }
    // This lane's best candidates among clusters lane + 32 i, kept sorted by insertion.
    for (int i = 0; lane + 32 * i < k; ++i) {
      const int c = lane + 32 * i;
      if (c == j || ((visited[i] >> lane) & 1u) != 0) continue;
      float v = row[c];
      int x = c;
#pragma unroll
      for (int s = 0; s < kCandidates; ++s) {
        if (Beats(v, x, value[s], index[s])) {
          const float tv = value[s];
          const int tx = index[s];
          value[s] = v;
          index[s] = x;
          v = tv;
          x = tx;
        }
      }
    }
    // Merge the lanes' lists: kCandidates rounds of a warp argmax over the lists' heads; the
    // winner's lane (cluster % 32) pops its head.
    for (int out = 0; out < kCandidates; ++out) {
      float best = value[0];
      int arg = index[0];
#pragma unroll
      for (int offset = 16; offset >= 1; offset /= 2) {
        const float v = __shfl_xor_sync(kAll, best, offset);
        const int i = __shfl_xor_sync(kAll, arg, offset);
        if (Beats(v, i, best, arg)) {
          best = v;
          arg = i;
        }
      }
      if (lane == 0) candidates[j][out] = static_cast<int16_t>(arg);
      if (arg >= 0 && arg % 32 == lane) {
#pragma unroll
        for (int s = 0; s + 1 < kCandidates; ++s) {
          value[s] = value[s + 1];
          index[s] = index[s + 1];
        }
        value[kCandidates - 1] = -INFINITY;
        index[kCandidates - 1] = -1;
      }
    }
  }
  __syncthreads();
  if (warp != 0) return;

  int32_t* chain_start = Array<int32_t>(a, segment, a.layout.chain_start);
  int32_t* output_id = Array<int32_t>(a, segment, a.layout.output_id);
  const uint32_t alive = ~visited[lane];
  const int remaining = __reduce_add_sync(kAll, __popc(alive));
  int current = __reduce_min_sync(kAll, alive ? lane * 32 + __ffs(alive) - 1 : INT_MAX);
  int offset = 0;
  for (int r = 0; r < remaining; ++r) {
    if (lane == 0) {
      chain_start[current] = offset;
      output_id[current] = r;
      visited[current / 32] |= 1u << (current % 32);
    }
    offset += sizes[current];
    __syncwarp();
    if (r + 1 == remaining) break;
    const int listed = lane < kCandidates ? candidates[current][lane] : -1;
    const bool open = listed >= 0 && ((visited[listed / 32] >> (listed % 32)) & 1u) == 0;
    const uint32_t hits = __ballot_sync(kAll, open);
    int next = -1;
    if (hits != 0) {
      next = __shfl_sync(kAll, listed, __ffs(hits) - 1);
    } else {  // every listed cluster is visited: scan the row
      const float* row = similarity + static_cast<size_t>(current) * a.layout.clusters_pad;
      float best = -INFINITY;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int c = lane + 32 * i;
        if (c < k && ((visited[i] >> lane) & 1u) == 0) {
          const float v = row[c];
          if (next < 0 || v > best) {
            best = v;
            next = c;
          }
        }
      }
#pragma unroll
      for (int off = 16; off >= 1; off /= 2) {
        const float v = __shfl_xor_sync(kAll, best, off);
        const int i = __shfl_xor_sync(kAll, next, off);
        if (Beats(v, i, best, next)) {
          best = v;
          next = i;
        }
      }
    }
    if (next < 0) break;  // unreachable: `remaining` counts the unvisited clusters
    current = next;
    __syncwarp();  // this step's reads of visited before the next step's write
  }
  if (lane == 0 && a.num_clusters != nullptr) a.num_clusters[segment] = remaining;
}

__global__ void __launch_bounds__(kTileRows) OutputKernel(Args a) {
  internal::ChainedKernelStart();
  const int segment = blockIdx.y;
  const int t = blockIdx.x * kTileRows + threadIdx.x;
  if (t >= Tokens(a, segment)) return;
  const int c = Array<int32_t>(a, segment, a.layout.assignment)[t];
  const int position = MemberPosition(a, segment, a.layout.chain_start, c, t);
  a.order[segment][position] = t;
  if (a.cluster_of != nullptr) {
    a.cluster_of[segment][t] = Array<int32_t>(a, segment, a.layout.output_id)[c];
  }
}

}  // namespace kvtier::internal::segment_cluster
