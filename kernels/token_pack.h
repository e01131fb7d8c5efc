// Token pack: writes a run of one sequence's consecutive tokens into its pages (prefill). The
// engine hands a layer's prompt K/V as [tokens, KV heads, D] rows; pages hold P tokens of one
// KV head, so each token's H rows scatter to H pages. The first page of the run may already
// hold earlier tokens of the sequence (a prompt appended in pieces, or after decode steps):
// only the rows of the run's tokens are written, so those earlier rows are kept.
//
// Neither launcher allocates nor synchronises with the host: a launch can be captured in a
// CUDA graph. Ordering is the caller's: whatever reads the pages (attention, write-back)
// runs after the pack on the same stream or waits on an event recorded after it.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

struct TokenPackParams {
  DType dtype = DType::kBF16;  // of K, V and the pages: bf16 or fp16
  int32_t num_kv_heads = 0;    // H, >= 1
  // D: the kernel supports 64, 128 and 256 (dispatch.cuh); the twin any D whose rows are a
  // multiple of 16 bytes.
  int32_t head_dim = 0;
  int32_t page_size = 0;       // P: tokens per page, >= 1 (any value)
  int32_t num_tokens = 0;      // >= 0; 0 writes nothing and reads no pointer
  int64_t first_position = 0;  // sequence position of token 0, >= 0
  // [num_tokens, num_kv_heads, head_dim] of dtype, contiguous, 16-byte aligned (for the
  // kernel in device memory).
  const void* k = nullptr;
  const void* v = nullptr;
  // Destination pages: page p = (first_position + t) / P - first_position / P (relative) of
  // KV head h is entry p * num_kv_heads + h; [num_pages * num_kv_heads] with
  // num_pages = (first_position + num_tokens - 1) / P - first_position / P + 1 (see
  // TokenPackPages). Token t goes to row (first_position + t) % P of its page. Rows outside
  // the tokens are not written. Each page is P x D elements of dtype, 16-byte aligned; pages
  // do not overlap each other or k / v. For the kernel the arrays and pages are in device
  // memory.
  void* const* k_pages = nullptr;
  void* const* v_pages = nullptr;
};

// Pages a run touches per KV head: num_pages above (0 for no tokens). Entries of k_pages /
// v_pages: TokenPackPages(...) * num_kv_heads.
inline int64_t TokenPackPages(int64_t first_position, int64_t num_tokens, int64_t page_size) {
  if (num_tokens <= 0 || page_size <= 0) return 0;
  return (first_position + num_tokens - 1) / page_size - first_position / page_size + 1;
}

namespace internal {
// Checks shared by the launcher and the twin: dtype, sizes, first_position, the presence of
// every array and the alignment of k / v. InvalidArgument names the field.
absl::Status ValidateTokenPackShape(const TokenPackParams& params);
}  // namespace internal

// Host twin (host memory). Also checks every page entry (non-null, 16-byte aligned) and
// returns InvalidArgument naming the entry before writing anything.
absl::Status ReferenceTokenPack(const TokenPackParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch for the whole run (K and V): 16-byte loads and stores, each warp's loads
// contiguous in k / v and its stores whole rows of pages. Page entries are the caller's
// contract and are not read on the host. InvalidArgument for bad shapes, Unimplemented for
// a head_dim the kernel is not built for. num_tokens == 0 launches nothing.
absl::Status LaunchTokenPack(const TokenPackParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
