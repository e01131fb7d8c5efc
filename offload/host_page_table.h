// Which host-store frame holds each page of each item (a (sequence slot, layer, KV head) row),
// in tables the GPU reads directly: two arrays [rows, max_pages] of K and V page addresses in
// pinned, device-mapped host memory, so the miss-load and write-back kernels find a page
// without the host in the loop, and the host adds entries by plain stores before it enqueues
// the step that first uses them. Frames come from a PageArena; growth is all or nothing.
//
// Addresses are those the executing side reads: for the CUDA backend the arena's device
// mapping (PinnedBuffer::device_data()), for the host backend its host addresses.
//
// Thread safety: none; the owner (the KvCache) serialises calls.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "offload/page_arena.h"
#include "offload/pinned_buffer.h"

namespace kvtier {

class HostPageTable {
 public:
  // `device_addresses`: store device-mapped addresses (the arena must then be pinned).
  // InvalidArgument for bad sizes or an unpinned arena with device_addresses;
  // ResourceExhausted when the tables cannot be allocated.
  static absl::StatusOr<std::unique_ptr<HostPageTable>> Create(PageArena* arena, int64_t rows,
                                                               int32_t max_pages,
                                                               bool device_addresses,
                                                               int device_id);

  // One growth request: rows [row_begin, row_begin + num_rows) get frames for their pages
  // [pages_before, pages_after).
  struct Growth {
    int64_t row_begin = 0;
    int32_t num_rows = 0;
    int32_t pages_before = 0;  // must equal the rows' current page count
    int32_t pages_after = 0;   // <= max_pages
  };
  // Allocates and records every frame of every request, or nothing: ResourceExhausted (the
  // message gives the frames needed and free) when the arena cannot supply them all;
  // InvalidArgument for a request out of range or not matching the current counts.
  absl::Status Grow(absl::Span<const Growth> requests);

  // Returns every frame of rows [row_begin, row_begin + num_rows) and clears their entries.
  absl::Status ReleaseRows(int64_t row_begin, int64_t num_rows);

  int32_t NumPages(int64_t row) const { return static_cast<int32_t>(frames_[row].size()); }
  FrameId Frame(int64_t row, int32_t page) const { return frames_[row][page]; }

  // The address the executing side uses for page `page` of `row` (null if not allocated).
  const void* KPageAddress(int64_t row, int32_t page) const {
    return host_k_[row * max_pages_ + page];
  }
  const void* VPageAddress(int64_t row, int32_t page) const {
    return host_v_[row * max_pages_ + page];
  }

  // The tables as the executing side reads them ([rows, max_pages] each).
  const void* const* k_table() const { return k_table_; }
  const void* const* v_table() const { return v_table_; }
  int32_t max_pages() const { return max_pages_; }
  int64_t rows() const { return static_cast<int64_t>(frames_.size()); }

 private:
  HostPageTable(PageArena* arena, int32_t max_pages, bool device_addresses, PinnedBuffer tables,
                int64_t rows);
  void SetEntry(int64_t row, int32_t page, FrameId frame);

  PageArena* arena_;
  int32_t max_pages_;
  bool device_addresses_;
  PinnedBuffer tables_;
  const void** host_k_ = nullptr;  // host view of the tables, for stores
  const void** host_v_ = nullptr;
  const void* const* k_table_ = nullptr;  // the view handed to kernels
  const void* const* v_table_ = nullptr;
  std::vector<std::vector<FrameId>> frames_;  // [rows] frames in page order
};

}  // namespace kvtier
