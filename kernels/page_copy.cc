// Host twin of the batched page copy (page_copy.cu) and the parameter checks both share.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/page_copy.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace internal {

// Checks what the host can check without reading the pointer arrays: sizes, non-null and
// aligned arrays. Declared in page_copy.h; LaunchPageCopy (page_copy.cu) uses it too.
absl::Status ValidatePageCopyShape(const PageCopyParams& params) {
  if (params.num_pages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page copy: num_pages is ", params.num_pages, ", expected >= 0"));
  }
  if (params.page_bytes <= 0 || params.page_bytes % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("page copy: page_bytes is ", params.page_bytes,
                                                   ", expected a positive multiple of 16"));
  }
  if (params.num_pages == 0) return absl::OkStatus();
  if (params.num_pages > std::numeric_limits<int64_t>::max() / params.page_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("page copy: ", params.num_pages, " pages of ",
                                                   params.page_bytes,
                                                   " bytes overflow a 64-bit byte count"));
  }
  if (params.src == nullptr || params.dst == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("page copy: ", params.src == nullptr ? "src" : "dst",
                     " pointer array is null for ", params.num_pages, " pages"));
  }
  if (reinterpret_cast<uintptr_t>(params.src) % alignof(void*) != 0 ||
      reinterpret_cast<uintptr_t>(params.dst) % alignof(void*) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page copy: the src and dst pointer arrays must be aligned to ", alignof(void*), " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferencePageCopy(const PageCopyParams& params) {
  if (absl::Status status = internal::ValidatePageCopyShape(params); !status.ok()) {
    return status;
  }
  // The twin can read the page addresses: check all of them before writing anything, so a
  // bad entry leaves every destination as it was.
  for (int64_t i = 0; i < params.num_pages; ++i) {
    const uintptr_t src = reinterpret_cast<uintptr_t>(params.src[i]);
    const uintptr_t dst = reinterpret_cast<uintptr_t>(params.dst[i]);
    if (src == 0 || dst == 0 || src % 16 != 0 || dst % 16 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("page copy: page ", i, " has src 0x", absl::Hex(src), " and dst 0x",
                       absl::Hex(dst), ", expected non-null 16-byte aligned addresses"));
    }
  }
  const size_t page_bytes = static_cast<size_t>(params.page_bytes);
  auto copy_range = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) std::memcpy(params.dst[i], params.src[i], page_bytes);
  };
  // Small batches stay on the calling thread; large ones spread over oneTBB's workers
  // (about 1 MiB a task).
  constexpr int64_t kBytesPerTask = int64_t{1} << 20;
  const int64_t pages_per_task = std::max<int64_t>(1, kBytesPerTask / params.page_bytes);
  if (params.num_pages <= pages_per_task) {
    copy_range(0, params.num_pages);
  } else {
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, params.num_pages, pages_per_task),
        [&](const tbb::blocked_range<int64_t>& r) { copy_range(r.begin(), r.end()); });
  }
  return absl::OkStatus();
}

}  // namespace kvtier
