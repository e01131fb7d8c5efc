// Block summaries: what an index keeps on the GPU per page to score it against a query, and
// the kernel that (re)writes them as pages fill. Framework-free: raw pointers, shapes.
//
// Two summaries, each of one page of one (sequence, layer, KV head), head_dim D:
//  - page bounds (Quest): 2 * D elements of the KV dtype, [0, D) the per-channel maximum of
//    the page's keys and [D, 2D) the per-channel minimum. An item's bounds are stored block
//    after block, [num_blocks, 2, D]: one 16-byte load of the max row and one of the min row
//    give a scoring thread both bounds of 8 channels. Minima and maxima of bf16/fp16 values
//    are bf16/fp16 values: the summary is exact in the KV dtype.
//  - centroid (clustered indexes, estimation): the mean key and the mean value (D elements
//    of the KV dtype each, rounded once from an fp32 mean) and the token count (int32). An
//    item's centroids are three arrays: key_mean [num_blocks, D], value_mean [num_blocks, D],
//    count [num_blocks]. A cluster of many pages has the same form. (The value mean in the KV
//    dtype rather than an fp32 sum: the estimation zone reads it for every zone page, and it
//    was 1024 of the 1060 bytes a two-part page cost there; its rounding is the values' own.)
//  - split centroid (centroid_parts = 2): the page's tokens split in two parts by 2-means,
//    each part a centroid as above: key_mean [num_blocks, 2, D], value_mean
//    [num_blocks, 2, D], count [num_blocks, 2]. A page whose keys form two groups (it
//    straddles two clusters) or one outlier (a needle among its neighbours) keeps both: the
//    mass n1 e^{q.c1} + n2 e^{q.c2} sees what a single mean averages away.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

// Recomputes the summaries of a batch of pages from their first `tokens[j]` tokens. Called
// after an append for the page that received the token (its summary then covers the tokens so
// far), or once when a page fills and leaves the window: rewriting from the page is
// idempotent and costs one read of the page (4 KiB at D = 128, bf16).
//
// The result is fully defined, so the host twin and the kernel agree bit for bit: per
// channel, max/min over the tokens in token order (a NaN key element makes that channel's
// max and min NaN); the key sum and the value sum are fp32 additions in token order starting
// from the first token; key_mean = key sum / count and value_mean = value sum / count (IEEE
// division), rounded to the dtype to nearest even. A page with 0 tokens gets max -inf, min
// +inf, key_mean 0, value_mean 0, count 0.
//
// The split (centroid_parts = 2), in fp32 with one rounding per operation, identical on both
// sides: dist(t, c) = sum over channel groups w = 0, 1, ... of the 32 channels [32w, 32w + 32)
// (in group order, starting from group 0) of the xor butterfly (offsets 16, 8, 4, 2, 1) of
// (k_t,i - c_i)^2. m = the mean key; a = the token farthest from m (ties: the lowest token);
// c0 = k_a, c1 = the mean of every other token; then kSplitIterations times:
// token t joins part 1 when dist(t, c1) < dist(t, c0), else part 0, and each non-empty part's
// centroid becomes its mean (a sum in token order, divided by its count). Part 0 holds seed
// a. A page of fewer than 2 tokens (or of identical keys) has everything in part 0 and an
// empty part 1 (key_mean 0, value_mean 0, count 0).
inline constexpr int kSplitIterations = 4;
inline constexpr int kMaxSplitPageSize = 64;  // the split takes pages of at most 64 tokens
inline constexpr int kMaxCentroidParts = 2;

struct PageSummaryParams {
  DType dtype = DType::kBF16;  // of the K/V pages and the dtype-typed summaries: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int page_size = 0;           // P: tokens per page, >= 1
  int num_pages = 0;           // >= 0; 0 launches nothing
  int centroid_parts = 1;      // 1: one centroid a page; 2: the split centroid (key_mean set)

  // Pointer arrays, [num_pages] each (device memory for the kernel); entry j describes page j.
  const void* const* k_pages = nullptr;  // P x D of dtype: the keys
  const void* const* v_pages = nullptr;  // P x D of dtype; read only when value_mean is set
  const int32_t* tokens = nullptr;       // [num_pages] filled tokens, in [0, P]
  // Destinations; a null array skips that summary. At least one of bounds / key_mean is set.
  void* const* bounds = nullptr;      // -> 2 * D of dtype: max row, then min row
  void* const* key_mean = nullptr;    // -> parts * D of dtype
  void* const* value_mean = nullptr;  // -> parts * D of dtype; needs key_mean (centroid whole)
  int32_t* const* count = nullptr;    // -> parts int32; needs key_mean
  // -> parts fp32: each part's key spread, the mean over the channels of the per-channel key
  // variance (0 for an empty part); needs key_mean. Per channel: the sum over the part's tokens
  // (token order) of (k - mean)^2 with the fp32 mean, / count; over the channels: each 32
  // channels' xor butterfly (offsets 16, 8, .. 1), the groups added in order, / D. Estimation
  // uses it to correct e^{q.c} for the spread of q.k around q.c (estimation.h). One scalar a
  // part rather than D channels: on the dev dumps it estimates as well (output error within
  // 0.002), on the synthetic workload better, at 1/D of the bytes.
  float* const* key_spread = nullptr;
};

namespace internal {
// Checks of the sizes and the pointer arrays' presence, shared by launcher and twin.
absl::Status ValidatePageSummaryShape(const PageSummaryParams& params);
}  // namespace internal

// Host twin. Also checks every entry in use (non-null page and destination pointers, tokens in
// [0, P]) before writing anything. InvalidArgument naming the field otherwise.
absl::Status ReferencePageSummaries(const PageSummaryParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch for the batch on `stream`. Entries are not read on the host: tokens outside
// [0, P] are clamped into it on the device. InvalidArgument on bad sizes; Unimplemented for
// an unsupported dtype or head_dim.
absl::Status LaunchPageSummaries(const PageSummaryParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
