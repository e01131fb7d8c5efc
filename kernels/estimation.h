// Estimation: partial attention over cluster summaries (the clustered index's estimation
// zone). A cluster with mean key c, mean value m and token count n stands for n tokens whose
// keys all equal c: it adds n e^{scale q.c} to the softmax denominator and n e^{scale q.c} m
// to the numerator, without its pages being read. The result is a partial attention result,
// (out, lse), that merges exactly with PagedDecodeParams' results (decode_attention.h) over
// disjoint token sets: for every query row
//   lse = log(sum_c n_c e^{l_c}),  out = sum_c n_c e^{l_c} m_c / sum_c n_c e^{l_c},
//   l_c = scale q.c
// so that a cluster of one token (n = 1, c = its key, m = its value) contributes exactly what
// attention over that token does.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

// The share of the Gaussian spread correction applied. Independent channels ignore their
// correlations, which in trained keys mostly overstates Var(q.k). Measured with the split
// centroids (kvtier-accuracy, host, 2% retrieval + 50% estimation): 0.75 gives every dev
// learned-attention dump 0.1-1 point less output error than 0.5 (prose_dev_L1 25.1% against
// 25.2%, prose_dev_L7 4.8% against 5.0%) but the synthetic workload at 32K 1.52% against
// 1.06%; 1 is lower still on six dumps but takes prose_dev_L7 to 5.5%; 0.25 is worse on every
// dump. Half is kept until a fit on more dumps decides.
inline constexpr float kSpreadWeight = 0.5f;

struct EstimationParams {
  DType dtype = DType::kBF16;  // of q and key_mean: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int group_size = 0;          // G: query heads per item, >= 1
  float softmax_scale = 0.0f;  // logits are scale * q.c; finite
  int num_items = 0;           // >= 0; 0 launches nothing
  // Centroids a cluster, 1 or 2 (block_summary.h's split centroid): each part is a cluster
  // of its own above (its count, mean key and mean value).
  int centroid_parts = 1;

  const void* q = nullptr;  // [num_items, G, D] of dtype, contiguous
  // The clusters item i estimates: cluster_ids[cluster_offsets[i] .. cluster_offsets[i + 1])
  // index item i's summary arrays (layout of block_summary.h's centroid). A cluster listed
  // twice counts twice. Clusters with count <= 0 contribute nothing.
  const int32_t* cluster_offsets = nullptr;  // [num_items + 1], non-decreasing, [0] == 0
  const int32_t* cluster_ids = nullptr;      // [cluster_offsets[num_items]], each >= 0
  // Fixed-stride lists instead (list_count set): item i's clusters are cluster_ids[i *
  // list_stride .. i * list_stride + list_count[i]); cluster_offsets is then unused.
  // list_count in [0, list_stride] (the kernel clamps it).
  const int32_t* list_count = nullptr;  // [num_items]
  int32_t list_stride = 0;              // >= 1 with list_count
  // Or ranges (range_begin set): item i's clusters are its clusters [range_begin[i],
  // range_end[i]), every one (an index's whole candidate range, say); cluster_ids,
  // cluster_offsets and list_count are then unused. The kernels clamp begin to >= 0 and end
  // to >= begin; the twin checks 0 <= begin <= end.
  const int32_t* range_begin = nullptr;  // [num_items]
  const int32_t* range_end = nullptr;    // [num_items]
  // Optional exclusion: a cluster of item i that is also in exclude_ids[i * exclude_stride ..
  // i * exclude_stride + exclude_count[i]) (ascending) is skipped. An estimation zone taken as
  // the top k + e blocks excludes the top k, which are attended exactly.
  const int32_t* exclude_ids = nullptr;     // [num_items, exclude_stride]
  const int32_t* exclude_count = nullptr;   // [num_items], in [0, exclude_stride]
  int32_t exclude_stride = 0;               // >= 1 with exclude_ids
  const void* const* key_mean = nullptr;    // [num_items] -> [clusters, parts, D] of dtype
  const void* const* value_mean = nullptr;  // [num_items] -> [clusters, parts, D] of dtype
  const int32_t* const* count = nullptr;    // [num_items] -> [clusters, parts]
  // Optional [num_items] -> [clusters, parts] fp32: each centroid's key spread s, the mean of
  // its per-channel key variances (block_summary.h). With them a cluster's logit becomes
  //   l_c + kSpreadWeight * scale^2 / 2 * |q|^2 * s:
  // with kSpreadWeight = 1, e^{q.k} averaged over keys spread normally and evenly (independent
  // channels, each of variance s) around c, where e^{q.c} underestimates every spread cluster
  // (Jensen).
  const float* const* key_spread = nullptr;
  // Optional [num_items, G, D] fp32, value_shift.h's shift of each query row: a contributing
  // centroid's mean value m counts as m + s * value_shift[row], s its key spread (the values
  // that q's attention favours in a spread cluster). Needs key_spread.
  const float* value_shift = nullptr;
  // Optional: the centroids' logits scale * q.c, already computed by an earlier pass over the
  // same centroids (BlockSelectParams::logits, the zone's scoring): the logit of head h for
  // part `part` of cluster c of item i is logits[(i * G + h) * logit_stride + c * parts +
  // part]. Set, key_mean is not read (it may be null) and the spread term is added as above.
  // Every listed cluster c needs (c + 1) * parts <= logit_stride.
  const float* logits = nullptr;
  int64_t logit_stride = 0;

  // Optional: the (out, lse) of an earlier estimate over a superset of every item's clusters
  // here (an estimate over every candidate, made before the selection that this call lists,
  // say), [num_items, G, D] and [num_items, G]. Set, the call writes that estimate with this
  // call's clusters taken out of its numerator and denominator: the rest. A rest below
  // kRestFloor of the superset's denominator counts as empty (what is left there is rounding).
  // NaN in either estimate's lse makes the row NaN; a NaN channel stays NaN. Must not alias
  // out or lse.
  const float* superset_out = nullptr;
  const float* superset_lse = nullptr;

  float* out = nullptr;  // [num_items, G, D]; 0 for a row without contributing clusters
  float* lse = nullptr;  // [num_items, G]; -inf for a row without contributing clusters

  // Optional backend scratch (the CUDA launcher's; the twin ignores it): with
  // EstimationWorkspaceBytes(num_items, group_size, head_dim) bytes, 16-byte aligned, long
  // lists are cut into runs estimated by thread blocks of their own and merged by log-sum-exp;
  // without it each item's list is one block's. The results are the same up to rounding.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// EstimationParams::superset_out: the smallest share of the superset's denominator that a rest
// keeps (2^-16; fp32 sums over thousands of clusters round to about 2^-20 of them).
inline constexpr float kRestFloor = 0x1p-16f;

// The most runs an item's list is cut into (the CUDA launcher's choice, from the batch's shape).
inline constexpr int kMaxEstimationSplits = 16;

// Workspace bytes that let a launch of up to num_items items cut its lists into runs: fp32
// partial outputs and log-sum-exps of every run, each array 256-byte aligned.
inline size_t EstimationWorkspaceBytes(int num_items, int group_size, int head_dim) {
  if (num_items <= 0 || group_size <= 0 || head_dim <= 0) return 0;
  auto aligned = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const size_t rows = size_t{kMaxEstimationSplits} * static_cast<size_t>(num_items) *
                      static_cast<size_t>(group_size);
  return aligned(rows * static_cast<size_t>(head_dim) * 4) + aligned(rows * 4);
}

namespace internal {
// Checks of sizes and pointers that need no per-item data, shared by launcher and twin.
absl::Status ValidateEstimationShape(const EstimationParams& params);
}  // namespace internal

// Host twin, in double precision (results rounded to float once). Checks cluster_offsets
// (first 0, non-decreasing), cluster ids (>= 0) and the per-item pointers of items with
// clusters before writing anything: InvalidArgument naming the field. NaN in q, a mean key or
// a mean value propagates to the row (or column) it touches.
absl::Status ReferenceEstimation(const EstimationParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch for the batch on `stream` (a second, the merge of the runs, with a workspace): a
// thread block per item, group of query heads and run of the item's list. The block streams
// its run in tiles of clusters through shared memory; per tile its threads take the logits a
// head and half of the channels each, fold them into an online softmax per head, and add the
// weighted mean values a channel pair each. The run count fills the GPU's block slots at least
// twice in nearly full waves. Per-item data is not read on the host; summary arrays that are
// 16-byte aligned are copied in 16-byte pieces (else 4-byte ones). InvalidArgument on bad
// sizes or a workspace too small; Unimplemented for an unsupported dtype or head_dim.
absl::Status LaunchEstimation(const EstimationParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
