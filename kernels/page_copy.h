// Batched page copy: one launch moves a list of pages, each from its own source address to
// its own destination address. With sources in pinned host memory this is the zero-copy
// page load (the GPU reads host memory directly over PCIe with 16-byte loads): one kernel
// for a whole batch's misses instead of one cudaMemcpy per page.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

struct PageCopyParams {
  // [num_pages] source and destination addresses, both readable by the executing side:
  // for the kernel the arrays themselves live in device memory and every address is
  // device-accessible (device memory, or pinned host memory mapped into the device's
  // address space). Addresses are 16-byte aligned; pages do not overlap.
  const void* const* src = nullptr;
  void* const* dst = nullptr;
  int64_t num_pages = 0;
  int64_t page_bytes = 0;  // a positive multiple of 16
};

namespace internal {
// Checks shared by the launcher and the host twin: sizes and the pointer arrays' presence.
absl::Status ValidatePageCopyShape(const PageCopyParams& params);
}  // namespace internal

// Host twin: copies every page with memcpy. InvalidArgument on bad parameters.
absl::Status ReferencePageCopy(const PageCopyParams& params);

#ifdef KVTIER_WITH_CUDA
// Launches the copy on `stream` (never the default stream is assumed; any stream works).
// InvalidArgument for bad sizes or misaligned pages (alignment of the pointer arrays'
// contents is the caller's contract, it is not read on the host).
absl::Status LaunchPageCopy(const PageCopyParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
