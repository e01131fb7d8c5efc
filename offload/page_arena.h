// A fixed pool of page frames carved out of one NUMA-local pinned buffer, sized once at
// creation. A frame holds one K page and one V page of `page_bytes` each. Allocation and
// release are O(1) per frame (a free-list stack); a multi-frame allocation is all or nothing.
//
// Thread safety: every method may be called concurrently from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "offload/pinned_buffer.h"

namespace kvtier {

using FrameId = uint32_t;

struct PageArenaConfig {
  int64_t page_bytes = 0;  // a positive multiple of 16
  int64_t num_frames = 0;  // > 0
  int device_id = 0;       // see PinnedBufferRequest
};

class PageArena {
 public:
  // InvalidArgument for bad sizes; ResourceExhausted when the memory cannot be had.
  static absl::StatusOr<std::unique_ptr<PageArena>> Create(const PageArenaConfig& config);

  // Appends `count` free frames to `frames`; ResourceExhausted (nothing taken, `frames`
  // unchanged) when fewer than `count` are free.
  absl::Status Allocate(int64_t count, std::vector<FrameId>& frames);

  // Returns frames to the pool. FailedPrecondition (nothing released) when a frame is out of
  // range, not allocated, or listed twice.
  absl::Status Release(absl::Span<const FrameId> frames);

  // Addresses of a frame's pages: fixed for the arena's lifetime, 16-byte aligned, pinned
  // and device-readable when buffer().pinned().
  std::byte* KPage(FrameId frame) const { return base_ + frame * frame_bytes(); }
  std::byte* VPage(FrameId frame) const { return KPage(frame) + page_bytes_; }

  int64_t page_bytes() const { return page_bytes_; }
  int64_t frame_bytes() const { return 2 * page_bytes_; }
  int64_t num_frames() const { return num_frames_; }
  int64_t free_frames() const;
  int64_t used_frames() const { return num_frames_ - free_frames(); }
  const PinnedBuffer& buffer() const { return buffer_; }

 private:
  PageArena(PinnedBuffer buffer, int64_t page_bytes, int64_t num_frames);

  PinnedBuffer buffer_;
  std::byte* const base_;
  const int64_t page_bytes_;
  const int64_t num_frames_;
  mutable absl::Mutex mu_;
  std::vector<FrameId> free_ ABSL_GUARDED_BY(mu_);  // stack of free frames
  std::vector<bool> in_use_ ABSL_GUARDED_BY(mu_);   // [num_frames]
};

}  // namespace kvtier
