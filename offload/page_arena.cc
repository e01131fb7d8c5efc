#include "offload/page_arena.h"

#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"

namespace kvtier {

absl::StatusOr<std::unique_ptr<PageArena>> PageArena::Create(const PageArenaConfig& config) {
  if (config.page_bytes <= 0 || config.page_bytes % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("PageArena: page_bytes = ", config.page_bytes,
                                                   ": must be a positive multiple of 16"));
  }
  if (config.num_frames <= 0 || config.num_frames > int64_t{std::numeric_limits<FrameId>::max()}) {
    return absl::InvalidArgumentError(
        absl::StrCat("PageArena: num_frames = ", config.num_frames, ": must be in [1, 2^32 - 1]"));
  }
  const int64_t bytes = config.num_frames * 2 * config.page_bytes;
  KVTIER_ASSIGN_OR_RETURN(PinnedBuffer buffer,
                          PinnedBuffer::Allocate({static_cast<size_t>(bytes), config.device_id}));
  return std::unique_ptr<PageArena>(
      new PageArena(std::move(buffer), config.page_bytes, config.num_frames));
}

PageArena::PageArena(PinnedBuffer buffer, int64_t page_bytes, int64_t num_frames)
    : buffer_(std::move(buffer)),
      base_(buffer_.data()),
      page_bytes_(page_bytes),
      num_frames_(num_frames),
      in_use_(static_cast<size_t>(num_frames), false) {
  free_.reserve(static_cast<size_t>(num_frames));
  // Low frame ids on top, so a fresh arena hands out frames in address order.
  for (int64_t f = num_frames - 1; f >= 0; --f) free_.push_back(static_cast<FrameId>(f));
}

absl::Status PageArena::Allocate(int64_t count, std::vector<FrameId>& frames) {
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("count = ", count));
  absl::MutexLock lock(&mu_);
  if (count > static_cast<int64_t>(free_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat("host page arena full: ", count,
                                                     " frames requested, ", free_.size(), " of ",
                                                     num_frames_, " free"));
  }
  frames.reserve(frames.size() + static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const FrameId frame = free_.back();
    free_.pop_back();
    in_use_[frame] = true;
    frames.push_back(frame);
  }
  return absl::OkStatus();
}

absl::Status PageArena::Release(absl::Span<const FrameId> frames) {
  absl::MutexLock lock(&mu_);
  // Check everything first so that a bad list releases nothing.
  absl::flat_hash_set<FrameId> seen;
  seen.reserve(frames.size());
  for (FrameId frame : frames) {
    if (frame >= num_frames_ || !in_use_[frame] || !seen.insert(frame).second) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PageArena::Release: frame ", frame, " is not an allocated frame of this arena (",
          num_frames_, " frames) or is listed twice"));
    }
  }
  for (FrameId frame : frames) {
    in_use_[frame] = false;
    free_.push_back(frame);
  }
  return absl::OkStatus();
}

int64_t PageArena::free_frames() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(free_.size());
}

}  // namespace kvtier
