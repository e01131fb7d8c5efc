// Paged partial decode attention: the parameters shared by the CUDA kernel and its host
// twin (reference_attention.h). Framework-free: raw pointers, shapes, no runtime headers.
//
// A batch is a list of work items, one per (sequence, KV head). Item i attends its G query
// heads (the GQA group of that KV head) over the tokens stored in its pages, in page order.
// A page is `page_size x head_dim` contiguous elements; the K and V of a token sit at the
// same row of the item's K page and V page.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.h"

namespace kvtier {

struct PagedDecodeParams {
  DType dtype = DType::kBF16;  // of q, K pages and V pages: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int page_size = 0;           // P: tokens per page
  int group_size = 0;          // G: query heads per item, >= 1
  float softmax_scale = 0.0f;  // logits are scale * q.k
  int num_items = 0;

  const void* q = nullptr;  // [num_items, G, D] of dtype, contiguous
  // Page pointers of all items, concatenated: item i owns entries
  // [page_offsets[i], page_offsets[i + 1]). Each points at P x D elements of dtype.
  const void* const* k_pages = nullptr;
  const void* const* v_pages = nullptr;
  const int32_t* page_offsets = nullptr;  // [num_items + 1], non-decreasing, [0] == 0
  // Tokens in the last page of item i: in [1, P] when the item has pages (earlier pages are
  // full); ignored for an item without pages.
  const int32_t* last_page_tokens = nullptr;  // [num_items]

  float* out = nullptr;  // [num_items, G, D]: softmax-weighted sum of V; 0 for no tokens
  float* lse = nullptr;  // [num_items, G]: natural log of sum_t exp(logit_t); -inf for no tokens
};

// Combines partial attention results over disjoint token sets of the same query rows into
// the result over their union: out = sum_j w_j out_j / sum_j w_j with w_j = exp(lse_j),
// lse = log(sum_j w_j). A part with lse = -inf (no tokens) contributes nothing: its out row
// is not read, so a producer may leave it unwritten.
struct MergeParams {
  int num_parts = 0;
  int num_rows = 0;  // query rows, e.g. num_items * G
  int head_dim = 0;
  const float* const* part_out = nullptr;  // [num_parts] pointers to [num_rows, D]
  const float* const* part_lse = nullptr;  // [num_parts] pointers to [num_rows]
  float* out = nullptr;                    // [num_rows, D]; may alias no input
  float* lse = nullptr;                    // [num_rows]
};

}  // namespace kvtier
