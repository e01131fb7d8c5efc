// ReferenceCacheResolve, the host twin of the page-cache resolve, against a plain host model
// of each policy (a per-slot simulation that finds victims one at a time by linear scan),
// over long runs of drifting, overlapping selections; hand-made cases for the first step,
// misses beyond the free slots and tie-breaking; the score update; validation.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cache_resolve.h"
#include "tests/testing/drifting_selections.h"

namespace kvtier {
namespace {

constexpr int32_t kPoison = -7777;

// A batch of caches and the twin's arrays, in host memory.
struct ResolveState {
  ResolveState(int32_t items, int32_t slots, int32_t pages, int32_t selected, bool with_map)
      : num_items(items),
        num_slots(slots),
        max_pages(pages),
        max_selected(selected),
        slot_page(items * slots, -1),
        last_use(items * slots, 12345),
        score(items * slots, 0.0f),
        page_slot(with_map ? items * pages : 0, -1),
        selected(items * selected, kPoison),
        num_selected(items, 0) {
    PoisonOutputs();
  }

  void PoisonOutputs() {
    selected_slots.assign(num_items * max_selected, kPoison);
    miss_pages.assign(num_items * max_selected, kPoison);
    miss_slots.assign(num_items * max_selected, kPoison);
    hit_count.assign(num_items, kPoison);
    miss_count.assign(num_items, kPoison);
  }

  void SetSelection(int32_t item, const std::vector<int32_t>& pages) {
    std::copy(pages.begin(), pages.end(), selected.begin() + item * max_selected);
    num_selected[item] = static_cast<int32_t>(pages.size());
  }

  CacheResolveParams Params(CachePolicy policy, int32_t step) {
    CacheResolveParams p;
    p.directory.slot_page = slot_page.data();
    p.directory.slot_last_use = last_use.data();
    p.directory.slot_score = score.data();
    p.directory.page_slot = page_slot.empty() ? nullptr : page_slot.data();
    p.directory.num_items = num_items;
    p.directory.num_slots = num_slots;
    p.directory.max_pages = max_pages;
    p.selected_pages = selected.data();
    p.num_selected = num_selected.data();
    p.max_selected = max_selected;
    p.step = step;
    p.policy = policy;
    p.selected_slots = selected_slots.data();
    p.miss_pages = miss_pages.data();
    p.miss_slots = miss_slots.data();
    p.hit_count = hit_count.data();
    p.miss_count = miss_count.data();
    return p;
  }

  int32_t num_items, num_slots, max_pages, max_selected;
  std::vector<int32_t> slot_page, last_use;
  std::vector<float> score;
  std::vector<int32_t> page_slot;
  std::vector<int32_t> selected, num_selected;
  std::vector<int32_t> selected_slots, miss_pages, miss_slots, hit_count, miss_count;
};

// The plain model: one cache, victims picked one at a time by linear scan.
struct ModelCache {
  explicit ModelCache(int32_t slots) : page(slots, -1), last_use(slots, 0), score(slots, 0) {}
  std::vector<int32_t> page, last_use;
  std::vector<float> score;
};

struct ModelResult {
  std::vector<int32_t> slots, miss_pages, miss_slots;
  int32_t hits = 0;
};

// True when slot a is a better victim than slot b (both occupied and unselected).
bool ModelBefore(const ModelCache& c, CachePolicy policy, int32_t a, int32_t b) {
  if (policy == CachePolicy::kLowestScore && c.score[a] != c.score[b]) {
    return c.score[a] < c.score[b];
  }
  if (c.last_use[a] != c.last_use[b]) return c.last_use[a] < c.last_use[b];
  return a < b;
}

ModelResult ModelResolve(ModelCache& c, const std::vector<int32_t>& sel, int32_t step,
                         CachePolicy policy) {
  const int32_t slots = static_cast<int32_t>(c.page.size());
  const bool last_only = policy == CachePolicy::kLastSelection;
  ModelResult r;
  r.slots.assign(sel.size(), -1);
  std::vector<bool> taken(slots, false);
  for (size_t i = 0; i < sel.size(); ++i) {
    for (int32_t s = 0; s < slots; ++s) {
      if (c.page[s] == sel[i]) {
        r.slots[i] = s;
        taken[s] = true;
        ++r.hits;
      }
    }
  }
  const int32_t misses = static_cast<int32_t>(sel.size()) - r.hits;
  std::vector<int32_t> victims;
  for (int32_t k = 0; k < misses; ++k) {
    int32_t best = -1;
    bool best_free = false;
    for (int32_t s = 0; s < slots; ++s) {
      if (taken[s]) continue;
      const bool free = c.page[s] < 0 || last_only;
      if (best < 0 || (free && !best_free) ||
          (free == best_free && !free && ModelBefore(c, policy, s, best))) {
        best = s;
        best_free = free;
      }
    }
    taken[best] = true;
    victims.push_back(best);
  }
  std::sort(victims.begin(), victims.end());
  size_t next = 0;
  for (size_t i = 0; i < sel.size(); ++i) {
    if (r.slots[i] < 0) {
      const int32_t s = victims[next++];
      r.slots[i] = s;
      r.miss_pages.push_back(sel[i]);
      r.miss_slots.push_back(s);
      c.page[s] = sel[i];
      c.score[s] = 0;
    }
    c.last_use[r.slots[i]] = step;
  }
  if (last_only) {
    for (int32_t s = 0; s < slots; ++s) {
      if (!taken[s]) c.page[s] = -1;
    }
  }
  return r;
}

using testing_util::DriftingSelections;

// The directory invariants after a resolve of `s` (selections in s.selected).
void ExpectConsistent(const ResolveState& s, CachePolicy policy) {
  for (int32_t item = 0; item < s.num_items; ++item) {
    SCOPED_TRACE(testing::Message() << "item " << item);
    const int32_t* slot_page = &s.slot_page[item * s.num_slots];
    std::set<int32_t> held;
    for (int32_t slot = 0; slot < s.num_slots; ++slot) {
      const int32_t page = slot_page[slot];
      if (page < 0) continue;
      ASSERT_TRUE(held.insert(page).second) << "page " << page << " is held by two slots";
      if (!s.page_slot.empty()) {
        ASSERT_EQ(s.page_slot[item * s.max_pages + page], slot) << "page_slot of page " << page;
      }
    }
    if (!s.page_slot.empty()) {
      for (int32_t page = 0; page < s.max_pages; ++page) {
        const int32_t slot = s.page_slot[item * s.max_pages + page];
        if (slot >= 0) {
          ASSERT_EQ(slot_page[slot], page)
              << "page_slot says page " << page << " is in slot " << slot;
        } else {
          ASSERT_EQ(slot, -1);
          ASSERT_EQ(held.count(page), 0u) << "resident page " << page << " missing in page_slot";
        }
      }
    }
    const int32_t n = s.num_selected[item];
    ASSERT_EQ(s.hit_count[item] + s.miss_count[item], n);
    for (int32_t i = 0; i < n; ++i) {
      const int32_t page = s.selected[item * s.max_selected + i];
      const int32_t slot = s.selected_slots[item * s.max_selected + i];
      ASSERT_GE(slot, 0);
      ASSERT_LT(slot, s.num_slots);
      ASSERT_EQ(slot_page[slot], page) << "selected page " << page << " is not resident";
    }
    if (policy == CachePolicy::kLastSelection) {
      ASSERT_EQ(static_cast<int32_t>(held.size()), n) << "cache must hold exactly the selection";
    }
  }
}

class CacheResolvePolicyTest : public ::testing::TestWithParam<CachePolicy> {};

// 1,000 steps of drifting selections: twin equals the model step by step, outputs and
// directory, and the directory stays consistent. Scores get random mass after each step.
TEST_P(CacheResolvePolicyTest, TwinMatchesModelOverDriftingSteps) {
  const CachePolicy policy = GetParam();
  constexpr int32_t kItems = 6, kSlots = 48, kPages = 300, kSelected = 16, kSteps = 1000;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << CachePolicyName(policy) << ", seed " << seed);
  std::mt19937_64 rng(seed);
  ResolveState state(kItems, kSlots, kPages, kSelected, /*with_map=*/true);
  DriftingSelections selections(kItems, kPages, kSelected / 2, kSelected, /*keep=*/0.8, seed + 1);
  std::vector<ModelCache> model(kItems, ModelCache(kSlots));
  int64_t total_hits = 0, total_misses = 0;
  for (int32_t step = 0; step < kSteps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    state.PoisonOutputs();
    std::vector<ModelResult> expected;
    for (int32_t item = 0; item < kItems; ++item) {
      const std::vector<int32_t>& sel = selections.Next(item);
      state.SetSelection(item, sel);
      expected.push_back(ModelResolve(model[item], sel, step, policy));
    }
    CacheResolveParams params = state.Params(policy, step);
    std::vector<int32_t> hit_slots(int64_t{kItems} * kSelected, kPoison);
    params.hit_slots = hit_slots.data();
    ASSERT_TRUE(ReferenceCacheResolve(params).ok());
    ExpectConsistent(state, policy);
    for (int32_t item = 0; item < kItems; ++item) {
      const ModelResult& e = expected[item];
      const int32_t n = state.num_selected[item];
      const int32_t base = item * kSelected;
      ASSERT_EQ(state.hit_count[item], e.hits) << "item " << item;
      ASSERT_EQ(state.miss_count[item], static_cast<int32_t>(e.miss_pages.size()));
      total_hits += e.hits;
      total_misses += static_cast<int64_t>(e.miss_pages.size());
      // The hits' slots: the selection's slots that are not loaded this step, in order.
      std::vector<int32_t> expected_hit_slots;
      for (int32_t i = 0; i < n; ++i) {
        if (std::find(e.miss_slots.begin(), e.miss_slots.end(), e.slots[i]) == e.miss_slots.end()) {
          expected_hit_slots.push_back(e.slots[i]);
        }
      }
      ASSERT_EQ(static_cast<int32_t>(expected_hit_slots.size()), e.hits);
      for (int32_t i = 0; i < kSelected; ++i) {
        ASSERT_EQ(hit_slots[base + i], i < e.hits ? expected_hit_slots[i] : kPoison) << i;
      }
      for (int32_t i = 0; i < kSelected; ++i) {
        ASSERT_EQ(state.selected_slots[base + i], i < n ? e.slots[i] : kPoison) << "entry " << i;
        const bool miss = i < static_cast<int32_t>(e.miss_pages.size());
        ASSERT_EQ(state.miss_pages[base + i], miss ? e.miss_pages[i] : kPoison);
        ASSERT_EQ(state.miss_slots[base + i], miss ? e.miss_slots[i] : kPoison);
      }
      for (int32_t slot = 0; slot < kSlots; ++slot) {
        ASSERT_EQ(state.slot_page[item * kSlots + slot], model[item].page[slot]) << slot;
        if (model[item].page[slot] >= 0) {
          ASSERT_EQ(state.last_use[item * kSlots + slot], model[item].last_use[slot]);
          ASSERT_EQ(state.score[item * kSlots + slot], model[item].score[slot]);
        }
      }
    }
    // Attention mass for the selected pages, with decay, in twin and model alike.
    std::vector<float> mass(kItems * kSelected);
    std::uniform_real_distribution<float> uniform(0.001f, 1.0f);
    for (float& m : mass) m = uniform(rng);
    CacheScoreUpdateParams update;
    update.slot_score = state.score.data();
    update.selected_slots = state.selected_slots.data();
    update.num_selected = state.num_selected.data();
    update.mass = mass.data();
    update.num_items = kItems;
    update.num_slots = kSlots;
    update.max_selected = kSelected;
    update.decay = 0.95f;
    ASSERT_TRUE(ReferenceCacheScoreUpdate(update).ok());
    for (int32_t item = 0; item < kItems; ++item) {
      for (float& score : model[item].score) score = score * 0.95f;
      for (int32_t i = 0; i < state.num_selected[item]; ++i) {
        model[item].score[expected[item].slots[i]] += mass[item * kSelected + i];
      }
    }
  }
  // The drift keeps ~80% of a selection: the cache must see both hits and misses.
  EXPECT_GT(total_hits, 0);
  EXPECT_GT(total_misses, 0);
}

INSTANTIATE_TEST_SUITE_P(AllPolicies, CacheResolvePolicyTest,
                         ::testing::Values(CachePolicy::kLeastRecentlyUsed,
                                           CachePolicy::kLowestScore, CachePolicy::kLastSelection),
                         [](const auto& info) {
                           switch (info.param) {
                             case CachePolicy::kLeastRecentlyUsed:
                               return std::string("LeastRecentlyUsed");
                             case CachePolicy::kLowestScore:
                               return std::string("LowestScore");
                             case CachePolicy::kLastSelection:
                               return std::string("LastSelection");
                             case CachePolicy::kNone:
                               break;
                           }
                           return std::string("Unknown");
                         });

// First step: an empty cache, every selected page a miss, slots taken from 0 upwards.
TEST(CacheResolveTest, FirstStepFillsEmptySlotsInOrder) {
  for (CachePolicy policy :
       {CachePolicy::kLeastRecentlyUsed, CachePolicy::kLowestScore, CachePolicy::kLastSelection}) {
    ResolveState state(2, 8, 100, 5, /*with_map=*/true);
    state.SetSelection(0, {3, 17, 40, 41, 99});
    state.SetSelection(1, {});
    ASSERT_TRUE(ReferenceCacheResolve(state.Params(policy, 7)).ok());
    EXPECT_EQ(state.hit_count[0], 0);
    EXPECT_EQ(state.miss_count[0], 5);
    EXPECT_EQ(state.hit_count[1], 0);
    EXPECT_EQ(state.miss_count[1], 0);
    for (int32_t i = 0; i < 5; ++i) {
      EXPECT_EQ(state.selected_slots[i], i);
      EXPECT_EQ(state.miss_slots[i], i);
      EXPECT_EQ(state.miss_pages[i], state.selected[i]);
      EXPECT_EQ(state.last_use[i], 7);
    }
    for (int32_t i = 0; i < 5; ++i) EXPECT_EQ(state.selected_slots[5 + i], kPoison);
    ExpectConsistent(state, policy);
  }
}

// Four slots full of pages 10..13 (last used at steps 5, 2, 8, 1); a step selects page 12
// and two new pages: no free slot, so the two least recently used unselected slots (3 at
// step 1, then 1 at step 2) are evicted and given to the misses in slot order.
TEST(CacheResolveTest, MissesBeyondFreeSlotsEvictLeastRecentlyUsed) {
  ResolveState state(1, 4, 50, 3, /*with_map=*/false);
  state.slot_page = {10, 11, 12, 13};
  state.last_use = {5, 2, 8, 1};
  state.SetSelection(0, {12, 20, 30});
  ASSERT_TRUE(ReferenceCacheResolve(state.Params(CachePolicy::kLeastRecentlyUsed, 9)).ok());
  EXPECT_EQ(state.hit_count[0], 1);
  EXPECT_EQ(state.miss_count[0], 2);
  EXPECT_EQ((std::vector<int32_t>(state.selected_slots.begin(), state.selected_slots.end())),
            (std::vector<int32_t>{2, 1, 3}));
  EXPECT_EQ(state.slot_page, (std::vector<int32_t>{10, 20, 12, 30}));
  EXPECT_EQ(state.last_use, (std::vector<int32_t>{5, 9, 9, 9}));
  EXPECT_EQ(state.miss_pages[0], 20);
  EXPECT_EQ(state.miss_slots[0], 1);
  EXPECT_EQ(state.miss_pages[1], 30);
  EXPECT_EQ(state.miss_slots[1], 3);
}

// One free slot and two misses: the free slot goes first, then one eviction.
TEST(CacheResolveTest, FreeSlotsAreUsedBeforeEvicting) {
  ResolveState state(1, 4, 50, 2, /*with_map=*/true);
  state.slot_page = {10, -1, 12, 13};
  state.last_use = {5, 0, 1, 8};
  state.page_slot[10] = 0;
  state.page_slot[12] = 2;
  state.page_slot[13] = 3;
  state.SetSelection(0, {20, 30});
  ASSERT_TRUE(ReferenceCacheResolve(state.Params(CachePolicy::kLeastRecentlyUsed, 9)).ok());
  EXPECT_EQ(state.slot_page, (std::vector<int32_t>{10, 20, 30, 13}));
  EXPECT_EQ(state.page_slot[12], -1);
  EXPECT_EQ(state.page_slot[20], 1);
  EXPECT_EQ(state.page_slot[30], 2);
}

// Lowest score first; equal scores by least recent use; equal both by slot index.
TEST(CacheResolveTest, LowestScoreBreaksTiesByRecencyThenSlot) {
  ResolveState state(1, 6, 50, 3, /*with_map=*/false);
  state.slot_page = {1, 2, 3, 4, 5, 6};
  state.score = {0.5f, 0.25f, 0.25f, 0.9f, 0.25f, 0.1f};
  state.last_use = {1, 4, 3, 1, 3, 9};
  state.SetSelection(0, {20, 21, 22});
  ASSERT_TRUE(ReferenceCacheResolve(state.Params(CachePolicy::kLowestScore, 10)).ok());
  // Order: slot 5 (0.1), then 0.25 at step 3: slots 2 and 4 (slot order); slot 1 stays.
  EXPECT_EQ(state.slot_page, (std::vector<int32_t>{1, 2, 20, 4, 21, 22}));
  EXPECT_EQ(state.score[2], 0.0f);
  EXPECT_EQ(state.score[1], 0.25f);
}

// Last selection: pages not selected in a step leave the cache even with room to spare.
TEST(CacheResolveTest, LastSelectionKeepsExactlyTheSelection) {
  ResolveState state(1, 8, 50, 3, /*with_map=*/true);
  state.SetSelection(0, {1, 2, 3});
  ASSERT_TRUE(ReferenceCacheResolve(state.Params(CachePolicy::kLastSelection, 0)).ok());
  state.SetSelection(0, {2, 4});
  ASSERT_TRUE(ReferenceCacheResolve(state.Params(CachePolicy::kLastSelection, 1)).ok());
  EXPECT_EQ(state.hit_count[0], 1);
  EXPECT_EQ(state.slot_page, (std::vector<int32_t>{4, 2, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(state.page_slot[1], -1);
  EXPECT_EQ(state.page_slot[3], -1);
  state.SetSelection(0, {1});
  ASSERT_TRUE(ReferenceCacheResolve(state.Params(CachePolicy::kLastSelection, 2)).ok());
  EXPECT_EQ(state.hit_count[0], 0) << "page 1 left the cache two steps ago";
}

// A policy is an interface: a custom one (evict the highest page first) drives the twin.
TEST(CacheResolveTest, CustomPolicyInterfaceDrivesVictims) {
  class HighestPageFirst final : public CacheEvictionPolicy {
   public:
    const char* name() const override { return "highest page first"; }
    bool EvictsBefore(const CacheSlotState& a, const CacheSlotState& b) const override {
      return a.page > b.page;
    }
    bool KeepsOnlyLastSelection() const override { return false; }
  };
  ResolveState state(1, 4, 50, 2, /*with_map=*/false);
  state.slot_page = {13, 40, 12, 11};
  state.SetSelection(0, {5, 6});
  ASSERT_TRUE(
      ReferenceCacheResolve(state.Params(CachePolicy::kLeastRecentlyUsed, 3), HighestPageFirst())
          .ok());
  EXPECT_EQ(state.slot_page, (std::vector<int32_t>{5, 6, 12, 11}));
}

TEST(CacheResolveTest, ScoreOrderKeyIsTotalOrder) {
  const std::vector<float> ascending = {-1e30f, -2.0f, -0.0f, 0.0f, 1e-40f, 0.5f, 3.0f, 1e30f};
  for (size_t i = 1; i < ascending.size(); ++i) {
    EXPECT_LT(ScoreOrderKey(ascending[i - 1]), ScoreOrderKey(ascending[i])) << i;
  }
}

// Bad configuration and bad contents: InvalidArgument naming the field, nothing written.
TEST(CacheResolveTest, InvalidInputIsRejectedAndChangesNothing) {
  ResolveState state(2, 8, 100, 4, /*with_map=*/true);
  state.SetSelection(0, {1, 2, 3});
  state.SetSelection(1, {4, 5});
  auto expect_invalid = [&](CacheResolveParams p, const std::string& needle) {
    const ResolveState before = state;
    const absl::Status status = ReferenceCacheResolve(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << needle << ": " << status;
    EXPECT_NE(std::string(status.message()).find(needle), std::string::npos) << status;
    EXPECT_EQ(state.slot_page, before.slot_page);
    EXPECT_EQ(state.page_slot, before.page_slot);
    EXPECT_EQ(state.selected_slots, before.selected_slots);
    EXPECT_EQ(state.hit_count, before.hit_count);
  };
  const CacheResolveParams good = state.Params(CachePolicy::kLeastRecentlyUsed, 0);
  CacheResolveParams p = good;
  p.max_selected = 9;  // more than 8 slots: a configuration error
  expect_invalid(p, "max_selected");
  p = good;
  p.directory.num_slots = 0;
  expect_invalid(p, "num_slots");
  p = good;
  p.directory.max_pages = 0;
  expect_invalid(p, "max_pages");
  p = good;
  p.policy = static_cast<CachePolicy>(9);
  expect_invalid(p, "policy");
  p.policy = CachePolicy::kNone;  // a runtime setting (no cache): nothing to resolve
  expect_invalid(p, "policy");
  p = good;
  p.miss_slots = nullptr;
  expect_invalid(p, "miss_slots");
  p = good;
  p.directory.slot_page = nullptr;
  expect_invalid(p, "slot_page");
  state.SetSelection(1, {5, 4});  // not ascending
  expect_invalid(good, "selected_pages of item 1");
  state.SetSelection(1, {4, 100});  // out of range
  expect_invalid(good, "selected_pages of item 1");
  state.SetSelection(1, {4, 5});
  state.num_selected[0] = 5;  // beyond max_selected
  expect_invalid(good, "num_selected[0]");
  state.num_selected[0] = 3;
  state.slot_page[8 + 2] = 7;
  state.slot_page[8 + 5] = 7;  // one page in two slots
  expect_invalid(good, "two slots");
  state.slot_page[8 + 2] = -1;
  state.slot_page[8 + 5] = -1;
  EXPECT_TRUE(ReferenceCacheResolve(good).ok());
}

// Directory indirection: items mapped to scattered rows of a larger directory (out of order,
// the first and last row among them) behave exactly like a compact directory of those items,
// step after step, outputs kept in item order; the other rows hold junk that would fail
// validation (a page in two slots, pages out of range) and stay byte-identical.
TEST_P(CacheResolvePolicyTest, ItemRowsActLikeACompactDirectory) {
  const CachePolicy policy = GetParam();
  constexpr int32_t kItems = 5, kRows = 13, kSlots = 40, kPages = 200, kSelected = 12;
  constexpr int32_t kSteps = 300;
  const std::vector<int32_t> rows = {11, 0, 7, 3, 12};
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << CachePolicyName(policy) << ", seed " << seed);
  std::mt19937_64 rng(seed);
  ResolveState compact(kItems, kSlots, kPages, kSelected, /*with_map=*/true);
  // Directory arrays of kRows rows; selection and outputs use the first kItems items.
  ResolveState wide(kRows, kSlots, kPages, kSelected, /*with_map=*/true);
  std::uniform_int_distribution<int32_t> junk(-5, kPages + 5);
  for (int32_t r = 0; r < kRows; ++r) {
    if (std::find(rows.begin(), rows.end(), r) != rows.end()) continue;
    for (int32_t s = 0; s < kSlots; ++s) {
      wide.slot_page[r * kSlots + s] = s < 2 ? 9 : junk(rng);  // page 9 in slots 0 and 1
      wide.last_use[r * kSlots + s] = junk(rng);
      wide.score[r * kSlots + s] = static_cast<float>(junk(rng)) * 0.25f;
    }
    for (int32_t page = 0; page < kPages; ++page) wide.page_slot[r * kPages + page] = junk(rng);
  }
  const ResolveState initial = wide;
  auto other_rows_unchanged = [&] {
    for (int32_t r = 0; r < kRows; ++r) {
      if (std::find(rows.begin(), rows.end(), r) != rows.end()) continue;
      for (int32_t s = 0; s < kSlots; ++s) {
        const int64_t i = int64_t{r} * kSlots + s;
        if (wide.slot_page[i] != initial.slot_page[i] || wide.last_use[i] != initial.last_use[i] ||
            std::bit_cast<uint32_t>(wide.score[i]) != std::bit_cast<uint32_t>(initial.score[i])) {
          return testing::AssertionFailure() << "row " << r << " slot " << s << " changed";
        }
      }
      for (int32_t page = 0; page < kPages; ++page) {
        const int64_t i = int64_t{r} * kPages + page;
        if (wide.page_slot[i] != initial.page_slot[i]) {
          return testing::AssertionFailure() << "page_slot of row " << r << " changed";
        }
      }
    }
    return testing::AssertionSuccess();
  };
  DriftingSelections selections(kItems, kPages, kSelected / 2, kSelected, /*keep=*/0.8, seed + 1);
  std::uniform_real_distribution<float> uniform(0.001f, 1.0f);
  for (int32_t step = 0; step < kSteps; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    compact.PoisonOutputs();
    wide.PoisonOutputs();
    for (int32_t item = 0; item < kItems; ++item) {
      const std::vector<int32_t>& sel = selections.Next(item);
      compact.SetSelection(item, sel);
      wide.SetSelection(item, sel);
    }
    ASSERT_TRUE(ReferenceCacheResolve(compact.Params(policy, step)).ok());
    CacheResolveParams p = wide.Params(policy, step);
    p.directory.num_items = kItems;
    p.directory.num_rows = kRows;
    p.item_rows = rows.data();
    const absl::Status status = ReferenceCacheResolve(p);
    ASSERT_TRUE(status.ok()) << status;
    for (int32_t item = 0; item < kItems; ++item) {
      SCOPED_TRACE(testing::Message() << "item " << item << " row " << rows[item]);
      ASSERT_EQ(wide.hit_count[item], compact.hit_count[item]);
      ASSERT_EQ(wide.miss_count[item], compact.miss_count[item]);
      for (int32_t i = 0; i < kSelected; ++i) {
        const int32_t at = item * kSelected + i;
        ASSERT_EQ(wide.selected_slots[at], compact.selected_slots[at]) << i;
        ASSERT_EQ(wide.miss_pages[at], compact.miss_pages[at]) << i;
        ASSERT_EQ(wide.miss_slots[at], compact.miss_slots[at]) << i;
      }
      for (int32_t s = 0; s < kSlots; ++s) {
        const int32_t w = rows[item] * kSlots + s, c = item * kSlots + s;
        ASSERT_EQ(wide.slot_page[w], compact.slot_page[c]) << "slot " << s;
        ASSERT_EQ(wide.last_use[w], compact.last_use[c]) << "slot " << s;
        ASSERT_EQ(wide.score[w], compact.score[c]) << "slot " << s;
      }
      for (int32_t page = 0; page < kPages; ++page) {
        ASSERT_EQ(wide.page_slot[rows[item] * kPages + page],
                  compact.page_slot[item * kPages + page]);
      }
    }
    // Outputs of items past num_items are not written.
    for (int32_t item = kItems; item < kRows; ++item) {
      ASSERT_EQ(wide.hit_count[item], kPoison);
      ASSERT_EQ(wide.selected_slots[item * kSelected], kPoison);
    }
    ASSERT_TRUE(other_rows_unchanged());

    // The score update with the same rows equals the compact one.
    std::vector<float> mass(kItems * kSelected);
    for (float& m : mass) m = uniform(rng);
    CacheScoreUpdateParams update;
    update.slot_score = compact.score.data();
    update.selected_slots = compact.selected_slots.data();
    update.num_selected = compact.num_selected.data();
    update.mass = mass.data();
    update.num_items = kItems;
    update.num_slots = kSlots;
    update.max_selected = kSelected;
    update.decay = step % 2 == 0 ? 0.9f : 1.0f;
    ASSERT_TRUE(ReferenceCacheScoreUpdate(update).ok());
    update.slot_score = wide.score.data();
    update.selected_slots = wide.selected_slots.data();
    update.num_selected = wide.num_selected.data();
    update.item_rows = rows.data();
    update.num_rows = step % 3 == 0 ? 0 : kRows;  // optional
    ASSERT_TRUE(ReferenceCacheScoreUpdate(update).ok());
    for (int32_t item = 0; item < kItems; ++item) {
      for (int32_t s = 0; s < kSlots; ++s) {
        ASSERT_EQ(std::bit_cast<uint32_t>(wide.score[rows[item] * kSlots + s]),
                  std::bit_cast<uint32_t>(compact.score[item * kSlots + s]));
      }
    }
    ASSERT_TRUE(other_rows_unchanged());
  }
}

// Bad item_rows and num_rows: InvalidArgument naming the field, nothing written.
TEST(CacheResolveTest, InvalidItemRowsAreRejectedAndChangeNothing) {
  ResolveState state(6, 8, 100, 4, /*with_map=*/true);  // 6 directory rows
  state.SetSelection(0, {1, 2, 3});
  state.SetSelection(1, {4, 5});
  state.SetSelection(2, {6});
  std::vector<int32_t> rows = {5, 1, 3};
  auto expect_invalid = [&](const CacheResolveParams& p, const std::string& needle) {
    const ResolveState before = state;
    const absl::Status status = ReferenceCacheResolve(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << needle << ": " << status;
    EXPECT_NE(std::string(status.message()).find(needle), std::string::npos) << status;
    EXPECT_EQ(state.slot_page, before.slot_page);
    EXPECT_EQ(state.last_use, before.last_use);
    EXPECT_EQ(state.page_slot, before.page_slot);
    EXPECT_EQ(state.selected_slots, before.selected_slots);
    EXPECT_EQ(state.hit_count, before.hit_count);
  };
  CacheResolveParams good = state.Params(CachePolicy::kLeastRecentlyUsed, 0);
  good.directory.num_items = 3;
  good.directory.num_rows = 6;
  good.item_rows = rows.data();
  CacheResolveParams p = good;
  p.directory.num_rows = 0;
  expect_invalid(p, "directory.num_rows is 0");
  p = good;
  p.directory.num_rows = 2;  // fewer rows than items
  expect_invalid(p, "exceeds directory.num_rows");
  p = good;
  p.item_rows = nullptr;  // rows are the items: num_rows must be 0 or num_items
  expect_invalid(p, "directory.num_rows is 6");
  rows = {5, 1, 6};
  expect_invalid(good, "item_rows[2] is 6");
  rows = {5, -1, 3};
  expect_invalid(good, "item_rows[1] is -1");
  rows = {3, 1, 3};
  expect_invalid(good, "item_rows[0] and item_rows[2] are both 3");
  rows = {5, 1, 3};
  // Row 5's contents are validated: a page in two slots.
  state.slot_page[5 * 8 + 0] = 7;
  state.slot_page[5 * 8 + 4] = 7;
  expect_invalid(good, "item 0 holds page 7 in two slots");
  // ...but rows no item maps to are neither validated nor touched.
  state.slot_page[5 * 8 + 4] = -1;
  state.slot_page[4 * 8 + 0] = 7;
  state.slot_page[4 * 8 + 1] = 7;
  const std::vector<int32_t> row4(state.slot_page.begin() + 32, state.slot_page.begin() + 40);
  ASSERT_TRUE(ReferenceCacheResolve(good).ok());
  EXPECT_EQ(std::vector<int32_t>(state.slot_page.begin() + 32, state.slot_page.begin() + 40), row4);
  // Without item_rows, num_rows == num_items is accepted.
  state.slot_page[4 * 8 + 1] = -1;
  p = state.Params(CachePolicy::kLeastRecentlyUsed, 1);
  p.directory.num_rows = 6;
  EXPECT_TRUE(ReferenceCacheResolve(p).ok());

  // The score update's rows.
  std::vector<float> score(6 * 8, 1.0f);
  std::vector<int32_t> slots = {1, 2, 3, 0}, count = {2, 2};
  std::vector<float> mass = {1.0f, 2.0f, 3.0f, 4.0f};
  std::vector<int32_t> score_rows = {4, 4};
  CacheScoreUpdateParams u;
  u.slot_score = score.data();
  u.selected_slots = slots.data();
  u.num_selected = count.data();
  u.mass = mass.data();
  u.num_items = 2;
  u.num_slots = 8;
  u.max_selected = 2;
  u.item_rows = score_rows.data();
  const std::vector<float> unchanged = score;
  absl::Status status = ReferenceCacheScoreUpdate(u);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("are both 4"), std::string::npos) << status;
  score_rows = {4, -2};
  EXPECT_EQ(ReferenceCacheScoreUpdate(u).code(), absl::StatusCode::kInvalidArgument);
  score_rows = {4, 6};
  u.num_rows = 6;
  EXPECT_EQ(ReferenceCacheScoreUpdate(u).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(score, unchanged);
  score_rows = {4, 0};
  ASSERT_TRUE(ReferenceCacheScoreUpdate(u).ok());
  EXPECT_EQ(score[4 * 8 + 1], 2.0f);
  EXPECT_EQ(score[4 * 8 + 2], 3.0f);
  EXPECT_EQ(score[0 * 8 + 3], 4.0f);
  EXPECT_EQ(score[0 * 8 + 0], 5.0f);
  EXPECT_EQ(score[1 * 8 + 1], 1.0f);  // row 1: no item
}

TEST(CacheResolveTest, ScoreUpdateValidation) {
  std::vector<float> score(8, 0.0f);
  std::vector<int32_t> slots = {1, 9}, count = {2};
  std::vector<float> mass = {1.0f, 2.0f};
  CacheScoreUpdateParams p;
  p.slot_score = score.data();
  p.selected_slots = slots.data();
  p.num_selected = count.data();
  p.mass = mass.data();
  p.num_items = 1;
  p.num_slots = 8;
  p.max_selected = 2;
  EXPECT_EQ(ReferenceCacheScoreUpdate(p).code(), absl::StatusCode::kInvalidArgument);  // slot 9
  slots[1] = 3;
  p.decay = 0.0f;
  EXPECT_EQ(ReferenceCacheScoreUpdate(p).code(), absl::StatusCode::kInvalidArgument);
  p.decay = 0.5f;
  score[1] = 4.0f;
  ASSERT_TRUE(ReferenceCacheScoreUpdate(p).ok());
  EXPECT_EQ(score[1], 3.0f);
  EXPECT_EQ(score[3], 2.0f);
}

}  // namespace
}  // namespace kvtier
