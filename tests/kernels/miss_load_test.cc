#include "kernels/miss_load.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

// A batch of caches with random miss lists over host vectors (for the twin).
struct HostBatch {
  int32_t items, max_misses, pages, slots;
  int64_t page_bytes;
  std::vector<std::vector<std::byte>> host_pages;  // K then V page per (item, page)
  std::vector<const void*> k_table, v_table;
  std::vector<int64_t> table_offset;
  std::vector<std::vector<std::byte>> k_pool, v_pool;  // per item, slots * page_bytes
  std::vector<void*> k_base, v_base;
  std::vector<int32_t> miss_pages, miss_slots, miss_count;

  HostBatch(int32_t items_, int32_t max_misses_, int32_t pages_, int32_t slots_,
            int64_t page_bytes_, std::mt19937& rng)
      : items(items_),
        max_misses(max_misses_),
        pages(pages_),
        slots(slots_),
        page_bytes(page_bytes_) {
    std::uniform_int_distribution<int> byte(0, 255);
    for (int32_t i = 0; i < items; ++i) {
      table_offset.push_back(static_cast<int64_t>(k_table.size()));
      for (int32_t p = 0; p < pages; ++p) {
        for (int kv = 0; kv < 2; ++kv) {
          host_pages.emplace_back(page_bytes);
          for (auto& b : host_pages.back()) b = static_cast<std::byte>(byte(rng));
        }
      }
    }
    for (size_t j = 0; j < host_pages.size(); j += 2) {
      k_table.push_back(host_pages[j].data());
      v_table.push_back(host_pages[j + 1].data());
    }
    for (int32_t i = 0; i < items; ++i) {
      k_pool.emplace_back(slots * page_bytes, std::byte{0xEE});
      v_pool.emplace_back(slots * page_bytes, std::byte{0xEE});
      k_base.push_back(k_pool.back().data());
      v_base.push_back(v_pool.back().data());
      std::vector<int32_t> page_ids(pages), slot_ids(slots);
      std::iota(page_ids.begin(), page_ids.end(), 0);
      std::iota(slot_ids.begin(), slot_ids.end(), 0);
      std::shuffle(page_ids.begin(), page_ids.end(), rng);
      std::shuffle(slot_ids.begin(), slot_ids.end(), rng);
      const int32_t count = static_cast<int32_t>(rng() % (max_misses + 1));
      miss_count.push_back(count);
      for (int32_t m = 0; m < max_misses; ++m) {
        miss_pages.push_back(m < count ? page_ids[m] : -5);  // beyond the count: never read
        miss_slots.push_back(m < count ? slot_ids[m] : -5);
      }
    }
  }
  MissLoadParams Params() const {
    MissLoadParams p;
    p.num_items = items;
    p.max_misses = max_misses;
    p.page_bytes = page_bytes;
    p.miss_pages = miss_pages.data();
    p.miss_slots = miss_slots.data();
    p.miss_count = miss_count.data();
    p.host_k_pages = k_table.data();
    p.host_v_pages = v_table.data();
    p.page_table_offset = table_offset.data();
    p.slot_k_base = k_base.data();
    p.slot_v_base = v_base.data();
    return p;
  }
};

TEST(MissLoadTest, TwinCopiesEveryMissAndTouchesNothingElse) {
  std::mt19937 rng(21);
  HostBatch b(13, 9, 30, 12, 4096, rng);
  ASSERT_TRUE(ReferenceMissLoad(b.Params()).ok());
  for (int32_t i = 0; i < b.items; ++i) {
    std::vector<bool> loaded(b.slots, false);
    for (int32_t m = 0; m < b.miss_count[i]; ++m) {
      const int32_t page = b.miss_pages[i * b.max_misses + m];
      const int32_t slot = b.miss_slots[i * b.max_misses + m];
      loaded[slot] = true;
      const int64_t entry = b.table_offset[i] + page;
      EXPECT_EQ(
          std::memcmp(b.k_pool[i].data() + slot * b.page_bytes, b.k_table[entry], b.page_bytes), 0);
      EXPECT_EQ(
          std::memcmp(b.v_pool[i].data() + slot * b.page_bytes, b.v_table[entry], b.page_bytes), 0);
    }
    for (int32_t s = 0; s < b.slots; ++s) {
      if (loaded[s]) continue;
      const auto* k = b.k_pool[i].data() + s * b.page_bytes;
      EXPECT_TRUE(
          std::all_of(k, k + b.page_bytes, [](std::byte x) { return x == std::byte{0xEE}; }))
          << "slot " << s << " of item " << i << " was not a miss but was written";
    }
  }
}

TEST(MissLoadTest, BadParametersWriteNothing) {
  std::mt19937 rng(22);
  HostBatch b(4, 6, 10, 8, 512, rng);
  b.miss_count[1] = 6;
  b.miss_pages[1 * 6 + 5] = 3;
  b.miss_slots[1 * 6 + 5] = 7;
  auto untouched = [&] {
    for (const auto& pool : b.k_pool) {
      if (!std::all_of(pool.begin(), pool.end(), [](std::byte x) { return x == std::byte{0xEE}; }))
        return false;
    }
    return true;
  };
  MissLoadParams p = b.Params();
  p.page_bytes = 100;
  EXPECT_EQ(ReferenceMissLoad(p).code(), absl::StatusCode::kInvalidArgument);
  p = b.Params();
  p.miss_count = nullptr;
  EXPECT_EQ(ReferenceMissLoad(p).code(), absl::StatusCode::kInvalidArgument);
  b.miss_count[2] = 7;  // beyond max_misses
  absl::Status status = ReferenceMissLoad(b.Params());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("miss_count[2] is 7"), absl::string_view::npos) << status;
  b.miss_count[2] = 1;
  b.miss_slots[2 * 6] = -1;
  EXPECT_EQ(ReferenceMissLoad(b.Params()).code(), absl::StatusCode::kInvalidArgument);
  b.miss_slots[2 * 6] = 0;
  b.k_table[b.table_offset[3] + b.miss_pages[3 * 6]] = nullptr;
  if (b.miss_count[3] > 0) {
    EXPECT_EQ(ReferenceMissLoad(b.Params()).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(untouched());
}

TEST(MissLoadTest, EmptyBatchIsANoOp) {
  MissLoadParams p;
  p.page_bytes = 4096;
  EXPECT_TRUE(ReferenceMissLoad(p).ok());
}

}  // namespace
}  // namespace kvtier
