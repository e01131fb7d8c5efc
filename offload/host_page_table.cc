#include "offload/host_page_table.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<HostPageTable>> HostPageTable::Create(PageArena* arena, int64_t rows,
                                                                     int32_t max_pages,
                                                                     bool device_addresses,
                                                                     int device_id) {
  if (arena == nullptr || rows < 1 || max_pages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("host page table: rows = ", rows,
                                                   ", max_pages = ", max_pages,
                                                   " (both >= 1) and an arena are needed"));
  }
  if (device_addresses && arena->buffer().device_data() == nullptr) {
    return absl::InvalidArgumentError(
        "host page table: device addresses need a pinned, device-mapped arena");
  }
  const size_t bytes = static_cast<size_t>(2 * rows * max_pages) * sizeof(void*);
  KVTIER_ASSIGN_OR_RETURN(PinnedBuffer tables,
                          PinnedBuffer::Allocate({bytes, device_addresses ? device_id : -1}));
  std::memset(tables.data(), 0, bytes);
  return std::unique_ptr<HostPageTable>(
      new HostPageTable(arena, max_pages, device_addresses, std::move(tables), rows));
}

HostPageTable::HostPageTable(PageArena* arena, int32_t max_pages, bool device_addresses,
                             PinnedBuffer tables, int64_t rows)
    : arena_(arena),
      max_pages_(max_pages),
      device_addresses_(device_addresses),
      tables_(std::move(tables)),
      frames_(static_cast<size_t>(rows)) {
  host_k_ = reinterpret_cast<const void**>(tables_.data());
  host_v_ = host_k_ + rows * max_pages;
  std::byte* view = device_addresses_ ? tables_.device_data() : tables_.data();
  k_table_ = reinterpret_cast<const void* const*>(view);
  v_table_ = k_table_ + rows * max_pages;
}

void HostPageTable::SetEntry(int64_t row, int32_t page, FrameId frame) {
  const int64_t index = row * max_pages_ + page;
  if (frame == static_cast<FrameId>(-1)) {
    host_k_[index] = nullptr;
    host_v_[index] = nullptr;
    return;
  }
  std::byte* k = arena_->KPage(frame);
  std::byte* v = arena_->VPage(frame);
  if (device_addresses_) {
    const std::byte* host_base = arena_->buffer().data();
    std::byte* device_base = arena_->buffer().device_data();
    k = device_base + (k - host_base);
    v = device_base + (v - host_base);
  }
  host_k_[index] = k;
  host_v_[index] = v;
}

absl::Status HostPageTable::Grow(absl::Span<const Growth> requests) {
  int64_t needed = 0;
  for (const Growth& g : requests) {
    if (g.row_begin < 0 || g.num_rows < 0 || g.row_begin + g.num_rows > rows() ||
        g.pages_after > max_pages_ || g.pages_before > g.pages_after) {
      return absl::InvalidArgumentError(
          absl::StrCat("host page table: growth of rows [", g.row_begin, ", ",
                       g.row_begin + g.num_rows, ") from ", g.pages_before, " to ", g.pages_after,
                       " pages is out of range (rows ", rows(), ", max_pages ", max_pages_, ")"));
    }
    for (int64_t r = g.row_begin; r < g.row_begin + g.num_rows; ++r) {
      if (NumPages(r) != g.pages_before) {
        return absl::InvalidArgumentError(absl::StrCat(
            "host page table: row ", r, " has ", NumPages(r), " pages, not ", g.pages_before));
      }
    }
    needed += int64_t{g.num_rows} * (g.pages_after - g.pages_before);
  }
  if (needed == 0) return absl::OkStatus();
  std::vector<FrameId> frames;
  frames.reserve(static_cast<size_t>(needed));
  const absl::Status status = arena_->Allocate(needed, frames);
  if (!status.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "host store full: ", needed, " more page frames are needed, ", arena_->free_frames(),
        " of ", arena_->num_frames(), " are free (raise host_memory_bytes or remove sequences)"));
  }
  size_t next = 0;
  for (const Growth& g : requests) {
    for (int64_t r = g.row_begin; r < g.row_begin + g.num_rows; ++r) {
      for (int32_t page = g.pages_before; page < g.pages_after; ++page) {
        const FrameId frame = frames[next++];
        frames_[r].push_back(frame);
        SetEntry(r, page, frame);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status HostPageTable::ReleaseRows(int64_t row_begin, int64_t num_rows) {
  if (row_begin < 0 || num_rows < 0 || row_begin + num_rows > rows()) {
    return absl::InvalidArgumentError(absl::StrCat("host page table: rows [", row_begin, ", ",
                                                   row_begin + num_rows, ") out of range"));
  }
  std::vector<FrameId> all;
  for (int64_t r = row_begin; r < row_begin + num_rows; ++r) {
    all.insert(all.end(), frames_[r].begin(), frames_[r].end());
  }
  KVTIER_RETURN_IF_ERROR(arena_->Release(all));
  for (int64_t r = row_begin; r < row_begin + num_rows; ++r) {
    for (int32_t page = 0; page < NumPages(r); ++page) SetEntry(r, page, static_cast<FrameId>(-1));
    frames_[r].clear();
  }
  return absl::OkStatus();
}

}  // namespace kvtier
