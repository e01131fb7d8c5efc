#include "offload/page_arena.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

std::unique_ptr<PageArena> MakeArena(int64_t page_bytes, int64_t frames) {
  auto arena = PageArena::Create({.page_bytes = page_bytes, .num_frames = frames, .device_id = 0});
  EXPECT_TRUE(arena.ok()) << arena.status();
  return std::move(arena).value();
}

TEST(PageArenaTest, RejectsBadSizes) {
  EXPECT_EQ(PageArena::Create({.page_bytes = 0, .num_frames = 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PageArena::Create({.page_bytes = 24, .num_frames = 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PageArena::Create({.page_bytes = 4096, .num_frames = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PageArenaTest, PagesAreDistinctAlignedAndInsideTheBuffer) {
  auto arena = MakeArena(4096, 64);
  std::vector<FrameId> frames;
  ASSERT_TRUE(arena->Allocate(64, frames).ok());
  std::set<const std::byte*> pages;
  const std::byte* begin = arena->buffer().data();
  const std::byte* end = begin + arena->buffer().size();
  for (FrameId f : frames) {
    for (const std::byte* p : {arena->KPage(f), arena->VPage(f)}) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u);
      EXPECT_GE(p, begin);
      EXPECT_LE(p + arena->page_bytes(), end);
      EXPECT_TRUE(pages.insert(p).second) << "page handed out twice";
    }
  }
  // Writing every page fully must not disturb any other page.
  for (size_t i = 0; i < frames.size(); ++i) {
    std::memset(arena->KPage(frames[i]), static_cast<int>(2 * i), 4096);
    std::memset(arena->VPage(frames[i]), static_cast<int>(2 * i + 1), 4096);
  }
  for (size_t i = 0; i < frames.size(); ++i) {
    EXPECT_EQ(static_cast<int>(arena->KPage(frames[i])[4095]), static_cast<int>((2 * i) & 0xFF));
    EXPECT_EQ(static_cast<int>(arena->VPage(frames[i])[0]), static_cast<int>((2 * i + 1) & 0xFF));
  }
}

TEST(PageArenaTest, AllocationIsAllOrNothing) {
  auto arena = MakeArena(1024, 10);
  std::vector<FrameId> frames;
  ASSERT_TRUE(arena->Allocate(7, frames).ok());
  EXPECT_EQ(arena->free_frames(), 3);
  std::vector<FrameId> more = {12345};  // existing contents must survive a failure
  absl::Status full = arena->Allocate(4, more);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(full.message().find("3 of 10 free"), absl::string_view::npos) << full;
  EXPECT_EQ(more, std::vector<FrameId>{12345});
  EXPECT_EQ(arena->free_frames(), 3);
  ASSERT_TRUE(arena->Allocate(3, frames).ok());
  EXPECT_EQ(arena->free_frames(), 0);
  EXPECT_EQ(arena->used_frames(), 10);
}

TEST(PageArenaTest, ReleaseReturnsFramesForReuse) {
  auto arena = MakeArena(1024, 8);
  std::vector<FrameId> frames;
  ASSERT_TRUE(arena->Allocate(8, frames).ok());
  ASSERT_TRUE(arena->Release(absl::MakeConstSpan(frames).subspan(2, 3)).ok());
  EXPECT_EQ(arena->free_frames(), 3);
  std::vector<FrameId> again;
  ASSERT_TRUE(arena->Allocate(3, again).ok());
  std::vector<FrameId> released(frames.begin() + 2, frames.begin() + 5);
  std::sort(again.begin(), again.end());
  std::sort(released.begin(), released.end());
  EXPECT_EQ(again, released);
}

TEST(PageArenaTest, BadReleaseReleasesNothing) {
  auto arena = MakeArena(1024, 8);
  std::vector<FrameId> frames;
  ASSERT_TRUE(arena->Allocate(4, frames).ok());
  const FrameId not_allocated = frames.back() + 1;
  const std::vector<std::vector<FrameId>> bad = {
      {frames[0], not_allocated}, {frames[0], frames[0]}, {frames[1], 8}, {frames[2], 1u << 30}};
  for (const auto& list : bad) {
    EXPECT_EQ(arena->Release(list).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(arena->free_frames(), 4);
  }
  ASSERT_TRUE(arena->Release(frames).ok());
  EXPECT_EQ(arena->Release(frames).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(arena->free_frames(), 8);
}

TEST(PageArenaTest, RandomAllocateReleaseKeepsAccounting) {
  auto arena = MakeArena(256, 200);
  std::mt19937 rng(7);
  std::vector<FrameId> held;
  for (int step = 0; step < 2000; ++step) {
    if (rng() % 2 == 0) {
      const int64_t count = rng() % 12;
      const bool fits = count <= arena->free_frames();
      EXPECT_EQ(arena->Allocate(count, held).ok(), fits);
    } else if (!held.empty()) {
      const size_t count = 1 + rng() % std::min<size_t>(held.size(), 10);
      std::shuffle(held.begin(), held.end(), rng);
      ASSERT_TRUE(arena->Release(absl::MakeConstSpan(held).subspan(held.size() - count)).ok());
      held.resize(held.size() - count);
    }
    ASSERT_EQ(arena->used_frames(), static_cast<int64_t>(held.size()));
    ASSERT_EQ(std::set<FrameId>(held.begin(), held.end()).size(), held.size());
  }
}

}  // namespace
}  // namespace kvtier
