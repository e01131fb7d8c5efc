// The value shift: what the estimation zone adds to a cluster's mean value for the query.
//
// A cluster estimated by its mean key c and mean value m stands for tokens whose keys spread
// around c. Attention weights those tokens by e^{scale q.k}, so the values it averages are not
// m but the values of the keys that q favours: if a cluster's keys and values are jointly
// Gaussian with cross-covariance C_c = Cov(v, k), tilting by e^{scale q.k} moves the mean value
// to m + scale C_c q. Per cluster C_c is not kept (D x D a cluster); the estimate takes C_c as
// one pooled cross-covariance per (sequence, layer, KV head), C, scaled by the cluster's key
// spread s_c relative to the pooled one s:
//   value_c = m_c + s_c * shift,   shift = scale * C q / s.
// On the learned-attention dumps (scripts/zone_estimate_study.py) this takes prose_dev_L1's
// output error at 2% retrieval from 24% to 16% and code_dev_L4's from 13.5% to 9-11%; a
// correction with C = s I (isotropic) is worse than none.
//
// Two kernels, each with its host twin:
//  - ValueKeyCovariance accumulates an item's statistics from its complete pages as they are
//    summarised (block_summary.h: the page's part means), into ValueKeyStats.
//  - ValueShift turns an item's statistics and the step's query group into the shift
//    (EstimationParams::value_shift reads it).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

// An item's statistics, fp32, ValueKeyStatsFloats(D) floats, zeroed when the item's sequence
// starts: [D * D] the sum over its counted tokens of dv dk^T (row = value channel, column = key
// channel), dv and dk a token's value and key less its page part's mean value and mean key;
// then the sum of |dk|^2; then the tokens counted.
inline constexpr int64_t ValueKeyStatsFloats(int head_dim) {
  return int64_t{head_dim} * head_dim + 2;
}
inline constexpr int64_t ValueKeyStatsBytes(int head_dim) {
  return ValueKeyStatsFloats(head_dim) * 4;
}

struct ValueKeyCovarianceParams {
  DType dtype = DType::kBF16;  // of the pages and the part means: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int page_size = 0;           // P >= 1
  int num_pages = 0;           // >= 0; 0 launches nothing
  int centroid_parts = 1;      // 1 or 2 (block_summary.h's split centroid)
  // Entries j and j + item_stride usually belong to the same item (prefill's batches list
  // page after page of each KV head: Hk): the kernel adds such runs up before it writes. Any
  // order gives the same sums up to rounding. >= 1.
  int item_stride = 1;

  // [num_pages] each (backend memory), entry j one page:
  const void* const* k_pages = nullptr;  // P x D of dtype
  const void* const* v_pages = nullptr;  // P x D of dtype
  const int32_t* tokens = nullptr;       // filled tokens; only pages with P count
  // The page's summary as block_summary.h wrote it for these tokens: parts x D of dtype each,
  // and parts counts. A token's part is the one whose mean key is nearer (ties and NaN: part
  // 0; part 1 only when its count is > 0), the distance as the kernel sums it: (k_d - c_d)^2
  // in fp32, 16 partial sums (partial l takes channels l, l + 16, ... in order), then an xor
  // butterfly over the 16 (offsets 8, 4, 2, 1).
  const void* const* key_mean = nullptr;
  const void* const* value_mean = nullptr;
  const int32_t* const* count = nullptr;
  // -> the page's item's ValueKeyStats, added to. Null: the page is skipped.
  float* const* stats = nullptr;
};

namespace internal {
absl::Status ValidateValueKeyCovarianceShape(const ValueKeyCovarianceParams& params);
}  // namespace internal

// Adds every complete page (tokens == P) of the batch to its item's statistics. A page that is
// summarised again as it fills counts once, when it completes; a NaN key or value makes its
// item's statistics NaN (and so its shift). Deviations are fp32 (k - c rounded once).
// Host twin: sums in double, added to the statistics once a page. InvalidArgument naming the field
// for bad sizes or a null pointer of a complete page.
absl::Status ReferenceValueKeyCovariance(const ValueKeyCovarianceParams& params);

struct ValueShiftParams {
  DType dtype = DType::kBF16;  // of q: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int group_size = 0;          // G >= 1
  float softmax_scale = 0.0f;  // finite
  int num_items = 0;           // >= 0
  const void* q = nullptr;     // [num_items, G, D] of dtype
  // [num_items] -> the item's ValueKeyStats (null: the item's shift is 0).
  const float* const* stats = nullptr;
  // [num_items, G, D] fp32: scale * D * (sum dv dk^T) q / (sum |dk|^2), which is scale * C q / s
  // with C = the sum / tokens and s = (sum |dk|^2) / (tokens * D); 0 while sum |dk|^2 is not
  // > 0 (no token counted yet, or identical keys).
  float* shift = nullptr;
};

namespace internal {
absl::Status ValidateValueShiftShape(const ValueShiftParams& params);
}  // namespace internal

// Host twin, in double, rounded to float once.
absl::Status ReferenceValueShift(const ValueShiftParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch each on `stream`. The covariance: a thread block per run of 512 tokens' pages of one
// item and 128 x 128 tile of the sum, fp32 FMAs over 16-token tiles in shared memory, added
// into the statistics by atomics once a run (so the sums' rounding order varies). The shift: a
// block per item, a warp per row of C. InvalidArgument on bad sizes; Unimplemented for an
// unsupported dtype or head_dim.
absl::Status LaunchValueKeyCovariance(const ValueKeyCovarianceParams& params, cudaStream_t stream);
absl::Status LaunchValueShift(const ValueShiftParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
