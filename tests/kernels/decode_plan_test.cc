// ReferenceDecodePlan, ReferenceBuildSelectedPages, ReferenceComputePageMass and
// ReferenceUpdatePageScores, the host twins of the decode-step planning kernels, against
// expectations built here from the header's definitions: random sequences (plus the edge cases: one
// token, shorter than the sinks, at the window's boundaries, completing a page, the last token that
// fits) written into poisoned outputs, every address checked to lie where the storage layout puts
// it and nothing written past the lists; bad input is rejected with InvalidArgument naming what was
// wrong, and nothing is written.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/cache_resolve.h"
#include "kernels/decode_plan.h"
#include "tests/testing/aligned_bytes.h"
#include "tests/testing/poison.h"

namespace kvtier {
namespace {

using testing_util::IsPoisoned;
using testing_util::kPoisonByte;
using testing_util::Poisoned;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
bool AllPoisoned(const std::vector<T>& values) {
  return std::all_of(values.begin(), values.end(), [](const T& v) { return IsPoisoned(v); });
}

// ---- DecodePlan --------------------------------------------------------------------------

struct PlanCase {
  int32_t page_size, sinks, window, ring, max_pages, cache_slots;
  int32_t layers, heads, layer, num_slots, batch;
  int64_t page_bytes, bounds_bytes;
};

std::string Describe(const PlanCase& c) {
  return testing::PrintToString(std::vector<int64_t>{
      c.page_size, c.sinks, c.window, c.ring, c.max_pages, c.cache_slots, c.layers, c.heads,
      c.layer, c.num_slots, c.batch, c.page_bytes, c.bounds_bytes});
}

// Storage pools, host page tables and a batch of one geometry; every pool is a real
// allocation so an address can be checked to lie inside it.
class PlanWorld {
 public:
  PlanWorld(const PlanCase& c, std::mt19937_64& rng)
      : c_(c),
        rows_(int64_t{c.num_slots} * c.layers * c.heads),
        hot_k_(rows_ * (c.sinks + c.ring) * c.page_bytes),
        hot_v_(rows_ * (c.sinks + c.ring) * c.page_bytes),
        slot_k_(rows_ * c.cache_slots * c.page_bytes),
        slot_v_(rows_ * c.cache_slots * c.page_bytes),
        bounds_(rows_ * c.max_pages * c.bounds_bytes),
        frames_(2 * rows_ * c.max_pages * 16),
        k_table_(rows_ * c.max_pages),
        v_table_(rows_ * c.max_pages) {
    // Host frames in a shuffled order, so an entry read from the wrong place shows.
    std::vector<int64_t> order(2 * rows_ * c.max_pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t e = 0; e < k_table_.size(); ++e) {
      k_table_[e] = frames_.data() + order[2 * e] * 16;
      v_table_[e] = frames_.data() + order[2 * e + 1] * 16;
    }
    storage.page_size = c.page_size;
    storage.sink_pages = c.sinks;
    storage.window_pages = c.window;
    storage.ring_pages = c.ring;
    storage.max_pages = c.max_pages;
    storage.cache_slots = c.cache_slots;
    storage.page_bytes = c.page_bytes;
    // Two summary arrays of half a page's summary bytes each (a kind with one array, page
    // bounds, is the first half).
    storage.summary_bytes = c.bounds_bytes;
    storage.summary_arrays = 2;
    storage.summary_offset[0] = 0;
    storage.summary_stride[0] = c.bounds_bytes / 2;
    storage.summary_offset[1] = int64_t{c.max_pages} * (c.bounds_bytes / 2);
    storage.summary_stride[1] = c.bounds_bytes / 2;
    storage.hot_k = hot_k_.data();
    storage.hot_v = hot_v_.data();
    storage.slot_k = slot_k_.data();
    storage.slot_v = slot_v_.data();
    storage.summaries = bounds_.data();
    storage.host_k_table = k_table_.data();
    storage.host_v_table = v_table_.data();

    // Distinct slots; token counts: the edge cases first, then random ones.
    std::vector<int32_t> slots(c.num_slots);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    seq_slot.assign(slots.begin(), slots.begin() + c.batch);
    const int64_t P = c.page_size, S = c.sinks, W = c.window, M = c.max_pages;
    std::vector<int64_t> edges = {1,           P - 1,
                                  P,           P + 1,
                                  S * P - 1,   S * P,
                                  S * P + 1,   (S + W) * P - 1,
                                  (S + W) * P, (S + W + 1) * P - 1,
                                  M * P - 2,   M * P - 1};
    for (int64_t t : edges) {
      if (t >= 1 && t <= M * P - 1 && static_cast<int32_t>(tokens.size()) < c.batch) {
        tokens.push_back(static_cast<int32_t>(t));
      }
    }
    while (static_cast<int32_t>(tokens.size()) < c.batch) {
      tokens.push_back(static_cast<int32_t>(1 + rng() % (M * P - 1)));
    }
    std::shuffle(tokens.begin(), tokens.end(), rng);
  }

  // Nulls every host table entry that this step does not write back to (pages that exist but
  // do not complete now are never read either).
  void NullTablesExceptCompletingPages() {
    std::vector<const void*> k(k_table_.size(), nullptr), v(v_table_.size(), nullptr);
    for (int32_t b = 0; b < c_.batch; ++b) {
      if (tokens[b] % c_.page_size != c_.page_size - 1) continue;
      for (int32_t h = 0; h < c_.heads; ++h) {
        const int64_t e = Row(b, h) * c_.max_pages + tokens[b] / c_.page_size;
        k[e] = k_table_[e];
        v[e] = v_table_[e];
      }
    }
    k_table_ = k;
    v_table_ = v;
    storage.host_k_table = k_table_.data();
    storage.host_v_table = v_table_.data();
  }

  int64_t Row(int32_t b, int32_t h) const {
    return (int64_t{seq_slot[b]} * c_.layers + c_.layer) * c_.heads + h;
  }
  const PlanCase& plan_case() const { return c_; }
  std::vector<const void*>& k_table() { return k_table_; }

  ItemStorage storage;
  std::vector<int32_t> seq_slot;
  std::vector<int32_t> tokens;

 private:
  PlanCase c_;
  int64_t rows_;
  AlignedBytes hot_k_, hot_v_, slot_k_, slot_v_, bounds_, frames_;
  std::vector<const void*> k_table_, v_table_;
};

// Every output array of DecodePlan, poisoned.
struct PlanOutputs {
  PlanOutputs(int32_t batch, int32_t heads, int32_t capacity)
      : append_k(batch * heads, Poisoned<void*>()),
        append_v(batch * heads, Poisoned<void*>()),
        append_row(batch, Poisoned<int32_t>()),
        writeback_k(batch * heads, Poisoned<void*>()),
        writeback_v(batch * heads, Poisoned<void*>()),
        summary_tokens(batch * heads, Poisoned<int32_t>()),
        summary_bounds(batch * heads, Poisoned<void*>()),
        summary_second(batch * heads, Poisoned<void*>()),
        select_begin(batch * heads, Poisoned<int32_t>()),
        select_end(batch * heads, Poisoned<int32_t>()),
        select_bounds(batch * heads, Poisoned<const void*>()),
        select_second(batch * heads, Poisoned<const void*>()),
        item_row(batch * heads, Poisoned<int32_t>()),
        page_table_offset(batch * heads, Poisoned<int64_t>()),
        slot_k_base(batch * heads, Poisoned<void*>()),
        slot_v_base(batch * heads, Poisoned<void*>()),
        hot_offsets(batch * heads + 1, Poisoned<int32_t>()),
        hot_k(capacity, Poisoned<const void*>()),
        hot_v(capacity, Poisoned<const void*>()),
        hot_last_tokens(batch * heads, Poisoned<int32_t>()) {}

  void Attach(DecodePlanParams& p) {
    p.append_k = append_k.data();
    p.append_v = append_v.data();
    p.append_row = append_row.data();
    p.writeback_k_dst = writeback_k.data();
    p.writeback_v_dst = writeback_v.data();
    p.summary_tokens = summary_tokens.data();
    p.summary_dst[0] = summary_bounds.data();
    p.summary_dst[1] = summary_second.data();
    p.select_begin = select_begin.data();
    p.select_end = select_end.data();
    p.select_summary[0] = select_bounds.data();
    p.select_summary[1] = select_second.data();
    p.item_row = item_row.data();
    p.page_table_offset = page_table_offset.data();
    p.slot_k_base = slot_k_base.data();
    p.slot_v_base = slot_v_base.data();
    p.hot_page_offsets = hot_offsets.data();
    p.hot_k_pages = hot_k.data();
    p.hot_v_pages = hot_v.data();
    p.hot_last_page_tokens = hot_last_tokens.data();
  }

  bool Untouched() const {
    return AllPoisoned(append_k) && AllPoisoned(append_v) && AllPoisoned(append_row) &&
           AllPoisoned(writeback_k) && AllPoisoned(writeback_v) && AllPoisoned(summary_tokens) &&
           AllPoisoned(summary_bounds) && AllPoisoned(summary_second) &&
           AllPoisoned(select_begin) && AllPoisoned(select_end) && AllPoisoned(select_bounds) &&
           AllPoisoned(select_second) && AllPoisoned(item_row) && AllPoisoned(page_table_offset) &&
           AllPoisoned(slot_k_base) && AllPoisoned(slot_v_base) && AllPoisoned(hot_offsets) &&
           AllPoisoned(hot_k) && AllPoisoned(hot_v) && AllPoisoned(hot_last_tokens);
  }

  std::vector<void*> append_k, append_v;
  std::vector<int32_t> append_row;
  std::vector<void*> writeback_k, writeback_v;
  std::vector<int32_t> summary_tokens;
  std::vector<void*> summary_bounds, summary_second;
  std::vector<int32_t> select_begin, select_end;
  std::vector<const void*> select_bounds, select_second;
  std::vector<int32_t> item_row;
  std::vector<int64_t> page_table_offset;
  std::vector<void*> slot_k_base, slot_v_base;
  std::vector<int32_t> hot_offsets;
  std::vector<const void*> hot_k, hot_v;
  std::vector<int32_t> hot_last_tokens;
};

DecodePlanParams MakePlanParams(PlanWorld& world, PlanOutputs& out) {
  const PlanCase& c = world.plan_case();
  DecodePlanParams p;
  p.storage = world.storage;
  p.num_layers = c.layers;
  p.num_kv_heads = c.heads;
  p.layer = c.layer;
  p.batch = c.batch;
  p.seq_slot = world.seq_slot.data();
  p.tokens_before = world.tokens.data();
  out.Attach(p);
  return p;
}

int32_t HotCapacity(const PlanCase& c) { return c.batch * c.heads * (c.sinks + c.window); }

// Checks `out` against the header's definitions for `world`'s batch.
void ExpectPlan(const PlanWorld& world, const PlanOutputs& out) {
  const PlanCase& c = world.plan_case();
  const ItemStorage& s = world.storage;
  const int32_t P = c.page_size, S = c.sinks, W = c.window, R = c.ring;
  auto hot_index = [&](int32_t j) { return j < S ? j : S + (j - S) % R; };
  int32_t offset = 0;
  ASSERT_EQ(out.hot_offsets[0], 0);
  for (int32_t b = 0; b < c.batch; ++b) {
    const int32_t t = world.tokens[b];
    const int32_t n = t / P + 1;
    SCOPED_TRACE(testing::Message()
                 << "entry " << b << " slot " << world.seq_slot[b] << " T " << t << " n " << n);
    EXPECT_EQ(out.append_row[b], t % P);
    for (int32_t h = 0; h < c.heads; ++h) {
      SCOPED_TRACE(testing::Message() << "KV head " << h);
      const int32_t i = b * c.heads + h;
      const int64_t r = world.Row(b, h);
      auto hot_page = [&](std::byte* pool, int32_t j) {
        return pool + (r * (S + R) + hot_index(j)) * c.page_bytes;
      };
      EXPECT_EQ(out.append_k[i], hot_page(s.hot_k, t / P));
      EXPECT_EQ(out.append_v[i], hot_page(s.hot_v, t / P));
      const bool completes = t % P == P - 1;
      const int64_t entry = r * c.max_pages + t / P;
      EXPECT_EQ(out.writeback_k[i], completes ? s.host_k_table[entry] : nullptr);
      EXPECT_EQ(out.writeback_v[i], completes ? s.host_v_table[entry] : nullptr);
      EXPECT_EQ(out.summary_tokens[i], t % P + 1);
      std::byte* region = s.summaries + r * c.max_pages * c.bounds_bytes;
      const int64_t half = c.bounds_bytes / 2;
      EXPECT_EQ(out.summary_bounds[i], region + (t / P) * half);
      EXPECT_EQ(out.summary_second[i], region + c.max_pages * half + (t / P) * half);
      EXPECT_EQ(out.select_begin[i], S);
      EXPECT_EQ(out.select_end[i], std::max(S, n - W));
      EXPECT_EQ(out.select_bounds[i], region);
      EXPECT_EQ(out.select_second[i], region + c.max_pages * half);
      EXPECT_EQ(out.item_row[i], r);
      EXPECT_EQ(out.page_table_offset[i], r * c.max_pages);
      EXPECT_EQ(out.slot_k_base[i], s.slot_k + r * c.cache_slots * c.page_bytes);
      EXPECT_EQ(out.slot_v_base[i], s.slot_v + r * c.cache_slots * c.page_bytes);
      EXPECT_EQ(out.hot_last_tokens[i], t + 1 - (n - 1) * P);

      // Hot pages: every page that is a sink or among the last W, ascending.
      std::vector<int32_t> pages;
      for (int32_t j = 0; j < n; ++j) {
        if (j < S || j >= n - W) pages.push_back(j);
      }
      ASSERT_EQ(out.hot_offsets[i + 1] - out.hot_offsets[i], static_cast<int32_t>(pages.size()));
      ASSERT_EQ(out.hot_offsets[i], offset);
      std::set<int32_t> indexes;
      for (size_t q = 0; q < pages.size(); ++q) {
        EXPECT_EQ(out.hot_k[offset + q], hot_page(s.hot_k, pages[q])) << "hot page " << q;
        EXPECT_EQ(out.hot_v[offset + q], hot_page(s.hot_v, pages[q])) << "hot page " << q;
        indexes.insert(hot_index(pages[q]));
      }
      EXPECT_EQ(indexes.size(), pages.size()) << "two hot pages share a ring slot";
      EXPECT_EQ(pages.back(), n - 1) << "the last hot page is the sequence's last page";
      offset += static_cast<int32_t>(pages.size());
    }
  }
  ASSERT_LE(offset, HotCapacity(c));
  for (int32_t k = offset; k < HotCapacity(c); ++k) {
    ASSERT_TRUE(IsPoisoned(out.hot_k[k]) && IsPoisoned(out.hot_v[k]))
        << "hot list entry " << k << " past the end (" << offset << ") was written";
  }
}

class DecodePlanTwinTest : public ::testing::TestWithParam<PlanCase> {};

TEST_P(DecodePlanTwinTest, MatchesLayoutDefinitions) {
  const PlanCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << Describe(c) << " seed " << seed);
  std::mt19937_64 rng(seed);
  PlanWorld world(c, rng);
  PlanOutputs out(c.batch, c.heads, HotCapacity(c));
  const DecodePlanParams p = MakePlanParams(world, out);
  const absl::Status status = ReferenceDecodePlan(p);
  ASSERT_TRUE(status.ok()) << status;
  ExpectPlan(world, out);
}

TEST_P(DecodePlanTwinTest, NeverReadsTableEntriesOfPagesNotCompleting) {
  const PlanCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << Describe(c) << " seed " << seed);
  std::mt19937_64 rng(seed);
  PlanWorld world(c, rng);
  world.NullTablesExceptCompletingPages();
  PlanOutputs out(c.batch, c.heads, HotCapacity(c));
  const absl::Status status = ReferenceDecodePlan(MakePlanParams(world, out));
  ASSERT_TRUE(status.ok()) << status;
  ExpectPlan(world, out);
}

// P, S, W, R, max_pages, C, layers, heads, layer, slots, batch, page_bytes, bounds_bytes.
INSTANTIATE_TEST_SUITE_P(
    Geometries, DecodePlanTwinTest,
    ::testing::Values(PlanCase{16, 1, 4, 5, 64, 8, 3, 4, 1, 40, 32, 64, 32},
                      PlanCase{16, 2, 16, 17, 300, 16, 2, 8, 1, 70, 64, 64, 16},  // 64 x 8
                      PlanCase{32, 0, 2, 3, 16, 4, 2, 2, 1, 20, 16, 32, 16},      // no sinks
                      PlanCase{64, 4, 3, 6, 12, 2, 1, 8, 0, 24, 24, 48, 16},      // short sequences
                      PlanCase{16, 2, 1, 2, 8, 1, 2, 1, 1, 12, 12, 16, 16},       // W = 1, R = 2
                      PlanCase{32, 3, 5, 9, 9, 3, 4, 3, 3, 15, 1, 16, 16},        // one entry
                      PlanCase{16, 0, 1, 2, 1, 1, 1, 1, 0, 14, 14, 16, 16}));     // one page

TEST(DecodePlanTest, EmptyBatchWritesNothingAndNeedsNoArrays) {
  DecodePlanParams p;
  p.storage = ItemStorage{.page_size = 16,
                          .sink_pages = 1,
                          .window_pages = 2,
                          .ring_pages = 3,
                          .max_pages = 8,
                          .cache_slots = 4,
                          .page_bytes = 4096,
                          .summary_bytes = 512,
                          .summary_stride = {512}};
  p.num_layers = 2;
  p.num_kv_heads = 8;
  p.layer = 1;
  p.batch = 0;
  EXPECT_TRUE(ReferenceDecodePlan(p).ok());
}

TEST(DecodePlanTest, InvalidInputIsRejectedAndWritesNothing) {
  const PlanCase c{16, 1, 4, 5, 32, 8, 2, 2, 1, 10, 6, 64, 32};
  struct Case {
    std::string needle;
    std::function<void(DecodePlanParams&, PlanWorld&)> mutate;
  };
  const std::vector<Case> cases = {
      {"storage.page_size", [](auto& p, auto&) { p.storage.page_size = 24; }},
      {"storage.page_size", [](auto& p, auto&) { p.storage.page_size = 0; }},
      {"storage.sink_pages", [](auto& p, auto&) { p.storage.sink_pages = -1; }},
      {"storage.window_pages", [](auto& p, auto&) { p.storage.window_pages = 0; }},
      {"storage.ring_pages", [](auto& p, auto&) { p.storage.ring_pages = 4; }},
      {"storage.max_pages", [](auto& p, auto&) { p.storage.max_pages = 0; }},
      {"storage.cache_slots", [](auto& p, auto&) { p.storage.cache_slots = 0; }},
      {"storage.page_bytes", [](auto& p, auto&) { p.storage.page_bytes = 8; }},
      {"storage.summary_bytes", [](auto& p, auto&) { p.storage.summary_bytes = 0; }},
      {"storage.summary_arrays", [](auto& p, auto&) { p.storage.summary_arrays = 0; }},
      {"storage.summary_arrays",
       [](auto& p, auto&) { p.storage.summary_arrays = kMaxSummaryArrays + 1; }},
      {"storage.summary_offset/stride[1]",
       [](auto& p, auto&) { p.storage.summary_stride[1] = p.storage.summary_bytes; }},
      {"summary_dst[1]", [](auto& p, auto&) { p.summary_dst[1] = nullptr; }},
      {"num_layers", [](auto& p, auto&) { p.num_layers = 0; }},
      {"num_kv_heads", [](auto& p, auto&) { p.num_kv_heads = 0; }},
      {"layer", [](auto& p, auto&) { p.layer = 2; }},
      {"layer", [](auto& p, auto&) { p.layer = -1; }},
      {"batch", [](auto& p, auto&) { p.batch = -1; }},
      {"batch", [](auto& p, auto&) { p.num_kv_heads = 1 << 20, p.batch = 1 << 12; }},
      {"storage.hot_k", [](auto& p, auto&) { p.storage.hot_k = nullptr; }},
      {"storage.hot_v", [](auto& p, auto&) { p.storage.hot_v += 8; }},
      {"storage.host_v_table", [](auto& p, auto&) { p.storage.host_v_table = nullptr; }},
      {"tokens_before", [](auto& p, auto&) { p.tokens_before = nullptr; }},
      {"hot_v_pages", [](auto& p, auto&) { p.hot_v_pages = nullptr; }},
      {"hot_last_page_tokens", [](auto& p, auto&) { p.hot_last_page_tokens = nullptr; }},
      {"seq_slot[3]", [](auto&, auto& w) { w.seq_slot[3] = -2; }},
      {"tokens_before[2]", [](auto&, auto& w) { w.tokens[2] = 0; }},
      {"tokens_before[5]", [](auto&, auto& w) { w.tokens[5] = -40; }},
      {"tokens_before[4]", [](auto&, auto& w) { w.tokens[4] = 32 * 16; }},  // no room
      {"item_row", [](auto&, auto& w) { w.seq_slot[1] = std::numeric_limits<int32_t>::max(); }},
      {"completes page 3",
       [](auto&, auto& w) {
         // Entry 5 completes page 3, whose K table entry is missing.
         w.tokens[5] = 3 * 16 + 15;
         w.k_table()[w.Row(5, 1) * 32 + 3] = nullptr;
       }},
  };
  for (const Case& bad : cases) {
    SCOPED_TRACE(bad.needle);
    std::mt19937_64 rng(7);
    PlanWorld copy(c, rng);  // the same fresh inputs for each case
    PlanOutputs out(c.batch, c.heads, HotCapacity(c));
    DecodePlanParams p = MakePlanParams(copy, out);
    bad.mutate(p, copy);
    const absl::Status status = ReferenceDecodePlan(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(bad.needle), std::string::npos) << status;
    EXPECT_TRUE(out.Untouched());
  }
}

// ---- BuildSelectedPages ------------------------------------------------------------------

struct SelectedCase {
  int32_t num_items, max_selected, cache_slots, page_size;
  int64_t page_bytes;
};

struct SelectedWorld {
  SelectedWorld(const SelectedCase& c, std::mt19937_64& rng)
      : c(c),
        k_pool(int64_t{c.num_items} * c.cache_slots * c.page_bytes),
        v_pool(int64_t{c.num_items} * c.cache_slots * c.page_bytes),
        k_base(c.num_items),
        v_base(c.num_items),
        selected(int64_t{c.num_items} * c.max_selected, -7),  // entries past the count: unread
        num_selected(c.num_items),
        hits(c.num_items),
        misses(c.num_items),
        page_offsets(c.num_items + 1, Poisoned<int32_t>()),
        k_pages(int64_t{c.num_items} * c.max_selected, Poisoned<const void*>()),
        v_pages(int64_t{c.num_items} * c.max_selected, Poisoned<const void*>()),
        last_tokens(c.num_items, Poisoned<int32_t>()),
        counters{rng() % 1000, rng() % 1000, rng() % 1000} {
    // Items' pools in a shuffled order.
    std::vector<int32_t> order(c.num_items);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int32_t i = 0; i < c.num_items; ++i) {
      const int64_t at = int64_t{order[i]} * c.cache_slots * c.page_bytes;
      k_base[i] = k_pool.data() + at;
      v_base[i] = v_pool.data() + at;
      // Counts: none, all, or random; slots random (distinct within an item).
      const uint64_t kind = rng() % 4;
      num_selected[i] = kind == 0   ? 0
                        : kind == 1 ? c.max_selected
                                    : static_cast<int32_t>(rng() % (c.max_selected + 1));
      std::vector<int32_t> slots(c.cache_slots);
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), rng);
      for (int32_t e = 0; e < num_selected[i]; ++e) {
        selected[int64_t{i} * c.max_selected + e] = slots[e];
      }
      hits[i] = static_cast<int32_t>(rng() % (num_selected[i] + 1));
      misses[i] = num_selected[i] - hits[i];
    }
  }

  SelectedPagesParams Params() {
    SelectedPagesParams p;
    p.num_items = c.num_items;
    p.max_selected = c.max_selected;
    p.page_size = c.page_size;
    p.page_bytes = c.page_bytes;
    p.slot_k_base = k_base.data();
    p.slot_v_base = v_base.data();
    p.selected_slots = selected.data();
    p.num_selected = num_selected.data();
    p.hit_count = hits.data();
    p.miss_count = misses.data();
    p.page_offsets = page_offsets.data();
    p.k_pages = k_pages.data();
    p.v_pages = v_pages.data();
    p.last_page_tokens = last_tokens.data();
    p.counters = counters;
    return p;
  }

  bool OutputsUntouched(const unsigned long long (&initial)[3]) const {
    return AllPoisoned(page_offsets) && AllPoisoned(k_pages) && AllPoisoned(v_pages) &&
           AllPoisoned(last_tokens) && std::equal(initial, initial + 3, counters);
  }

  SelectedCase c;
  AlignedBytes k_pool, v_pool;
  std::vector<void*> k_base, v_base;
  std::vector<int32_t> selected, num_selected, hits, misses;
  std::vector<int32_t> page_offsets;
  std::vector<const void*> k_pages, v_pages;
  std::vector<int32_t> last_tokens;
  unsigned long long counters[3];
};

class SelectedPagesTwinTest : public ::testing::TestWithParam<SelectedCase> {};

TEST_P(SelectedPagesTwinTest, ListsSlotsInSelectionOrderAndCounts) {
  const SelectedCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << c.num_items << " items, max " << c.max_selected << ", seed "
                                  << seed);
  std::mt19937_64 rng(seed);
  SelectedWorld w(c, rng);
  const unsigned long long initial[3] = {w.counters[0], w.counters[1], w.counters[2]};
  const absl::Status status = ReferenceBuildSelectedPages(w.Params());
  ASSERT_TRUE(status.ok()) << status;

  int32_t offset = 0;
  unsigned long long selected = 0, hits = 0, misses = 0;
  ASSERT_EQ(w.page_offsets[0], 0);
  for (int32_t i = 0; i < c.num_items; ++i) {
    SCOPED_TRACE(testing::Message() << "item " << i);
    const int32_t n = w.num_selected[i];
    ASSERT_EQ(w.page_offsets[i + 1], offset + n);
    EXPECT_EQ(w.last_tokens[i], c.page_size);
    for (int32_t e = 0; e < n; ++e) {
      const int64_t slot = w.selected[int64_t{i} * c.max_selected + e];
      EXPECT_EQ(w.k_pages[offset + e], static_cast<std::byte*>(w.k_base[i]) + slot * c.page_bytes);
      EXPECT_EQ(w.v_pages[offset + e], static_cast<std::byte*>(w.v_base[i]) + slot * c.page_bytes);
    }
    offset += n;
    selected += n;
    hits += w.hits[i];
    misses += w.misses[i];
  }
  for (size_t k = offset; k < w.k_pages.size(); ++k) {
    ASSERT_TRUE(IsPoisoned(w.k_pages[k]) && IsPoisoned(w.v_pages[k])) << "entry " << k;
  }
  EXPECT_EQ(w.counters[0], initial[0] + selected);
  EXPECT_EQ(w.counters[1], initial[1] + hits);
  EXPECT_EQ(w.counters[2], initial[2] + misses);
}

TEST_P(SelectedPagesTwinTest, CountersAreOptional) {
  const SelectedCase c = GetParam();
  std::mt19937_64 rng(std::random_device{}());
  SelectedWorld w(c, rng);
  SelectedPagesParams p = w.Params();
  p.counters = nullptr;
  p.hit_count = nullptr;
  p.miss_count = nullptr;
  ASSERT_TRUE(ReferenceBuildSelectedPages(p).ok());
  EXPECT_EQ(w.page_offsets[c.num_items],
            std::accumulate(w.num_selected.begin(), w.num_selected.end(), 0));
}

TEST_P(SelectedPagesTwinTest, AppendedListFollowsEachItemsSelection) {
  const SelectedCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  SelectedWorld w(c, rng);
  constexpr int32_t kMaxAppended = 4;
  std::vector<int32_t> append_offsets(c.num_items + 1, 0), append_last(c.num_items);
  std::vector<const void*> append_k, append_v;
  // Reserved so that the lists have storage even when no item appends: the
  // three append pointers are all set or all null.
  append_k.reserve(int64_t{c.num_items} * kMaxAppended + 1);
  append_v.reserve(int64_t{c.num_items} * kMaxAppended + 1);
  for (int32_t i = 0; i < c.num_items; ++i) {
    const int32_t n = static_cast<int32_t>(rng() % (kMaxAppended + 1));
    for (int32_t a = 0; a < n; ++a) {
      append_k.push_back(w.k_pool.data() + 16 * (rng() % 64));
      append_v.push_back(w.v_pool.data() + 16 * (rng() % 64));
    }
    append_offsets[i + 1] = append_offsets[i] + n;
    append_last[i] = 1 + static_cast<int32_t>(rng() % c.page_size);
  }
  w.k_pages.resize(w.k_pages.size() + append_k.size(), Poisoned<const void*>());
  w.v_pages.resize(w.v_pages.size() + append_v.size(), Poisoned<const void*>());
  SelectedPagesParams p = w.Params();
  p.append_offsets = append_offsets.data();
  p.append_k = append_k.data();
  p.append_v = append_v.data();
  p.append_last = append_last.data();
  const unsigned long long initial = w.counters[0];
  ASSERT_TRUE(ReferenceBuildSelectedPages(p).ok());
  int32_t offset = 0;
  for (int32_t i = 0; i < c.num_items; ++i) {
    SCOPED_TRACE(testing::Message() << "item " << i);
    const int32_t n = w.num_selected[i];
    const int32_t appended = append_offsets[i + 1] - append_offsets[i];
    ASSERT_EQ(w.page_offsets[i], offset);
    ASSERT_EQ(w.page_offsets[i + 1], offset + n + appended);
    for (int32_t e = 0; e < n; ++e) {
      const int64_t slot = w.selected[int64_t{i} * c.max_selected + e];
      EXPECT_EQ(w.k_pages[offset + e], static_cast<std::byte*>(w.k_base[i]) + slot * c.page_bytes);
    }
    for (int32_t a = 0; a < appended; ++a) {
      EXPECT_EQ(w.k_pages[offset + n + a], append_k[append_offsets[i] + a]);
      EXPECT_EQ(w.v_pages[offset + n + a], append_v[append_offsets[i] + a]);
    }
    EXPECT_EQ(w.last_tokens[i], appended > 0 ? append_last[i] : c.page_size);
    offset += n + appended;
  }
  EXPECT_EQ(w.counters[0], initial + static_cast<unsigned long long>(offset));
  // Part of an appended list alone is refused.
  p.append_v = nullptr;
  EXPECT_EQ(ReferenceBuildSelectedPages(p).code(), absl::StatusCode::kInvalidArgument);
}

// num_items, max_selected, cache slots, P, page_bytes.
INSTANTIATE_TEST_SUITE_P(Shapes, SelectedPagesTwinTest,
                         ::testing::Values(SelectedCase{1, 1, 1, 16, 16},
                                           SelectedCase{37, 5, 9, 32, 4096},
                                           SelectedCase{512, 32, 64, 16, 64},
                                           SelectedCase{300, 64, 80, 64, 256}));

TEST(SelectedPagesTest, InvalidInputIsRejectedAndWritesNothing) {
  std::mt19937_64 rng(11);
  const SelectedWorld world(SelectedCase{6, 4, 8, 16, 64}, rng);
  struct Case {
    std::string needle;
    std::function<void(SelectedPagesParams&, SelectedWorld&)> mutate;
  };
  const std::vector<Case> cases = {
      {"num_items", [](auto& p, auto&) { p.num_items = -1; }},
      {"num_items", [](auto& p, auto&) { p.max_selected = 1 << 20, p.num_items = 1 << 12; }},
      {"max_selected", [](auto& p, auto&) { p.max_selected = 0; }},
      {"page_size", [](auto& p, auto&) { p.page_size = 0; }},
      {"page_bytes", [](auto& p, auto&) { p.page_bytes = 24; }},
      {"selected_slots", [](auto& p, auto&) { p.selected_slots = nullptr; }},
      {"slot_v_base", [](auto& p, auto&) { p.slot_v_base = nullptr; }},
      {"last_page_tokens", [](auto& p, auto&) { p.last_page_tokens = nullptr; }},
      {"hit_count", [](auto& p, auto&) { p.hit_count = nullptr; }},
      {"num_selected[2]", [](auto&, auto& w) { w.num_selected[2] = 5; }},
      {"num_selected[4]", [](auto&, auto& w) { w.num_selected[4] = -1; }},
      {"entry 0 is -3",
       [](auto&, auto& w) {
         w.num_selected[3] = 2;
         w.selected[3 * 4] = -3;
       }},
      {"null slot base",
       [](auto&, auto& w) {
         w.num_selected[1] = 1;
         w.k_base[1] = nullptr;
       }},
      {"miss_count -2", [](auto&, auto& w) { w.misses[0] = -2; }},
  };
  for (const Case& bad : cases) {
    SCOPED_TRACE(bad.needle);
    SelectedWorld w = world;
    SelectedPagesParams p = w.Params();
    const unsigned long long initial[3] = {w.counters[0], w.counters[1], w.counters[2]};
    bad.mutate(p, w);
    const absl::Status status = ReferenceBuildSelectedPages(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(bad.needle), std::string::npos) << status;
    EXPECT_TRUE(w.OutputsUntouched(initial));
  }
  SelectedPagesParams empty;
  empty.max_selected = 1;
  empty.page_size = 16;
  empty.page_bytes = 16;
  EXPECT_TRUE(ReferenceBuildSelectedPages(empty).ok());
}

// ---- ComputePageMass ---------------------------------------------------------------------

struct MassCase {
  int32_t num_items, group_size, max_selected, page_size;
};

struct MassWorld {
  // Item i has num_selected[i] selected pages among page_count[i] >= num_selected[i] pages of
  // the attention list; its chunk lses are random around its total lse, some -inf; a few
  // (item, head) totals are -inf.
  MassWorld(const MassCase& c, std::mt19937_64& rng) : c(c) {
    const int32_t chunks = c.page_size / 16;
    std::uniform_real_distribution<float> total_lse(-4.0f, 12.0f), below(-9.0f, 0.5f);
    offsets.push_back(0);
    for (int32_t i = 0; i < c.num_items; ++i) {
      const uint64_t kind = rng() % 4;
      const int32_t n = kind == 0   ? 0
                        : kind == 1 ? c.max_selected
                                    : static_cast<int32_t>(rng() % (c.max_selected + 1));
      num_selected.push_back(n);
      offsets.push_back(offsets.back() + n + static_cast<int32_t>(rng() % 2));  // extra page
    }
    for (int32_t i = 0; i < c.num_items; ++i) {
      for (int32_t h = 0; h < c.group_size; ++h) {
        lse.push_back(rng() % 17 == 0 ? kNegInf : total_lse(rng));
      }
    }
    // At least one element: the array must be present even when no page is listed.
    chunk_lse.resize(
        std::max<size_t>(1, static_cast<size_t>(offsets.back()) * chunks * c.group_size));
    for (int32_t i = 0; i < c.num_items; ++i) {
      for (int64_t page = offsets[i]; page < offsets[i + 1]; ++page) {
        for (int32_t k = 0; k < chunks; ++k) {
          for (int32_t h = 0; h < c.group_size; ++h) {
            const float total = lse[int64_t{i} * c.group_size + h];
            float value = total == kNegInf || rng() % 11 == 0 ? kNegInf : total + below(rng);
            chunk_lse[(page * chunks + k) * c.group_size + h] = value;
          }
        }
      }
    }
    mass.assign(static_cast<size_t>(c.num_items) * c.max_selected, Poisoned<float>());
  }

  PageMassParams Params() {
    PageMassParams p;
    p.num_items = c.num_items;
    p.group_size = c.group_size;
    p.max_selected = c.max_selected;
    p.page_size = c.page_size;
    p.page_offsets = offsets.data();
    p.num_selected = num_selected.data();
    p.chunk_lse = chunk_lse.data();
    p.lse = lse.data();
    p.mass = mass.data();
    return p;
  }

  MassCase c;
  std::vector<int32_t> offsets, num_selected;
  std::vector<float> chunk_lse, lse, mass;
};

class PageMassTwinTest : public ::testing::TestWithParam<MassCase> {};

TEST_P(PageMassTwinTest, SumsChunkSharesOverHeads) {
  const MassCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << c.num_items << " items, G " << c.group_size << ", P "
                                  << c.page_size << ", seed " << seed);
  std::mt19937_64 rng(seed);
  MassWorld w(c, rng);
  const absl::Status status = ReferenceComputePageMass(w.Params());
  ASSERT_TRUE(status.ok()) << status;
  const int32_t chunks = c.page_size / 16;
  for (int32_t i = 0; i < c.num_items; ++i) {
    for (int32_t e = 0; e < c.max_selected; ++e) {
      const float got = w.mass[int64_t{i} * c.max_selected + e];
      if (e >= w.num_selected[i]) {
        ASSERT_TRUE(IsPoisoned(got)) << "item " << i << " entry " << e << " was written";
        continue;
      }
      long double expected = 0;
      for (int32_t h = 0; h < c.group_size; ++h) {
        const float total = w.lse[int64_t{i} * c.group_size + h];
        for (int32_t k = 0; k < chunks; ++k) {
          const float value =
              w.chunk_lse[((int64_t{w.offsets[i]} + e) * chunks + k) * c.group_size + h];
          if (total != kNegInf && value != kNegInf) {
            expected += std::exp(static_cast<long double>(value) - total);
          }
        }
      }
      ASSERT_NEAR(got, static_cast<double>(expected), 1e-6 * static_cast<double>(expected))
          << "item " << i << " entry " << e;
      ASSERT_FALSE(std::isnan(got));
    }
  }
}

// items, G, max_selected, P.
INSTANTIATE_TEST_SUITE_P(Shapes, PageMassTwinTest,
                         ::testing::Values(MassCase{1, 1, 1, 16}, MassCase{40, 4, 8, 16},
                                           MassCase{64, 8, 16, 32}, MassCase{17, 16, 5, 64}));

// When chunk lses are those of real logits and the total is over every chunk of the item's
// list, each head's shares sum to 1: the item's masses sum to G.
TEST(PageMassTest, SharesOfAllPagesSumToGroupSize) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> logit(0.0, 3.0);
  constexpr int32_t kItems = 9, kG = 4, kMax = 6, kP = 32, kChunks = kP / 16;
  std::vector<int32_t> num_selected(kItems), offsets = {0};
  for (int32_t i = 0; i < kItems; ++i) {
    num_selected[i] = 1 + static_cast<int32_t>(rng() % kMax);
    offsets.push_back(offsets.back() + num_selected[i]);
  }
  std::vector<float> chunk_lse(static_cast<size_t>(offsets.back()) * kChunks * kG);
  std::vector<float> lse(kItems * kG);
  for (int32_t i = 0; i < kItems; ++i) {
    for (int32_t h = 0; h < kG; ++h) {
      double total = 0;
      for (int64_t c = int64_t{offsets[i]} * kChunks; c < int64_t{offsets[i + 1]} * kChunks; ++c) {
        double sum = 0;
        for (int32_t t = 0; t < 16; ++t) sum += std::exp(logit(rng));
        chunk_lse[c * kG + h] = static_cast<float>(std::log(sum));
        total += std::exp(static_cast<double>(chunk_lse[c * kG + h]));
      }
      lse[i * kG + h] = static_cast<float>(std::log(total));
    }
  }
  std::vector<float> mass(kItems * kMax, Poisoned<float>());
  PageMassParams p;
  p.num_items = kItems;
  p.group_size = kG;
  p.max_selected = kMax;
  p.page_size = kP;
  p.page_offsets = offsets.data();
  p.num_selected = num_selected.data();
  p.chunk_lse = chunk_lse.data();
  p.lse = lse.data();
  p.mass = mass.data();
  ASSERT_TRUE(ReferenceComputePageMass(p).ok());
  for (int32_t i = 0; i < kItems; ++i) {
    double sum = 0;
    for (int32_t e = 0; e < num_selected[i]; ++e) sum += mass[i * kMax + e];
    EXPECT_NEAR(sum, kG, 1e-4) << "item " << i;
  }
}

TEST(PageMassTest, InvalidInputIsRejectedAndWritesNothing) {
  std::mt19937_64 rng(3);
  const MassWorld world(MassCase{6, 2, 4, 32}, rng);
  struct Case {
    std::string needle;
    std::function<void(PageMassParams&, MassWorld&)> mutate;
  };
  const std::vector<Case> cases = {
      {"num_items", [](auto& p, auto&) { p.num_items = -3; }},
      {"group_size", [](auto& p, auto&) { p.group_size = 0; }},
      {"max_selected", [](auto& p, auto&) { p.max_selected = 0; }},
      {"page_size", [](auto& p, auto&) { p.page_size = 8; }},
      {"page_size", [](auto& p, auto&) { p.page_size = 48; }},
      {"num_items", [](auto& p, auto&) { p.max_selected = 1 << 20, p.num_items = 1 << 12; }},
      {"chunk_lse", [](auto& p, auto&) { p.chunk_lse = nullptr; }},
      {"mass", [](auto& p, auto&) { p.mass = nullptr; }},
      {"num_selected[1]", [](auto&, auto& w) { w.num_selected[1] = 5; }},
      {"num_selected[2]", [](auto&, auto& w) { w.num_selected[2] = -1; }},
      {"num_selected[3]",
       [](auto&, auto& w) {
         w.num_selected[3] = 2;
         w.offsets[4] = w.offsets[3] + 1;  // fewer pages than selected
       }},
      {"page_offsets[0]", [](auto&, auto& w) { w.offsets[0] = -1; }},
  };
  for (const Case& bad : cases) {
    SCOPED_TRACE(bad.needle);
    MassWorld w = world;
    PageMassParams p = w.Params();
    bad.mutate(p, w);
    const absl::Status status = ReferenceComputePageMass(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(bad.needle), std::string::npos) << status;
    EXPECT_TRUE(AllPoisoned(w.mass));
  }
}

// ---- UpdatePageScores --------------------------------------------------------------------

// Two page lists over distinct slots of each item, rows scattered over a larger directory.
struct ScoreWorld {
  ScoreWorld(const MassCase& c, std::mt19937_64& rng)
      : c(c),
        hits(c, rng),
        misses(c, rng),
        num_slots(2 * c.max_selected + 3),
        num_rows(2 * c.num_items + 5) {
    std::vector<int32_t> all_rows(num_rows), slots(num_slots);
    std::iota(all_rows.begin(), all_rows.end(), 0);
    std::shuffle(all_rows.begin(), all_rows.end(), rng);
    for (int32_t i = 0; i < c.num_items; ++i) {
      rows.push_back(all_rows[i]);
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), rng);
      hit_slots.insert(hit_slots.end(), slots.begin(), slots.begin() + c.max_selected);
      miss_slots.insert(miss_slots.end(), slots.begin() + c.max_selected,
                        slots.begin() + 2 * c.max_selected);
    }
    std::uniform_real_distribution<float> score(0.0f, 8.0f);
    scores.resize(static_cast<size_t>(num_rows) * num_slots);
    for (float& v : scores) v = score(rng);
  }

  PageScoreUpdateParams Params(float decay) {
    PageScoreUpdateParams p;
    p.num_items = c.num_items;
    p.group_size = c.group_size;
    p.max_selected = c.max_selected;
    p.page_size = c.page_size;
    p.num_slots = num_slots;
    p.lse = hits.lse.data();
    p.num_lists = 2;
    p.lists[0] = {hits.offsets.data(), hits.num_selected.data(), hit_slots.data(),
                  hits.chunk_lse.data()};
    p.lists[1] = {misses.offsets.data(), misses.num_selected.data(), miss_slots.data(),
                  misses.chunk_lse.data()};
    p.slot_score = scores.data();
    p.item_rows = rows.data();
    p.num_rows = num_rows;
    p.decay = decay;
    return p;
  }

  MassCase c;
  MassWorld hits, misses;
  int32_t num_slots, num_rows;
  std::vector<int32_t> rows, hit_slots, miss_slots;
  std::vector<float> scores;
};

class PageScoresTwinTest : public ::testing::TestWithParam<MassCase> {};

// The fused update equals ComputePageMass of each list followed by CacheScoreUpdate (hits with
// the decay, then misses without), bit for bit, and leaves other rows alone.
TEST_P(PageScoresTwinTest, EqualsPageMassThenScoreUpdate) {
  const MassCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << c.num_items << " items, G " << c.group_size << ", P "
                                  << c.page_size << ", seed " << seed);
  std::mt19937_64 rng(seed);
  for (const float decay : {0.99f, 1.0f}) {
    ScoreWorld w(c, rng);
    std::vector<float> expected = w.scores;
    const std::vector<float> before = w.scores;
    struct Part {
      MassWorld& list;
      std::vector<int32_t>& slots;
      float decay;
    };
    for (const Part part : {Part{w.hits, w.hit_slots, decay}, Part{w.misses, w.miss_slots, 1.0f}}) {
      PageMassParams mass = part.list.Params();
      mass.lse = w.hits.lse.data();
      ASSERT_TRUE(ReferenceComputePageMass(mass).ok());
      CacheScoreUpdateParams update;
      update.slot_score = expected.data();
      update.selected_slots = part.slots.data();
      update.num_selected = part.list.num_selected.data();
      update.mass = part.list.mass.data();
      update.num_items = c.num_items;
      update.num_slots = w.num_slots;
      update.max_selected = c.max_selected;
      update.decay = part.decay;
      update.item_rows = w.rows.data();
      update.num_rows = w.num_rows;
      const absl::Status updated = ReferenceCacheScoreUpdate(update);
      ASSERT_TRUE(updated.ok()) << updated;
    }
    const absl::Status status = ReferenceUpdatePageScores(w.Params(decay));
    ASSERT_TRUE(status.ok()) << status;
    int64_t changed = 0;
    for (size_t k = 0; k < expected.size(); ++k) {
      ASSERT_EQ(std::memcmp(&w.scores[k], &expected[k], sizeof(float)), 0)
          << "score " << k << ": " << w.scores[k] << " vs " << expected[k];
      ASSERT_FALSE(std::isnan(w.scores[k]));
      changed += w.scores[k] != before[k] ? 1 : 0;
    }
    if (decay != 1.0f) {
      EXPECT_GT(changed, 0);
    }
  }
}

// items, G, max_selected, P.
INSTANTIATE_TEST_SUITE_P(Shapes, PageScoresTwinTest,
                         ::testing::Values(MassCase{1, 1, 1, 16}, MassCase{40, 4, 8, 16},
                                           MassCase{64, 8, 16, 32}, MassCase{17, 16, 5, 64}));

TEST(PageScoresTest, InvalidInputIsRejectedAndWritesNothing) {
  std::mt19937_64 rng(5);
  const ScoreWorld world(MassCase{6, 2, 4, 32}, rng);
  struct Case {
    std::string needle;
    std::function<void(PageScoreUpdateParams&, ScoreWorld&)> mutate;
  };
  const std::vector<Case> cases = {
      {"num_lists", [](auto& p, auto&) { p.num_lists = 3; }},
      {"num_slots", [](auto& p, auto&) { p.num_slots = 0; }},
      {"decay", [](auto& p, auto&) { p.decay = 0.0f; }},
      {"decay", [](auto& p, auto&) { p.decay = std::numeric_limits<float>::quiet_NaN(); }},
      {"page_size", [](auto& p, auto&) { p.page_size = 24; }},
      {"lists[].slots", [](auto& p, auto&) { p.lists[1].slots = nullptr; }},
      {"slot_score", [](auto& p, auto&) { p.slot_score = nullptr; }},
      {"row", [](auto&, auto& w) { w.rows[2] = w.num_rows; }},
      {"not distinct", [](auto&, auto& w) { w.rows[3] = w.rows[1]; }},
      {"num_selected[4]", [](auto&, auto& w) { w.misses.num_selected[4] = 5; }},
      {"slot",
       [](auto&, auto& w) {
         w.hits.num_selected[1] = 1;
         w.hit_slots[1 * 4] = -1;
       }},
      {"used twice",
       [](auto&, auto& w) {
         w.hits.num_selected[0] = 1;
         w.misses.num_selected[0] = 1;
         w.miss_slots[0] = w.hit_slots[0];
       }},
  };
  for (const Case& bad : cases) {
    SCOPED_TRACE(bad.needle);
    ScoreWorld w = world;
    PageScoreUpdateParams p = w.Params(0.9f);
    bad.mutate(p, w);
    const absl::Status status = ReferenceUpdatePageScores(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(bad.needle), std::string::npos) << status;
    EXPECT_EQ(w.scores, world.scores);
  }
}

}  // namespace
}  // namespace kvtier
