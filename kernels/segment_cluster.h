// Segment clustering for the clustered ("wave") index: spherical k-means of the keys of each
// segment (up to 8192 consecutive tokens of one (sequence, layer, KV head)), about
// tokens_per_cluster tokens a cluster, and the permutation that lays the segment's tokens out
// cluster by cluster. The runtime cuts that order into pages; a page's tokens then share a
// cluster, or come from two neighbouring clusters that are similar.
//
// Algorithm, per segment of n tokens with k = ClusterCount(n, tokens_per_cluster) clusters:
//  1. Unit keys. A token is finite when its D key elements are. With `center`, m is the mean
//     of the finite tokens' keys (0 when none is finite); without it m = 0. The unit key is
//     x_t = (key_t - m) / |key_t - m|, computed in fp32 and rounded to fp16. A token that is
//     not finite (NaN, Inf), or whose centred key has a squared norm that is 0 or not finite in
//     fp32, is degenerate: x_t = 0. Centring matters for real keys: they share a large offset
//     that would otherwise dominate every cosine.
//  2. Initial centroids: c_j = x_{SeedToken(j, n, k)}, evenly spaced tokens, so cluster ids
//     start out following position.
//  3. `iterations` rounds; round r:
//     a. Assignment: every token goes to argmax_j x_t . c_j (ties: lowest j). A degenerate
//        token scores 0 everywhere and lands in cluster 0.
//     b. Update (every round but the last): c_j = fp16(S_j / |S_j|), S_j the fp32 sum of its
//        tokens' x in ascending token order; c_j is kept when S_j = 0 (empty cluster).
//     c. Repair (rounds r < iterations - 2, after b): clusters that lost out to a neighbour
//        are moved to split the largest clusters (FAISS re-seeds empty clusters by splitting
//        big ones; this also undoes the local optimum where two seeds share one true cluster
//        while another centroid covers two). With sizes from a and centroids from b:
//        nearest(j) = argmax_{j' != j} c_j . c_j' (ties: lowest j'); j is small when
//        IsSmallCluster(size_j) and it ranks below its nearest neighbour (smaller size, or
//        equal size and higher index), so of a group of redundant centroids the largest
//        stays; j is large when IsLargeCluster(size_j) and it has a non-degenerate token.
//        Smalls sorted by (size, index) ascending pair with larges sorted by size descending,
//        then index ascending; the i-th small becomes x_f, f the i-th large's non-degenerate
//        token least similar to that large's centroid of step a (ties: lowest token).
//  4. Order: the non-empty clusters form a chain: the lowest-index non-empty cluster first,
//     then repeatedly the unvisited non-empty cluster whose centroid (those of the last
//     assignment) is most similar to the current one's (ties: lowest index). A cluster's
//     rank in the chain is its output id. order lists the tokens sorted by (output id,
//     token index): clusters contiguous, neighbouring clusters similar, tokens ascending in a
//     cluster. Cluster 0 is seeded near the segment's start, so the chain usually begins with
//     the earliest tokens' cluster.
//
// Host twin and kernel. Both follow the steps above with fp16 unit keys and centroids, but
// they do not agree bit for bit: the kernel forms similarities on tensor cores (fp16
// products, fp32 accumulation in the hardware's order), the twin in fp32 in channel order,
// and the mean (double on the host) and norms are rounded differently, so a unit key may
// differ by an fp16 ulp. Near-ties in a step a or in the chain can therefore go either way,
// and later rounds diverge from there. What holds for both: the output is a permutation of
// 0..n-1 of the form above; well-separated clusters are found exactly; the objective (mean
// cosine of the centred unit keys to their cluster's mean direction) agrees within 1% (a
// diverging trajectory moves it by under 0.5% on segments of 500 tokens or more). The
// kernel is deterministic: the same inputs give the same outputs on the same device (no
// floating-point atomics).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

// The largest segment and cluster count the kernels are built for.
inline constexpr int kMaxSegmentTokens = 8192;
inline constexpr int kMaxSegmentClusters = 1024;
inline constexpr int kMaxClusterSegments = 65535;  // segments of one call (a grid dimension)

struct SegmentClusterParams {
  DType dtype = DType::kBF16;  // of the keys: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  // [0, kMaxClusterSegments]; 0 launches nothing. All segments go through one launch sequence.
  int num_segments = 0;
  // Upper bound of every num_tokens entry, in [1, kMaxSegmentTokens]; sizes the workspace and
  // the grids.
  int max_tokens = 0;
  // Average cluster size: a segment of n tokens has ClusterCount(n, tokens_per_cluster)
  // clusters. >= 1, and ClusterCount(max_tokens, .) <= kMaxSegmentClusters.
  int tokens_per_cluster = 16;
  int iterations = 10;  // assignment rounds, [1, 1000]
  bool center = true;   // subtract the segment's mean key before normalising

  // Segment i's token t has its key at keys[i] + t * key_stride elements (D contiguous
  // elements of dtype). Keys arrive as prefill rows [tokens, Hk, D], so a KV head's segment
  // starts at row + head * D with key_stride = Hk * D.
  const void* const* keys = nullptr;    // [num_segments]
  int64_t key_stride = 0;               // elements, >= head_dim
  const int32_t* num_tokens = nullptr;  // [num_segments], each in [0, max_tokens]

  // Outputs, per segment i with n = num_tokens[i] (nothing is written for n = 0):
  int32_t* const* order = nullptr;  // [num_segments] -> [n]: a permutation of 0..n-1 (above)
  // Optional (null: not written): [num_segments] -> [n], the output id of each token's
  // cluster: order[p] has cluster_of[order[p]] non-decreasing in p, ids 0..clusters-1.
  int32_t* const* cluster_of = nullptr;
  // Optional (null: not written): [num_segments], the number of non-empty clusters (0 for an
  // empty segment); ids in cluster_of are below it.
  int32_t* num_clusters = nullptr;

  // Scratch of SegmentClusterWorkspaceBytes(params) bytes (device memory for the kernels,
  // 256-byte aligned), allocated once by the caller; no initialisation needed, garbage
  // afterwards. Calls running concurrently need separate workspaces. The twin ignores it.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Bytes of scratch a launch with these head_dim, num_segments, max_tokens and
// tokens_per_cluster needs: per segment the fp16 unit keys, the fp16 centroids, a
// clusters x clusters similarity matrix and a few int32 arrays; about 3.4 MiB per segment of
// 8192 tokens at D = 128 and 16 tokens a cluster. 0 for invalid sizes (the launch then
// reports what is wrong).
size_t SegmentClusterWorkspaceBytes(const SegmentClusterParams& params);

namespace internal {
// Checks of sizes and pointers that need no per-segment data, shared by launcher and twin.
// InvalidArgument naming the field.
absl::Status ValidateSegmentClusterShape(const SegmentClusterParams& params);

// Where each per-segment array lives in the workspace (shared by the size function and the
// launcher): segment i's arrays start at workspace + i * segment_bytes, each at a 256-byte
// aligned offset below. Row counts are padded: tokens to whole 128-token tiles of the
// assignment kernel, clusters to whole 64-centroid tiles.
struct SegmentClusterLayout {
  int tokens_pad = 0;       // max_tokens rounded up to 128
  int tiles = 0;            // tokens_pad / 128
  int chunks = 0;           // tokens_pad / 64: the mean's partial sums
  int clusters_pad = 0;     // ClusterCount(max_tokens, .) rounded up to 64
  size_t unit_keys = 0;     // [tokens_pad, D] fp16
  size_t centroids = 0;     // [clusters_pad, D] fp16
  size_t similarity = 0;    // [clusters_pad, clusters_pad] fp32 (the chain's)
  size_t tile_counts = 0;   // [tiles, clusters_pad] int32
  size_t mean_sums = 0;     // [chunks, D] fp32
  size_t chunk_finite = 0;  // [chunks] int32
  size_t degenerate = 0;    // [tokens_pad] uint8
  size_t assignment = 0;    // [tokens_pad] int32
  size_t tile_rank = 0;     // [tokens_pad] int32
  size_t members = 0;       // [tokens_pad] int32
  size_t sizes = 0;         // [clusters_pad] int32, and the five arrays below
  size_t starts = 0;
  size_t nearest = 0;
  size_t chain_start = 0;
  size_t output_id = 0;
  size_t farthest = 0;  // [clusters_pad] uint64
  size_t segment_bytes = 0;
};
// The layout for valid sizes (ValidateSegmentClusterShape OK).
SegmentClusterLayout SegmentClusterWorkspaceLayout(const SegmentClusterParams& params);

}  // namespace internal

// Host twin (plain loops, oneTBB-parallel over segments). Additionally checks every
// num_tokens entry (in [0, max_tokens]) and the key and output pointers of non-empty segments
// before writing anything: InvalidArgument naming the field.
absl::Status ReferenceSegmentCluster(const SegmentClusterParams& params);

#ifdef KVTIER_WITH_CUDA
// Clusters every segment on `stream`: a few kernels per round, all segments in each, tensor
// cores for the similarity matrices, no host synchronisation and no allocation
// (CUDA-graph capturable). Per-segment data is not read on the host: a num_tokens entry
// outside [0, max_tokens] is clamped into it on the device. InvalidArgument on bad sizes or a
// workspace that is missing, too small or not 256-byte aligned; Unimplemented for an
// unsupported dtype or head_dim.
absl::Status LaunchSegmentCluster(const SegmentClusterParams& params, cudaStream_t stream);
#endif

// ---- The arithmetic both sides share ------------------------------------------------------
#if defined(__CUDACC__)
#define KVTIER_CLUSTER_HD __host__ __device__ __forceinline__
#else
#define KVTIER_CLUSTER_HD inline
#endif

namespace internal {

// Clusters of a segment of `tokens` tokens: max(1, ceil(tokens / tokens_per_cluster)).
KVTIER_CLUSTER_HD int ClusterCount(int tokens, int tokens_per_cluster) {
  const int k = (tokens + tokens_per_cluster - 1) / tokens_per_cluster;
  return k < 1 ? 1 : k;
}

// The token that seeds cluster j of k: floor((2j + 1) n / (2k)), the middle of the j-th of k
// equal spans; distinct for distinct j since k <= n whenever n >= 1.
KVTIER_CLUSTER_HD int SeedToken(int j, int tokens, int clusters) {
  return static_cast<int>((int64_t{2} * j + 1) * tokens / (int64_t{2} * clusters));
}

// Repair thresholds (step 3c): at most half, at least one and a half times the average size.
KVTIER_CLUSTER_HD bool IsSmallCluster(int size, int tokens_per_cluster) {
  return 2 * size <= tokens_per_cluster;
}
KVTIER_CLUSTER_HD bool IsLargeCluster(int size, int tokens_per_cluster) {
  return 2 * size >= 3 * tokens_per_cluster;
}

// Whether cluster a (of size_a tokens) ranks below cluster b: smaller, or as large and of
// higher index.
KVTIER_CLUSTER_HD bool RanksBelow(int size_a, int a, int size_b, int b) {
  return size_a < size_b || (size_a == size_b && a > b);
}

}  // namespace internal
}  // namespace kvtier
