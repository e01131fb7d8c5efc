// The page cache's directory on the host backend: its size, its empty start, the resolve of a
// subset of rows (and no other), CachePolicy::kNone, which never caches, and EmptyRows.
#include "offload/page_cache.h"

#include <cstdint>
#include <memory>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier::internal {
namespace {

constexpr int32_t kSlots = 4;

PageCacheGeometry Geometry(CachePolicy policy) {
  PageCacheGeometry g;
  g.rows = 6;
  g.num_slots = kSlots;
  g.max_pages = 32;
  g.page_size = 16;
  g.max_selected = 2;
  g.max_items = 2;
  g.policy = policy;
  return g;
}

struct Row {
  std::vector<int32_t> page = std::vector<int32_t>(kSlots);
  std::vector<int32_t> last_use = std::vector<int32_t>(kSlots);
  std::vector<float> score = std::vector<float>(kSlots);
};

Row Read(const PageCache& cache, int64_t row) {
  Row r;
  EXPECT_TRUE(cache.ReadRow(row, r.page.data(), r.last_use.data(), r.score.data()).ok());
  return r;
}

// One item's resolve outputs (host memory: the host backend's memory).
struct Item {
  int32_t row = 0;
  std::vector<int32_t> selected;
  int32_t num_selected = 0;
  std::vector<int32_t> selected_slots = std::vector<int32_t>(2, -7);
  std::vector<int32_t> miss_pages = std::vector<int32_t>(2, -7);
  std::vector<int32_t> miss_slots = std::vector<int32_t>(2, -7);
  std::vector<int32_t> hit_slots = std::vector<int32_t>(2, -7);
  int32_t hits = -7;
  int32_t misses = -7;
};

absl::Status Resolve(PageCache& cache, Item& item, int32_t step) {
  item.num_selected = static_cast<int32_t>(item.selected.size());
  item.selected.resize(2);
  PageCache::ResolveBatch batch;
  batch.num_items = 1;
  batch.item_rows = &item.row;
  batch.selected_pages = item.selected.data();
  batch.num_selected = &item.num_selected;
  batch.step = step;
  batch.selected_slots = item.selected_slots.data();
  batch.miss_pages = item.miss_pages.data();
  batch.miss_slots = item.miss_slots.data();
  batch.hit_count = &item.hits;
  batch.miss_count = &item.misses;
  batch.hit_slots = item.hit_slots.data();
  return cache.Resolve(batch, nullptr);
}

std::unique_ptr<PageCache> MakeCache(StepBackend& backend, CachePolicy policy) {
  auto cache = PageCache::Create(&backend, Geometry(policy));
  EXPECT_TRUE(cache.ok()) << cache.status();
  return std::move(cache).value();
}

TEST(PageCacheTest, DirectoryBytesCountTheRowsAndTheEmptyDirectoryOfNoCache) {
  const int64_t rows = 3 * AlignUp(6 * kSlots * 4);
  EXPECT_EQ(PageCache::DirectoryBytes(Geometry(CachePolicy::kLeastRecentlyUsed)), rows);
  EXPECT_EQ(PageCache::DirectoryBytes(Geometry(CachePolicy::kNone)),
            rows + 3 * AlignUp(2 * kSlots * 4));
}

TEST(PageCacheTest, StartsEmptyAndResolvesOnlyTheItemsRows) {
  std::unique_ptr<StepBackend> backend = CreateHostBackend();
  std::unique_ptr<PageCache> cache = MakeCache(*backend, CachePolicy::kLeastRecentlyUsed);
  EXPECT_EQ(Read(*cache, 2).page, std::vector<int32_t>(kSlots, -1));

  Item item{.row = 2, .selected = {3, 5}};
  ASSERT_TRUE(Resolve(*cache, item, 1).ok());
  EXPECT_EQ(item.hits, 0);
  EXPECT_EQ(item.misses, 2);
  EXPECT_EQ((std::vector<int32_t>{item.miss_pages[0], item.miss_pages[1]}),
            (std::vector<int32_t>{3, 5}));
  EXPECT_EQ(Read(*cache, 2).page, (std::vector<int32_t>{3, 5, -1, -1}));
  EXPECT_EQ(Read(*cache, 2).last_use, (std::vector<int32_t>{1, 1, 0, 0}));
  for (const int64_t other : {0, 1, 3, 4, 5}) {
    EXPECT_EQ(Read(*cache, other).page, std::vector<int32_t>(kSlots, -1)) << "row " << other;
  }

  Item again{.row = 2, .selected = {5}};
  ASSERT_TRUE(Resolve(*cache, again, 2).ok());
  EXPECT_EQ(again.hits, 1);
  EXPECT_EQ(again.misses, 0);
  EXPECT_EQ(again.hit_slots[0], 1);

  ASSERT_TRUE(cache->EmptyRows(2, 1, nullptr).ok());
  EXPECT_EQ(Read(*cache, 2).page, std::vector<int32_t>(kSlots, -1));
  EXPECT_EQ(Read(*cache, 2).last_use, std::vector<int32_t>(kSlots, 0));
}

TEST(PageCacheTest, NoCacheMissesEverySelectedPageAndLeavesTheRowsEmpty) {
  std::unique_ptr<StepBackend> backend = CreateHostBackend();
  std::unique_ptr<PageCache> cache = MakeCache(*backend, CachePolicy::kNone);
  EXPECT_FALSE(cache->scores_pages());
  for (int32_t step = 1; step <= 2; ++step) {
    Item item{.row = 4, .selected = {3, 5}};
    ASSERT_TRUE(Resolve(*cache, item, step).ok());
    EXPECT_EQ(item.hits, 0) << "step " << step;
    EXPECT_EQ(item.misses, 2) << "step " << step;
  }
  for (int64_t row = 0; row < 6; ++row) {
    EXPECT_EQ(Read(*cache, row).page, std::vector<int32_t>(kSlots, -1)) << "row " << row;
  }
}

}  // namespace
}  // namespace kvtier::internal
