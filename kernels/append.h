// Append and write-back: step 1 of ARCHITECTURE.md's decode step.
//
// Append writes each sequence's new token K/V into its recent-window page on the GPU (one
// row per (sequence, KV head)). Write-back copies pages that completed and leave the window
// from the GPU to their host-store frames (pinned memory), for a whole step in one launch.
//
// Ordering (the caller's, on the device): append runs on the compute stream before
// attention reads the window. Write-back of a page must start after the append that
// completed it (record an event after LaunchAppend, make the copy stream wait on it) and
// finish before the window page is reused for a later token (record an event after
// LaunchWriteBack; the page's next writer waits on it). Host code may read a written frame
// only after that event completed. Neither launcher allocates or synchronises with the
// host, so both can be captured in a CUDA graph.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

struct AppendParams {
  DType dtype = DType::kBF16;  // of K and V: bf16 or fp16
  int32_t batch = 0;           // sequences
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;   // the kernel supports 64, 128 and 256 (dispatch.cuh)
  int32_t page_size = 0;  // tokens per page
  // [batch, num_kv_heads, head_dim] the new token of each sequence, contiguous, 16-byte
  // aligned; device memory for the kernel.
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  // [batch * num_kv_heads] window page of (sequence b, KV head h) at entry
  // b * num_kv_heads + h: [page_size, head_dim] contiguous, 16-byte aligned. For the kernel
  // the arrays and pages are in device memory.
  void* const* k_pages = nullptr;
  void* const* v_pages = nullptr;
  // [batch] the row of sequence b's window pages that receives the token (its position
  // modulo page_size), in [0, page_size).
  const int32_t* rows = nullptr;
};

struct WriteBackParams {
  // Entries of the step's write-back list. The list may be a fixed capacity (e.g. one entry
  // per (sequence, KV head)): entries whose k_dst is null are skipped, so the launch shape
  // need not change from step to step.
  int32_t num_pages = 0;
  int64_t page_bytes = 0;  // of one K or one V page, a positive multiple of 16
  // [num_pages] source pages (the window pages on the GPU) and destination pages (the
  // host-store frame's K and V pages, as device-visible addresses of pinned memory:
  // PinnedBuffer::device_data() plus the page's offset). 16-byte aligned; destinations do
  // not overlap. For the kernel the arrays are in device memory.
  const void* const* k_src = nullptr;
  const void* const* v_src = nullptr;
  void* const* k_dst = nullptr;  // a null entry skips the entry (K and V)
  void* const* v_dst = nullptr;
};

namespace internal {
// Checks shared by launchers and twins (sizes, dtype, pointer presence and the alignment of
// what the host can see). InvalidArgument names the field.
absl::Status ValidateAppendShape(const AppendParams& params);
absl::Status ValidateWriteBackShape(const WriteBackParams& params);
}  // namespace internal

// Host twins (host memory). They also check the arrays' contents (rows in range, non-null
// pages) and return InvalidArgument before writing anything.
absl::Status ReferenceAppend(const AppendParams& params);
absl::Status ReferenceWriteBack(const WriteBackParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch for the whole batch. Rows outside [0, page_size) are skipped (contract
// violation, not checked on the host). InvalidArgument for bad shapes, Unimplemented for a
// head_dim the kernel is not built for.
absl::Status LaunchAppend(const AppendParams& params, cudaStream_t stream);
// One launch for every page of the step's list; the kernel stores straight into pinned host
// memory (see append.cu for why). Run it on a copy stream so it overlaps attention.
absl::Status LaunchWriteBack(const WriteBackParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
