// The transfer engine on the host backend: a write-back puts pages into their host-store
// frames, and a miss load brings them from there into the slots the resolve chose, with the
// misses' attention page list.
#include "offload/transfer_engine.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "offload/page_arena.h"

namespace kvtier::internal {
namespace {

constexpr int64_t kPageBytes = 256;
constexpr int32_t kMaxPages = 4;
constexpr int32_t kMaxMisses = 2;

std::vector<std::byte> Page(int seed) {
  std::vector<std::byte> page(kPageBytes);
  for (int64_t i = 0; i < kPageBytes; ++i) page[i] = static_cast<std::byte>(seed * 31 + i);
  return page;
}

TEST(TransferEngineTest, WrittenBackPagesLoadIntoTheirSlots) {
  std::unique_ptr<StepBackend> backend = CreateHostBackend();
  auto arena = PageArena::Create({.page_bytes = kPageBytes, .num_frames = 4, .device_id = -1});
  ASSERT_TRUE(arena.ok()) << arena.status();
  auto table = HostPageTable::Create(arena->get(), /*rows=*/2, kMaxPages,
                                     /*device_addresses=*/false, /*device_id=*/-1);
  ASSERT_TRUE(table.ok()) << table.status();
  HostPageTable& pages = **table;
  const HostPageTable::Growth growth{
      .row_begin = 1, .num_rows = 1, .pages_before = 0, .pages_after = 2};
  ASSERT_TRUE(pages.Grow({&growth, 1}).ok());
  TransferEngine engine(backend.get(), &pages, kPageBytes, kMaxMisses);
  EventHandle events[4];
  for (EventHandle& e : events) {
    auto event = backend->CreateEvent(false);
    ASSERT_TRUE(event.ok());
    e = *event;
  }
  const auto [ready, written_back, resolved, loaded] = events;

  // Pages 0 and 1 of row 1 go to the host store.
  const std::vector<std::byte> k[2] = {Page(1), Page(2)};
  const std::vector<std::byte> v[2] = {Page(3), Page(4)};
  const void* k_src[2] = {k[0].data(), k[1].data()};
  const void* v_src[2] = {v[0].data(), v[1].data()};
  void* k_dst[2] = {const_cast<void*>(pages.KPageAddress(1, 0)),
                    const_cast<void*>(pages.KPageAddress(1, 1))};
  void* v_dst[2] = {const_cast<void*>(pages.VPageAddress(1, 0)),
                    const_cast<void*>(pages.VPageAddress(1, 1))};
  ASSERT_TRUE(
      engine
          .WriteBack(
              {.num_pages = 2, .k_src = k_src, .v_src = v_src, .k_dst = k_dst, .v_dst = v_dst},
              ready, written_back)
          .ok());
  EXPECT_EQ(std::memcmp(pages.KPageAddress(1, 1), k[1].data(), kPageBytes), 0);
  EXPECT_EQ(std::memcmp(pages.VPageAddress(1, 0), v[0].data(), kPageBytes), 0);

  // One item (row 1) misses page 1 and loads it into slot 2 of its three.
  std::vector<std::byte> slot_k(3 * kPageBytes), slot_v(3 * kPageBytes);
  const int32_t miss_pages[kMaxMisses] = {1, -1};
  const int32_t miss_slots[kMaxMisses] = {2, -1};
  const int32_t miss_count = 1;
  const int64_t page_table_offset = 1 * kMaxPages;
  void* slot_k_base = slot_k.data();
  void* slot_v_base = slot_v.data();
  TransferEngine::MissBatch misses{.num_items = 1,
                                   .miss_pages = miss_pages,
                                   .miss_slots = miss_slots,
                                   .miss_count = &miss_count,
                                   .page_table_offset = &page_table_offset,
                                   .slot_k_base = &slot_k_base,
                                   .slot_v_base = &slot_v_base};
  int32_t list_offsets[2] = {-1, -1};
  const void* list_k[kMaxMisses] = {};
  const void* list_v[kMaxMisses] = {};
  int32_t list_last = -1;
  SelectedPagesParams list;
  list.num_items = 1;
  list.max_selected = kMaxMisses;
  list.page_size = 16;
  list.page_bytes = kPageBytes;
  list.slot_k_base = &slot_k_base;
  list.slot_v_base = &slot_v_base;
  list.selected_slots = miss_slots;
  list.num_selected = &miss_count;
  list.page_offsets = list_offsets;
  list.k_pages = list_k;
  list.v_pages = list_v;
  list.last_page_tokens = &list_last;
  const absl::Status status = engine.LoadMisses(
      misses, list, {.resolved = resolved, .written_back = written_back, .loaded = loaded},
      nullptr);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(slot_k.data() + 2 * kPageBytes, k[1].data(), kPageBytes), 0);
  EXPECT_EQ(std::memcmp(slot_v.data() + 2 * kPageBytes, v[1].data(), kPageBytes), 0);
  EXPECT_EQ(list_offsets[0], 0);
  EXPECT_EQ(list_offsets[1], 1);
  EXPECT_EQ(list_k[0], slot_k.data() + 2 * kPageBytes);
  EXPECT_EQ(list_v[0], slot_v.data() + 2 * kPageBytes);
}

}  // namespace
}  // namespace kvtier::internal
