// Paged partial decode attention and the merge of partial results: the parameters shared by
// the CUDA kernels and their host twins (reference_attention.h), and the CUDA launchers.
// Framework-free: raw pointers, shapes, no runtime headers.
//
// A batch is a list of work items, one per (sequence, KV head). Item i attends its G query
// heads (the GQA group of that KV head) over the tokens stored in its pages, in page order.
// A page is `page_size x head_dim` contiguous elements; the K and V of a token sit at the
// same row of the item's K page and V page.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "absl/status/statusor.h"
#endif

namespace kvtier {

// Every pointer below (and every entry of the pointer arrays) is read by the side that runs
// the call: host memory for the host twin, device memory for the CUDA kernel.
struct PagedDecodeParams {
  DType dtype = DType::kBF16;  // of q, K pages and V pages: bf16 or fp16
  int head_dim = 0;            // D: 64, 128 or 256
  int page_size = 0;           // P: tokens per page (the kernel: 16, 32 or 64)
  int group_size = 0;          // G: query heads per item, >= 1 (the kernel: <= 16)
  float softmax_scale = 0.0f;  // logits are scale * q.k
  int num_items = 0;

  const void* q = nullptr;  // [num_items, G, D] of dtype, contiguous
  // Page pointers of all items, concatenated: item i owns entries
  // [page_offsets[i], page_offsets[i + 1]). Each points at P x D elements of dtype (the
  // kernel: 16-byte aligned). Rows past the last page's tokens are never read.
  const void* const* k_pages = nullptr;
  const void* const* v_pages = nullptr;
  const int32_t* page_offsets = nullptr;  // [num_items + 1], non-decreasing, [0] == 0
  // Tokens in the last page of item i: in [1, P] when the item has pages (earlier pages are
  // full); ignored for an item without pages.
  const int32_t* last_page_tokens = nullptr;  // [num_items]

  DType out_dtype = DType::kFP32;  // of out: fp32, bf16 or fp16
  void* out = nullptr;             // [num_items, G, D]: softmax-weighted sum of V; 0 for no tokens
  float* lse = nullptr;  // [num_items, G]: natural log of sum_t exp(logit_t); -inf for no tokens

  // Optional (nullptr: not written): the log-sum-exp of every 16-token chunk of every page
  // entry, [page_offsets[num_items] * (P / 16), G] fp32; P must be a multiple of 16 (the
  // kernel's 16, 32, 64 are). Chunk c in [0, P / 16) of page entry e (a global index into
  // k_pages) covers rows [16 c, 16 c + 16) of that page; row e * (P / 16) + c holds, per query
  // head g, the natural log of sum over the chunk's tokens of exp(logit); -inf for a chunk
  // without tokens (past the last token of its item's last page). Every chunk of every page
  // entry of every item is written, whatever the split count. exp(chunk_lse - lse) is the
  // attention mass of the chunk; the rows of one page entry merge (log-sum-exp) to the page's.
  float* chunk_lse = nullptr;
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
  DType out_dtype = DType::kFP32;          // of out: fp32, bf16 or fp16
  void* out = nullptr;                     // [num_rows, D]; may alias no input
  float* lse = nullptr;                    // [num_rows]
};

// ---- CUDA launchers ---------------------------------------------------------------------
//
// Split-K: LaunchPagedDecodeAttention cuts each item's token list into `num_splits` equal
// runs of whole 16-token chunks, one thread block each, and merges the runs by log-sum-exp
// in a second kernel. The split count is a host-side choice made from shapes only (no device
// data is read), so a decode step can be captured in a CUDA graph: pick it once per batch
// shape with ChoosePagedDecodeSplits, size the workspace with PagedDecodeWorkspaceBytes when
// the cache is created, and launch every step.

// Largest num_splits a launch accepts.
inline constexpr int kMaxPagedDecodeSplits = 256;

// Workspace bytes LaunchPagedDecodeAttention needs for `num_splits` splits (0 for one split):
// fp32 partial outputs and log-sum-exps of every split, each array 256-byte aligned. The
// same size serves every smaller split count.
inline size_t PagedDecodeWorkspaceBytes(int num_items, int group_size, int head_dim,
                                        int num_splits) {
  if (num_splits <= 1 || num_items <= 0 || group_size <= 0 || head_dim <= 0) return 0;
  auto aligned = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const size_t rows = static_cast<size_t>(num_items) * static_cast<size_t>(group_size) *
                      static_cast<size_t>(num_splits);
  return aligned(rows * static_cast<size_t>(head_dim) * sizeof(float)) +
         aligned(rows * sizeof(float));
}

#ifdef KVTIER_WITH_CUDA

// The split count for a batch of `params.num_items` items of at most `max_tokens_per_item`
// tokens each (host fields of `params` only: num_items, head_dim, dtype): enough thread
// blocks to fill the current device in whole waves, while each split keeps at least 256
// tokens; at most `max_splits` (clamped to [1, kMaxPagedDecodeSplits]). Reads device
// attributes (SM count, occupancy), never device memory; the result depends only on the
// arguments and the device. InvalidArgument for negative sizes.
absl::StatusOr<int> ChoosePagedDecodeSplits(const PagedDecodeParams& params,
                                            int64_t max_tokens_per_item, int max_splits);

// Launches paged decode attention for every item of `params` on `stream` (fp32 accumulation,
// probabilities rounded to the K/V dtype for the P.V product, as in FlashAttention).
// `num_splits` in [1, kMaxPagedDecodeSplits]; for num_splits > 1, `workspace` is device
// memory of at least PagedDecodeWorkspaceBytes(num_items, group_size, head_dim, num_splits)
// bytes, 16-byte aligned, not used by anything else until the launch completes (it may be
// null for one split). Allocates nothing and never synchronises.
// The pointer arrays, q, out, lse and chunk_lse are device memory; their contents are the
// caller's contract (page_offsets non-decreasing, last_page_tokens in [1, P]) and are not
// checked. With chunk_lse set the kernel costs a few extra instructions per chunk and G
// floats written per chunk; without it, it runs the code it ran before chunk_lse existed.
// OK: launched. InvalidArgument (nothing launched): a host-visible field is out of range or
// a needed pointer is null, or the workspace is too small. Unimplemented: a head_dim, page
// size, group size or dtype the kernel does not support (see PagedDecodeParams).
// num_items == 0 launches nothing.
absl::Status LaunchPagedDecodeAttention(const PagedDecodeParams& params, int num_splits,
                                        void* workspace, size_t workspace_bytes,
                                        cudaStream_t stream);

// Launches the exact merge of `params` on `stream` (fp32, same -inf and NaN rules as the
// twin). part_out / part_lse are arrays in device memory of device pointers; outputs must not
// alias inputs (not checked on the device). InvalidArgument on non-positive sizes or null
// pointers, Unimplemented for an unknown out_dtype. Allocates nothing.
absl::Status LaunchMergePartials(const MergeParams& params, cudaStream_t stream);

namespace internal {
// The split-K reduction: merges `num_parts` partial sets stored back to back
// (part_out[j * num_rows * head_dim ...], part_lse[j * num_rows ...], device memory) into
// out (out_dtype) and lse.
absl::Status LaunchMergeStridedPartials(const float* part_out, const float* part_lse, int num_parts,
                                        int num_rows, int head_dim, DType out_dtype, void* out,
                                        float* lse, cudaStream_t stream);
}  // namespace internal

#endif  // KVTIER_WITH_CUDA

}  // namespace kvtier
