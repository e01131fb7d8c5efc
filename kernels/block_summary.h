// Block summaries: what an index keeps on the GPU per page to score it against a query, and
// the kernel that (re)writes them as pages fill. Framework-free: raw pointers, shapes.
//
// Two summaries, each of one page of one (sequence, layer, KV head), head_dim D:
//  - page bounds (Quest): 2 * D elements of the KV dtype, [0, D) the per-channel maximum of
//    the page's keys and [D, 2D) the per-channel minimum. An item's bounds are stored block
//    after block, [num_blocks, 2, D]: one 16-byte load of the max row and one of the min row
//    give a scoring thread both bounds of 8 channels. Minima and maxima of bf16/fp16 values
//    are bf16/fp16 values: the summary is exact in the KV dtype.
//  - centroid (clustered indexes, estimation): the mean key (D elements of the KV dtype,
//    rounded once from an fp32 mean), the value sum (D floats) and the token count (int32).
//    An item's centroids are three arrays: key_mean [num_blocks, D], value_sum
//    [num_blocks, D], count [num_blocks]. A cluster of many pages has the same form.
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
// from the first token; key_mean = key sum / count (IEEE division), rounded to the dtype to
// nearest even. A page with 0 tokens gets max -inf, min +inf, key_mean 0, value_sum 0,
// count 0.
struct PageSummaryParams {
  DType dtype = DType::kBF16;  // of the K/V pages and the dtype-typed summaries: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int page_size = 0;           // P: tokens per page, >= 1
  int num_pages = 0;           // >= 0; 0 launches nothing

  // Pointer arrays, [num_pages] each (device memory for the kernel); entry j describes page j.
  const void* const* k_pages = nullptr;  // P x D of dtype: the keys
  const void* const* v_pages = nullptr;  // P x D of dtype; read only when value_sum is set
  const int32_t* tokens = nullptr;       // [num_pages] filled tokens, in [0, P]
  // Destinations; a null array skips that summary. At least one of bounds / key_mean is set.
  void* const* bounds = nullptr;      // -> 2 * D of dtype: max row, then min row
  void* const* key_mean = nullptr;    // -> D of dtype
  float* const* value_sum = nullptr;  // -> D floats; needs key_mean (centroid as a whole)
  int32_t* const* count = nullptr;    // -> 1 int32; needs key_mean
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
