// Miss load: step 4 of ARCHITECTURE.md's decode step. One launch copies every miss of a
// batch, as the page-cache resolve (cache_resolve.h) wrote them, from the host store's
// pinned pages into their GPU cache slots. The GPU reads host memory directly (zero-copy,
// 16-byte loads) and takes the miss counts from device memory, so the number of misses
// never travels to the host and the launch can be captured in a CUDA graph.
//
// Addressing. Item i (one (sequence, layer, KV head) cache) has a page table: the host K and
// V page addresses of its pages, entries [page_table_offset[i], page_table_offset[i] +
// max_pages) of `host_k_pages` / `host_v_pages`, indexed by page number. Its slots are
// `page_bytes` apart from `slot_k_base[i]` and `slot_v_base[i]`.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

struct MissLoadParams {
  int32_t num_items = 0;
  int32_t max_misses = 0;  // row stride of miss_pages / miss_slots (the resolve's max_selected)
  int64_t page_bytes = 0;  // of one K or one V page: a positive multiple of 16
  // From the resolve: [num_items, max_misses] page numbers and slots, the first
  // miss_count[i] entries of row i valid; [num_items] counts.
  const int32_t* miss_pages = nullptr;
  const int32_t* miss_slots = nullptr;
  const int32_t* miss_count = nullptr;
  // Page tables: host page addresses readable by the executing side (for the kernel,
  // PinnedBuffer::device_data() addresses), 16-byte aligned.
  const void* const* host_k_pages = nullptr;
  const void* const* host_v_pages = nullptr;
  const int64_t* page_table_offset = nullptr;  // [num_items]
  // [num_items] slot pools: slot s of item i is at slot_k_base[i] + s * page_bytes.
  void* const* slot_k_base = nullptr;
  void* const* slot_v_base = nullptr;
};

namespace internal {
// Sizes and the presence of every array; shared by the launcher and the twin.
absl::Status ValidateMissLoadShape(const MissLoadParams& params);
}  // namespace internal

// Host twin (host memory): also checks the arrays' contents (counts within max_misses, page
// table entries non-null and aligned, slots non-negative) and writes nothing when one is bad.
// Page numbers and slots are the caller's contract beyond that (the resolve produces them).
absl::Status ReferenceMissLoad(const MissLoadParams& params);

#ifdef KVTIER_WITH_CUDA
// All arrays in device memory; their contents are the caller's contract (counts are clamped
// to [0, max_misses]). No allocation, no host synchronisation.
absl::Status LaunchMissLoad(const MissLoadParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
