// KvCache on the host backend (the kernels' host twins), against host oracles: exact attention
// in double over what the cache should attend, Quest bounds recomputed from the stored keys,
// an independent model of the page-cache policies, and the host-store accounting. Also every
// documented error of every call, each checked to change nothing by comparing with a twin
// cache fed identically except for the bad call. Shapes are small so that the whole file runs
// in CI on two cores, also under ASan/UBSan.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cache_resolve.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/page_cache_model.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"

namespace kvtier {
namespace {

using runtime_test::AnyNaN;
using runtime_test::DecodeInputs;
using runtime_test::Driver;
using runtime_test::ExpectClose;
using runtime_test::ExpectTopK;
using runtime_test::Geometry;
using runtime_test::HostOptions;
using runtime_test::HostRelTolerance;
using runtime_test::kHostAbsTolerance;
using runtime_test::PageCacheModel;
using runtime_test::QuestScores;
using runtime_test::RandomBatch;
using runtime_test::RandomOutDType;
using runtime_test::Uniform;

#define ASSERT_OK(expr) KVTIER_RT_ASSERT_OK(expr)
#define EXPECT_OK(expr) KVTIER_RT_EXPECT_OK(expr)

// ---- 1. Full budget: exact attention ------------------------------------------------------

struct ExactCase {
  int g;
  int head_dim;
  DType dtype;
  int page;
  int sink;
  int window;
  int max_prefill_chunk;       // Options::max_prefill_chunk_tokens
  int64_t prefill_call_chunk;  // largest Prefill call (0: one call per layer)
  uint64_t seed;
};

std::string ExactCaseName(const ::testing::TestParamInfo<ExactCase>& info) {
  const ExactCase& c = info.param;
  return absl::StrCat("G", c.g, "_D", c.head_dim, "_", DTypeName(c.dtype), "_P", c.page, "_S",
                      c.sink, "_W", c.window, "_chunk", c.max_prefill_chunk);
}

class FullBudgetTest : public ::testing::TestWithParam<ExactCase> {};

// A budget covering every cold page: Decode equals full attention over every stored token, for
// mixed lengths (some all hot, some far longer than sink + window), chunked prefill of odd
// sizes, layers decoded in any order, and sequences joining and leaving between steps; Inspect
// reports every cold page selected and their positions (runtime_test::ExpectFullBudgetExact).
TEST_P(FullBudgetTest, DecodeEqualsExactAttention) {
  const ExactCase c = GetParam();
  Options o = HostOptions(c.g, c.head_dim, c.dtype, c.page, c.sink, c.window);
  o.budget.max_pages = static_cast<int>(o.max_sequence_tokens / c.page);
  o.cache_slots_per_budget = 1.0;
  o.max_prefill_chunk_tokens = c.max_prefill_chunk;
  o.host_memory_bytes = int64_t{160} << 20;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  runtime_test::Schedule schedule;
  schedule.prefill_call_chunk = c.prefill_call_chunk;
  schedule.seed = c.seed;
  runtime_test::ExpectFullBudgetExact(**created, schedule, runtime_test::HostTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shapes, FullBudgetTest,
                         ::testing::Values(ExactCase{1, 64, DType::kBF16, 16, 0, 64, 64, 97, 1},
                                           ExactCase{2, 128, DType::kFP16, 16, 32, 128, 64, 0, 2},
                                           ExactCase{4, 64, DType::kFP16, 16, 16, 32, 4096, 301, 3},
                                           ExactCase{8, 128, DType::kBF16, 16, 64, 256, 128, 77, 4},
                                           ExactCase{4, 128, DType::kBF16, 32, 0, 32, 96, 0, 5},
                                           ExactCase{2, 64, DType::kBF16, 16, 48, 16, 4096, 33, 6},
                                           ExactCase{1, 256, DType::kFP16, 16, 16, 48, 64, 129, 7}),
                         ExactCaseName);

// ---- 2. Smaller budget: top-k by the Quest bound, attention over hot + selected -----------

struct BudgetCase {
  int g;
  int head_dim;
  DType dtype;
  int sink;
  int window;
  int budget;
  CachePolicy policy;
  uint64_t seed;
};

std::string BudgetCaseName(const ::testing::TestParamInfo<BudgetCase>& info) {
  const BudgetCase& c = info.param;
  return absl::StrCat("G", c.g, "_D", c.head_dim, "_", DTypeName(c.dtype), "_S", c.sink, "_W",
                      c.window, "_k", c.budget, "_policy", static_cast<int>(c.policy));
}

class SmallBudgetTest : public ::testing::TestWithParam<BudgetCase> {};

// The pages Inspect reports are the top k cold pages by the Quest bound of the step's query
// group, and the output is exact attention over the hot set plus exactly those pages.
TEST_P(SmallBudgetTest, SelectsTopKByBoundAndAttendsToIt) {
  const BudgetCase c = GetParam();
  Options o = HostOptions(c.g, c.head_dim, c.dtype, 16, c.sink, c.window);
  o.budget.max_pages = c.budget;
  o.cache_slots_per_budget = 1.5;
  o.cache_policy = c.policy;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  const Geometry& geo = d.geometry();
  std::mt19937_64 rng(c.seed);

  SeqId next_seq = 1;
  std::vector<SeqId> live;
  auto add_sequence = [&] {
    const SeqId seq = next_seq++;
    const int64_t tokens =
        rng() % 4 == 0 ? Uniform(rng, 1, c.sink + c.window) : Uniform(rng, c.sink + c.window, 1900);
    ASSERT_OK(d.Add(seq));
    for (int layer = 0; layer < o.shape.num_layers; ++layer) {
      ASSERT_OK(d.PrefillRandom(seq, layer, tokens, rng, 211));
    }
    live.push_back(seq);
  };
  for (int i = 0; i < 4; ++i) {
    add_sequence();
    if (HasFatalFailure()) return;
  }

  for (int step = 0; step < 16; ++step) {
    if (step % 5 == 4) {
      const size_t victim = rng() % live.size();
      ASSERT_OK(d.Remove(live[victim]));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
      add_sequence();
      if (HasFatalFailure()) return;
    }
    const int layer = static_cast<int>(rng() % o.shape.num_layers);
    const std::vector<SeqId> batch = RandomBatch(live, o.max_batch_size, rng);
    const DType out_dtype = RandomOutDType(rng);
    // Queries twice as large as keys: a peaked softmax, so the selection matters.
    const DecodeInputs in = d.RandomDecodeInputs(batch.size(), rng, 2.0f);
    std::vector<float> out;
    ASSERT_OK(d.Decode(layer, batch, in, out_dtype, &out));
    const std::string what =
        absl::StrCat("step ", step, ", ", runtime_test::DescribeBatch(batch, d, layer));
    ASSERT_FALSE(AnyNaN(out)) << what << ": unwritten (NaN) output";

    absl::StatusOr<std::vector<std::vector<KvCache::CacheInspection>>> inspections =
        d.InspectBatch(layer, batch);
    ASSERT_TRUE(inspections.ok()) << inspections.status();
    std::vector<std::vector<std::vector<int32_t>>> selected(batch.size());
    const size_t q_row = static_cast<size_t>(o.shape.num_query_heads) * o.shape.head_dim;
    for (size_t b = 0; b < batch.size(); ++b) {
      const runtime_test::LayerKv& kv = d.model().Get(batch[b], layer);
      for (int kh = 0; kh < o.shape.num_kv_heads; ++kh) {
        const KvCache::CacheInspection& x = (*inspections)[b][kh];
        selected[b].push_back(x.selected_pages);
        std::vector<double> magnitude;
        const std::vector<double> scores =
            QuestScores(o.shape, geo.P, kv, in.q.data() + b * q_row, kh, geo.S,
                        geo.ColdEnd(kv.tokens), &magnitude);
        ExpectTopK(x.selected_pages, geo.S, scores, magnitude, c.budget,
                   absl::StrCat(what, ", entry ", b, ", kv head ", kh));
        EXPECT_EQ(x.hits + x.misses, static_cast<int32_t>(x.selected_pages.size())) << what;
      }
    }
    ExpectClose(out, d.Reference(layer, batch, in, &selected), HostRelTolerance(out_dtype),
                kHostAbsTolerance, what);
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SmallBudgetTest,
    ::testing::Values(BudgetCase{1, 64, DType::kBF16, 0, 64, 3, CachePolicy::kLowestScore, 11},
                      BudgetCase{4, 128, DType::kFP16, 32, 128, 8, CachePolicy::kLeastRecentlyUsed,
                                 12},
                      BudgetCase{8, 64, DType::kBF16, 16, 32, 1, CachePolicy::kLastSelection, 13},
                      BudgetCase{2, 128, DType::kBF16, 64, 16, 5, CachePolicy::kLowestScore, 14}),
    BudgetCaseName);

// ---- 3. Page-cache invariants over 1,000 steps, every policy ------------------------------

struct PolicyCase {
  CachePolicy policy;
  double slots_per_budget;
};

class CacheInvariantsTest : public ::testing::TestWithParam<PolicyCase> {};

// After every step, per (sequence, KV head): the directory holds distinct cold pages; every
// selected page is resident; hits are the selected pages resident before the step and keep
// their slots; only misses are loaded, into slots whose previous page was not selected; the
// directory transition is exactly kernels/cache_resolve.h's host twin applied to the state
// before the step; LRU and last selection also match a model fed only the selections; the
// score policy's scores decay and gain exactly the attention mass the pages received; and the
// output is exact attention over hot + selected (so every hit really holds its page).
TEST_P(CacheInvariantsTest, ThousandSteps) {
  const PolicyCase c = GetParam();
  Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
  o.shape.num_layers = 1;
  o.budget.max_pages = 4;
  o.cache_slots_per_budget = c.slots_per_budget;
  o.cache_policy = c.policy;
  o.score_decay = 0.9f;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  const Geometry& geo = d.geometry();
  const int hk = o.shape.num_kv_heads;
  const int slots = static_cast<int>(std::ceil(c.slots_per_budget * o.budget.max_pages));
  std::mt19937_64 rng(21 + static_cast<int>(c.policy));

  struct Tracked {
    std::vector<KvCache::CacheInspection> before;  // [hk]
    std::vector<PageCacheModel> models;            // [hk]
  };
  std::map<SeqId, Tracked> tracked;
  SeqId next_seq = 1;
  auto add_sequence = [&] {
    const SeqId seq = next_seq++;
    ASSERT_OK(d.Add(seq));
    ASSERT_OK(d.PrefillRandom(seq, 0, Uniform(rng, 20, 400), rng, 150));
    Tracked t;
    for (int kh = 0; kh < hk; ++kh) {
      absl::StatusOr<KvCache::CacheInspection> x = d.cache().Inspect(seq, 0, kh);
      ASSERT_TRUE(x.ok()) << x.status();
      ASSERT_EQ(static_cast<int>(x->slot_page.size()), slots);
      for (int32_t page : x->slot_page) ASSERT_EQ(page, -1) << "a new sequence's cache is empty";
      EXPECT_TRUE(x->selected_pages.empty());
      t.before.push_back(*x);
      t.models.emplace_back(slots, c.policy);
    }
    tracked[seq] = std::move(t);
  };
  for (int i = 0; i < 5; ++i) {
    add_sequence();
    if (HasFatalFailure()) return;
  }

  int64_t hits_total = 0, misses_total = 0, evictions = 0;
  for (int step = 0; step < 1000; ++step) {
    if (step % 150 == 149) {  // one leaves, one joins
      const SeqId victim = d.model().Sequences()[rng() % tracked.size()];
      ASSERT_OK(d.Remove(victim));
      tracked.erase(victim);
      add_sequence();
      if (HasFatalFailure()) return;
    }
    std::vector<SeqId> live = d.model().Sequences();
    std::shuffle(live.begin(), live.end(), rng);
    live.resize(static_cast<size_t>(Uniform(rng, 2, o.max_batch_size)));
    const std::vector<SeqId>& batch = live;
    const DecodeInputs in = d.RandomDecodeInputs(batch.size(), rng, 2.0f);
    std::vector<float> out;
    ASSERT_OK(d.Decode(0, batch, in, DType::kFP32, &out));
    const std::string what =
        absl::StrCat("step ", step, ", ", runtime_test::DescribeBatch(batch, d, 0));
    bool selection_ran = false;
    for (SeqId seq : batch) selection_ran |= geo.NumCold(d.model().Tokens(seq, 0)) > 0;

    absl::StatusOr<std::vector<std::vector<KvCache::CacheInspection>>> inspections =
        d.InspectBatch(0, batch);
    ASSERT_TRUE(inspections.ok()) << inspections.status();
    std::vector<std::vector<std::vector<int32_t>>> selected(batch.size());
    for (size_t b = 0; b < batch.size(); ++b) {
      for (int kh = 0; kh < hk; ++kh) selected[b].push_back((*inspections)[b][kh].selected_pages);
    }
    std::vector<std::vector<std::vector<double>>> page_mass;
    ExpectClose(out, d.Reference(0, batch, in, &selected, &page_mass),
                HostRelTolerance(DType::kFP32), kHostAbsTolerance, what);

    for (size_t b = 0; b < batch.size(); ++b) {
      const int64_t tokens = d.model().Tokens(batch[b], 0);
      const int64_t cold_end = geo.ColdEnd(tokens);
      Tracked& t = tracked.at(batch[b]);
      for (int kh = 0; kh < hk; ++kh) {
        const std::string where = absl::StrCat(what, ", seq ", batch[b], ", kv head ", kh);
        const KvCache::CacheInspection& before = t.before[kh];
        const KvCache::CacheInspection& x = (*inspections)[b][kh];
        const std::vector<int32_t>& sel = x.selected_pages;
        const std::set<int32_t> sel_set(sel.begin(), sel.end());
        ASSERT_EQ(static_cast<int64_t>(sel.size()),
                  std::min<int64_t>(o.budget.max_pages, geo.NumCold(tokens)))
            << where;
        ASSERT_EQ(x.hits + x.misses, static_cast<int32_t>(sel.size())) << where;
        ASSERT_EQ(static_cast<int>(x.slot_page.size()), slots) << where;
        // Directory: distinct cold pages.
        std::set<int32_t> resident;
        for (int s = 0; s < slots; ++s) {
          const int32_t page = x.slot_page[s];
          if (page < 0) {
            ASSERT_EQ(page, -1) << where;
            continue;
          }
          ASSERT_GE(page, geo.S) << where << ": slot " << s << " holds a sink page";
          ASSERT_LT(page, cold_end) << where << ": slot " << s << " holds a page never cold";
          ASSERT_TRUE(resident.insert(page).second)
              << where << ": page " << page << " in two slots";
        }
        for (int32_t page : sel) {
          ASSERT_TRUE(resident.contains(page))
              << where << ": selected page " << page << " not resident";
        }
        // Hits: the selected pages resident before, in the same slot.
        int expected_hits = 0;
        for (int s = 0; s < slots; ++s) {
          const int32_t old_page = before.slot_page[s];
          if (old_page >= 0 && sel_set.contains(old_page)) {
            ++expected_hits;
            EXPECT_EQ(x.slot_page[s], old_page) << where << ": a hit moved slots";
          }
          if (x.slot_page[s] != old_page && x.slot_page[s] >= 0) {
            EXPECT_TRUE(sel_set.contains(x.slot_page[s]))
                << where << ": slot " << s << " loaded unselected page " << x.slot_page[s];
            if (old_page >= 0) ++evictions;
          }
          if (x.slot_page[s] != old_page && old_page >= 0) {
            EXPECT_FALSE(sel_set.contains(old_page))
                << where << ": selected page " << old_page << " evicted";
          }
        }
        EXPECT_EQ(x.hits, expected_hits) << where;
        hits_total += x.hits;
        misses_total += x.misses;

        // The host twin of the resolve, applied to the state before the step.
        {
          std::vector<int32_t> page = before.slot_page;
          std::vector<int32_t> last = before.slot_last_use;
          std::vector<float> score = before.slot_score;
          std::vector<int32_t> sel_buf = sel;
          sel_buf.resize(static_cast<size_t>(o.budget.max_pages), -1);
          const int32_t count = static_cast<int32_t>(sel.size());
          std::vector<int32_t> sel_slots(sel_buf.size()), miss_pages(sel_buf.size()),
              miss_slots(sel_buf.size());
          int32_t hit_count = 0, miss_count = 0;
          CacheResolveParams p;
          p.directory.slot_page = page.data();
          p.directory.slot_last_use = last.data();
          p.directory.slot_score = score.data();
          p.directory.num_items = 1;
          p.directory.num_slots = slots;
          p.directory.max_pages = static_cast<int32_t>(o.max_sequence_tokens / geo.P);
          p.selected_pages = sel_buf.data();
          p.num_selected = &count;
          p.max_selected = o.budget.max_pages;
          p.step = *std::max_element(last.begin(), last.end()) + 1;
          p.policy = c.policy;
          p.selected_slots = sel_slots.data();
          p.miss_pages = miss_pages.data();
          p.miss_slots = miss_slots.data();
          p.hit_count = &hit_count;
          p.miss_count = &miss_count;
          if (selection_ran) {
            ASSERT_OK(ReferenceCacheResolve(p));
            EXPECT_EQ(page, x.slot_page) << where << ": not the resolve twin's transition";
            EXPECT_EQ(hit_count, x.hits) << where;
          } else {
            EXPECT_EQ(before.slot_page, x.slot_page) << where << ": changed without a resolve";
          }
        }
        // Recency: the step's pages carry the newest stamp; other slots keep theirs.
        if (selection_ran && !sel.empty()) {
          int32_t newest = 0;
          for (int s = 0; s < slots; ++s) {
            if (x.slot_page[s] >= 0 && sel_set.contains(x.slot_page[s])) {
              newest = x.slot_last_use[s];
            }
          }
          for (int s = 0; s < slots; ++s) {
            if (x.slot_page[s] < 0) continue;
            if (sel_set.contains(x.slot_page[s])) {
              EXPECT_EQ(x.slot_last_use[s], newest) << where;
            } else {
              EXPECT_EQ(x.slot_last_use[s], before.slot_last_use[s]) << where;
              EXPECT_LT(x.slot_last_use[s], newest) << where;
            }
          }
        }
        // LRU and last selection: the model fed only the selections.
        if (c.policy != CachePolicy::kLowestScore && selection_ran) {
          const int model_hits = t.models[kh].Step(sel);
          EXPECT_EQ(model_hits, x.hits) << where << ": policy model";
          EXPECT_EQ(t.models[kh].slot_page(), x.slot_page) << where << ": policy model";
        }
        if (c.policy == CachePolicy::kLastSelection) {
          EXPECT_EQ(static_cast<size_t>(resident.size()), sel.size())
              << where << ": last selection keeps only the selection";
        }
        // Scores: decay every slot, then add the page's attention mass (G heads summed).
        if (c.policy == CachePolicy::kLowestScore) {
          for (int s = 0; s < slots; ++s) {
            if (x.slot_page[s] < 0) continue;
            const bool loaded = x.slot_page[s] != before.slot_page[s];
            if (!selection_ran) {
              EXPECT_EQ(x.slot_score[s], before.slot_score[s]) << where;
              continue;
            }
            const float base = loaded ? 0.0f : before.slot_score[s] * o.score_decay;
            const auto pos = std::find(sel.begin(), sel.end(), x.slot_page[s]);
            if (pos == sel.end()) {
              EXPECT_EQ(x.slot_score[s], base) << where << ": slot " << s << " not decayed";
            } else {
              const double mass = page_mass[b][kh][static_cast<size_t>(pos - sel.begin())];
              EXPECT_NEAR(x.slot_score[s] - base, mass, 2e-5 + 1e-5 * std::abs(base))
                  << where << ": slot " << s << " (page " << x.slot_page[s] << ")";
            }
          }
        }
        t.before[kh] = x;
        if (HasFatalFailure()) return;
      }
    }
    if (HasFailure()) return;
  }
  // The cache was small enough to evict, and big enough to hit.
  EXPECT_GT(evictions, 100) << "no eviction pressure";
  EXPECT_GT(hits_total, 0);
  EXPECT_GT(misses_total, 0);
}

INSTANTIATE_TEST_SUITE_P(Policies, CacheInvariantsTest,
                         ::testing::Values(PolicyCase{CachePolicy::kLeastRecentlyUsed, 1.5},
                                           PolicyCase{CachePolicy::kLowestScore, 1.5},
                                           PolicyCase{CachePolicy::kLastSelection, 2.0},
                                           PolicyCase{CachePolicy::kLeastRecentlyUsed, 2.0}),
                         [](const ::testing::TestParamInfo<PolicyCase>& info) {
                           return absl::StrCat(
                               std::string(CachePolicyName(info.param.policy)) ==
                                       "least recently used"
                                   ? "LRU"
                               : info.param.policy == CachePolicy::kLowestScore ? "LowestScore"
                                                                                : "LastSelection",
                               "_x", static_cast<int>(info.param.slots_per_budget * 10));
                         });

// ---- 4. Churn: 1,000 sequences through a few slots -----------------------------------------

// Sequences join with random prompts, decode a few steps and leave, always through the same
// few slots: the host store holds exactly the pages of the stored sequences, reused slots
// start empty (the outputs stay exact over hot + selected), and everything is returned at the
// end.
TEST(KvCacheChurnTest, ThousandSequencesThroughFewSlots) {
  Options o = HostOptions(1, 64, DType::kBF16, 16, 16, 32);
  o.shape.num_query_heads = 4;  // G = 2
  o.max_sequences = 6;
  o.max_batch_size = 4;
  o.max_sequence_tokens = 512;
  o.budget.max_pages = 3;
  o.cache_slots_per_budget = 2.0;
  o.max_prefill_chunk_tokens = 128;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  std::mt19937_64 rng(31);
  const int p = o.page_size;

  std::map<SeqId, int> steps_left;
  SeqId next_seq = 1;
  int decodes = 0;
  auto check_host_pages = [&](const std::string& when) {
    const Stats stats = d.cache().GetStats();
    EXPECT_EQ(stats.host_pages_used, d.model().HostPagesNeeded(p)) << when;
    EXPECT_EQ(stats.num_sequences, static_cast<int64_t>(steps_left.size())) << when;
  };
  for (int round = 0; next_seq <= 1000 || !steps_left.empty(); ++round) {
    while (next_seq <= 1000 && static_cast<int>(steps_left.size()) < o.max_sequences) {
      const SeqId seq = next_seq++;
      ASSERT_OK(d.Add(seq));
      const int64_t tokens = Uniform(rng, 1, 300);
      for (int layer = 0; layer < o.shape.num_layers; ++layer) {
        ASSERT_OK(d.PrefillRandom(seq, layer, tokens, rng, rng() % 2 ? 0 : 71));
      }
      steps_left[seq] = static_cast<int>(Uniform(rng, 0, 4));
    }
    std::vector<SeqId> ready;
    for (const auto& [seq, left] : steps_left) {
      if (left > 0) ready.push_back(seq);
    }
    if (!ready.empty()) {
      const std::vector<SeqId> batch = RandomBatch(ready, o.max_batch_size, rng);
      for (int layer = 0; layer < o.shape.num_layers; ++layer) {
        const DecodeInputs in = d.RandomDecodeInputs(batch.size(), rng, 2.0f);
        std::vector<float> out;
        ASSERT_OK(d.Decode(layer, batch, in, DType::kBF16, &out));
        ++decodes;
        if (decodes % 4 == 0) {  // spot checks: exact over hot + selected
          absl::StatusOr<std::vector<std::vector<KvCache::CacheInspection>>> x =
              d.InspectBatch(layer, batch);
          ASSERT_TRUE(x.ok()) << x.status();
          std::vector<std::vector<std::vector<int32_t>>> selected(batch.size());
          for (size_t b = 0; b < batch.size(); ++b) {
            for (const KvCache::CacheInspection& i : (*x)[b])
              selected[b].push_back(i.selected_pages);
          }
          ExpectClose(
              out, d.Reference(layer, batch, in, &selected), HostRelTolerance(DType::kBF16),
              kHostAbsTolerance,
              absl::StrCat("round ", round, ", ", runtime_test::DescribeBatch(batch, d, layer)));
        }
      }
      for (SeqId seq : batch) --steps_left[seq];
    }
    // Leave: every finished sequence, and now and then one that is not.
    for (auto it = steps_left.begin(); it != steps_left.end();) {
      if (it->second <= 0 || rng() % 16 == 0) {
        ASSERT_OK(d.Remove(it->first));
        it = steps_left.erase(it);
      } else {
        ++it;
      }
    }
    if (round % 40 == 0) check_host_pages(absl::StrCat("round ", round));
    if (HasFailure()) return;
  }
  check_host_pages("end");
  EXPECT_EQ(d.cache().GetStats().host_pages_used, 0);
  EXPECT_EQ(d.cache().GetStats().num_sequences, 0);
  // Every slot can be had again, and no more.
  for (int i = 0; i < o.max_sequences; ++i) ASSERT_OK(d.Add(5000 + i));
  const absl::Status full = d.Add(6000);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_EQ(d.cache().GetStats().host_pages_used, 0);
}

// ---- 5. Bad input -------------------------------------------------------------------------

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 std::initializer_list<const char*> words, const std::string& call) {
  EXPECT_EQ(status.code(), code) << call << ": " << status;
  for (const char* word : words) {
    EXPECT_TRUE(absl::StrContains(status.message(), word))
        << call << ": message \"" << status.message() << "\" does not mention \"" << word << "\"";
  }
}

// Two caches fed identically; bad calls go to `a` only, and afterwards `a` must be
// indistinguishable from `b`.
class TwinCacheTest : public ::testing::Test {
 protected:
  static Options TwinOptions() {
    Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
    o.max_sequences = 4;
    o.max_batch_size = 2;
    o.max_sequence_tokens = 512;
    o.budget.max_pages = 3;
    return o;
  }

  void Create(const Options& o) {
    absl::StatusOr<std::unique_ptr<Driver>> a = Driver::Create(o);
    ASSERT_TRUE(a.ok()) << a.status();
    absl::StatusOr<std::unique_ptr<Driver>> b = Driver::Create(o);
    ASSERT_TRUE(b.ok()) << b.status();
    a_ = *std::move(a);
    b_ = *std::move(b);
  }

  // The same call on both; both must succeed.
  void Add(SeqId seq) {
    ASSERT_OK(a_->Add(seq));
    ASSERT_OK(b_->Add(seq));
  }
  void Remove(SeqId seq) {
    ASSERT_OK(a_->Remove(seq));
    ASSERT_OK(b_->Remove(seq));
  }
  void Prefill(SeqId seq, int layer, int64_t tokens) {
    const std::vector<uint16_t> k = a_->RandomRows(tokens, rng_);
    const std::vector<uint16_t> v = a_->RandomRows(tokens, rng_);
    ASSERT_OK(a_->Prefill(seq, layer, k, v));
    ASSERT_OK(b_->Prefill(seq, layer, k, v));
  }
  void Decode(int layer, const std::vector<SeqId>& seqs, const std::string& what) {
    const DecodeInputs in = a_->RandomDecodeInputs(seqs.size(), rng_, 2.0f);
    std::vector<float> out_a, out_b;
    ASSERT_OK(a_->Decode(layer, seqs, in, DType::kFP32, &out_a));
    ASSERT_OK(b_->Decode(layer, seqs, in, DType::kFP32, &out_b));
    EXPECT_EQ(out_a, out_b) << what << ": outputs differ from the untouched twin";
    EXPECT_FALSE(AnyNaN(out_a)) << what;
  }

  // a == b: token counts, host store, statistics, and (with `decode`) a decode of `batch`
  // in every layer: same outputs, selections and cache directories.
  void ExpectTwinsEqual(const std::string& what, const std::vector<SeqId>& batch,
                        bool decode = true) {
    for (SeqId seq : b_->model().Sequences()) {
      for (int layer = 0; layer < b_->shape().num_layers; ++layer) {
        absl::StatusOr<int64_t> na = a_->cache().NumTokens(seq, layer);
        ASSERT_TRUE(na.ok()) << what << ": " << na.status();
        EXPECT_EQ(*na, b_->model().Tokens(seq, layer)) << what << ": seq " << seq;
      }
    }
    EXPECT_EQ(a_->model().Sequences(), b_->model().Sequences()) << what;
    const Stats sa = a_->cache().GetStats(), sb = b_->cache().GetStats();
    EXPECT_EQ(sa.host_pages_used, sb.host_pages_used) << what;
    EXPECT_EQ(sa.num_sequences, sb.num_sequences) << what;
    const LayerStats ta = sa.Total(), tb = sb.Total();
    EXPECT_EQ(ta.decode_steps, tb.decode_steps) << what;
    EXPECT_EQ(ta.decode_items, tb.decode_items) << what;
    EXPECT_EQ(ta.prefill_tokens, tb.prefill_tokens) << what;
    EXPECT_EQ(ta.pages_selected, tb.pages_selected) << what;
    EXPECT_EQ(ta.page_misses, tb.page_misses) << what;
    EXPECT_EQ(ta.bytes_written_back, tb.bytes_written_back) << what;
    if (!decode) return;
    for (int layer = 0; layer < b_->shape().num_layers; ++layer) {
      Decode(layer, batch, what);
      if (HasFatalFailure()) return;
      for (SeqId seq : batch) {
        for (int kh = 0; kh < b_->shape().num_kv_heads; ++kh) {
          absl::StatusOr<KvCache::CacheInspection> xa = a_->cache().Inspect(seq, layer, kh);
          absl::StatusOr<KvCache::CacheInspection> xb = b_->cache().Inspect(seq, layer, kh);
          ASSERT_TRUE(xa.ok() && xb.ok()) << what;
          EXPECT_EQ(xa->selected_pages, xb->selected_pages) << what;
          EXPECT_EQ(xa->hits, xb->hits) << what;
          EXPECT_EQ(xa->misses, xb->misses) << what;
          EXPECT_EQ(xa->slot_page, xb->slot_page) << what;
          EXPECT_EQ(xa->slot_last_use, xb->slot_last_use) << what;
          EXPECT_EQ(xa->slot_score, xb->slot_score) << what;
        }
      }
    }
  }

  ConstTensor Rows(const std::vector<uint16_t>& data, int64_t n, int heads, int d,
                   DType dtype = DType::kBF16, MemorySpace space = MemorySpace::kHost) {
    return MakeConstTensor(data.data(), dtype, {n, heads, d}, space);
  }

  std::unique_ptr<Driver> a_, b_;
  std::mt19937_64 rng_{41};
};

// Every Prefill, Decode, AddSequence, RemoveSequence, NumTokens and Inspect error: the
// documented code, a message naming the problem, and nothing changed.
TEST_F(TwinCacheTest, BadCallsReturnTheirErrorAndChangeNothing) {
  const Options o = TwinOptions();
  Create(o);
  if (HasFatalFailure()) return;
  const int hk = o.shape.num_kv_heads, hq = o.shape.num_query_heads, d = o.shape.head_dim;
  // s1, s2 prefilled in both layers (s2 ends mid-page); s3 only in layer 0; s4 empty.
  constexpr SeqId s1 = 11, s2 = 22, s3 = 33, s4 = 44, unknown = 999;
  for (SeqId seq : {s1, s2, s3, s4}) Add(seq);
  for (int layer = 0; layer < 2; ++layer) {
    Prefill(s1, layer, 200);
    Prefill(s2, layer, 77);
  }
  Prefill(s3, 0, 40);
  if (HasFatalFailure()) return;
  const std::vector<SeqId> pair = {s1, s2};
  ExpectTwinsEqual("setup", pair);
  KvCache& a = a_->cache();

  // ---- Prefill: 5 tokens into s1 layer 0 unless the case says otherwise.
  const int64_t n = 5;
  const std::vector<uint16_t> k = a_->RandomRows(n, rng_), v = a_->RandomRows(n, rng_);
  const std::vector<uint16_t> big(static_cast<size_t>((n + 1) * hk * 2 * d + 4096), 0x3F80);
  const std::vector<uint16_t> q(static_cast<size_t>(n * hq * d), 0x3F80);
  const ConstTensor none;
  ExpectError(a.Prefill(unknown, 0, Rows(k, n, hk, d), Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kNotFound, {"999"}, "Prefill unknown sequence");
  ExpectError(a.Prefill(s1, -1, Rows(k, n, hk, d), Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Prefill layer -1");
  ExpectError(a.Prefill(s1, 2, Rows(k, n, hk, d), Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Prefill layer 2");
  ExpectError(a.Prefill(s1, 0, MakeConstTensor(k.data(), DType::kBF16, {n * hk, d}),
                        Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k"}, "Prefill k rank 2");
  ExpectError(a.Prefill(s1, 0, Rows(big, n, hk + 1, d), Rows(big, n, hk + 1, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k"}, "Prefill k heads");
  ExpectError(a.Prefill(s1, 0, Rows(big, n, hk, 2 * d), Rows(big, n, hk, 2 * d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k"}, "Prefill k head_dim");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d, DType::kFP16), Rows(v, n, hk, d, DType::kFP16),
                        none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k", "dtype"}, "Prefill k fp16");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(big, n + 1, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill v"}, "Prefill v tokens");
  ExpectError(
      a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(big, n / 2, hk, d, DType::kFP32), none, nullptr),
      absl::StatusCode::kInvalidArgument, {"Prefill v"}, "Prefill v fp32");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(v, n, hk, d),
                        MakeConstTensor(q.data(), DType::kBF16, {n, hq + 1, d}), nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill q"}, "Prefill q heads");
  ExpectError(a.Prefill(s1, 0, MakeConstTensor(k.data(), DType::kBF16, {0, hk, d}),
                        MakeConstTensor(v.data(), DType::kBF16, {0, hk, d}), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill"}, "Prefill 0 tokens");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d, DType::kBF16, MemorySpace::kDevice),
                        Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k", "device"}, "Prefill k device");
  ExpectError(a.Prefill(s1, 0, Rows(k, n, hk, d),
                        Rows(v, n, hk, d, DType::kBF16, MemorySpace::kDevice), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill v", "device"}, "Prefill v device");
  ExpectError(
      a.Prefill(s1, 0, Rows(k, n, hk, d), Rows(v, n, hk, d),
                MakeConstTensor(q.data(), DType::kBF16, {n, hq, d}, MemorySpace::kDevice), nullptr),
      absl::StatusCode::kInvalidArgument, {"Prefill q", "device"}, "Prefill q device");
  ExpectError(a.Prefill(s1, 0, MakeConstTensor(nullptr, DType::kBF16, {n, hk, d}),
                        Rows(v, n, hk, d), none, nullptr),
              absl::StatusCode::kInvalidArgument, {"Prefill k", "null"}, "Prefill k null");
  {
    ConstTensor strided = Rows(big, n, hk, d);
    strided.strides = {int64_t{2} * hk * d, d, 1};  // every other token
    ExpectError(a.Prefill(s1, 0, strided, Rows(v, n, hk, d), none, nullptr),
                absl::StatusCode::kInvalidArgument, {"Prefill k", "contiguous"},
                "Prefill k strided");
  }
  {
    const int64_t too_many = o.max_sequence_tokens - 200 + 1;
    const std::vector<uint16_t> rows = a_->RandomRows(too_many, rng_);
    ExpectError(
        a.Prefill(s1, 0, Rows(rows, too_many, hk, d), Rows(rows, too_many, hk, d), none, nullptr),
        absl::StatusCode::kResourceExhausted, {"max_sequence_tokens"},
        "Prefill beyond max_sequence_tokens");
  }
  ExpectTwinsEqual("after bad Prefill calls", pair);

  // ---- Decode: batch {s1, s2} in layer 0 unless the case says otherwise.
  const int64_t bsz = 2;
  const DecodeInputs in = a_->RandomDecodeInputs(3, rng_);
  std::vector<float> out(static_cast<size_t>(3 * hq * d), 0.0f);
  auto qt = [&](int64_t b, int heads = -1, DType dt = DType::kBF16,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeConstTensor(in.q.data(), dt, {b, heads < 0 ? hq : heads, d}, sp);
  };
  auto kt = [&](int64_t b, int heads = -1, DType dt = DType::kBF16,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeConstTensor(in.k.data(), dt, {b, heads < 0 ? hk : heads, d}, sp);
  };
  auto vt = [&](int64_t b, int heads = -1, DType dt = DType::kBF16,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeConstTensor(in.v.data(), dt, {b, heads < 0 ? hk : heads, d}, sp);
  };
  auto ot = [&](int64_t b, int heads = -1, DType dt = DType::kFP32,
                MemorySpace sp = MemorySpace::kHost) {
    return MakeMutableTensor(out.data(), dt, {b, heads < 0 ? hq : heads, d}, sp);
  };
  auto decode = [&](int layer, std::vector<SeqId> seqs, const ConstTensor& q_,
                    const ConstTensor& k_, const ConstTensor& v_, const MutableTensor& o_) {
    return a.Decode(layer, seqs, q_, k_, v_, o_, nullptr);
  };
  ExpectError(decode(-1, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Decode layer -1");
  ExpectError(decode(2, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"layer"}, "Decode layer 2");
  ExpectError(decode(0, {s1, s2, s3}, qt(3), kt(3), vt(3), ot(3)),
              absl::StatusCode::kInvalidArgument, {"max_batch_size"}, "Decode batch 3 > 2");
  ExpectError(decode(0, pair, qt(1), kt(bsz), vt(bsz), ot(bsz)), absl::StatusCode::kInvalidArgument,
              {"Decode q"}, "Decode q batch");
  ExpectError(decode(0, pair, qt(bsz, hk), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode q"}, "Decode q heads");
  ExpectError(decode(0, pair, qt(bsz, -1, DType::kFP16), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode q", "dtype"}, "Decode q fp16");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz, hq), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode k_new"}, "Decode k_new heads");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(bsz, -1, DType::kFP16), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"Decode v_new"}, "Decode v_new fp16");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(3), ot(bsz)), absl::StatusCode::kInvalidArgument,
              {"Decode v_new"}, "Decode v_new batch");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz, hk)),
              absl::StatusCode::kInvalidArgument, {"Decode out"}, "Decode out heads");
  ExpectError(decode(0, pair, qt(bsz), kt(bsz), vt(bsz), ot(1)), absl::StatusCode::kInvalidArgument,
              {"Decode out"}, "Decode out batch");
  ExpectError(
      decode(0, pair, qt(bsz, -1, DType::kBF16, MemorySpace::kDevice), kt(bsz), vt(bsz), ot(bsz)),
      absl::StatusCode::kInvalidArgument, {"Decode q", "device"}, "Decode q device");
  ExpectError(
      decode(0, pair, qt(bsz), kt(bsz, -1, DType::kBF16, MemorySpace::kDevice), vt(bsz), ot(bsz)),
      absl::StatusCode::kInvalidArgument, {"Decode k_new", "device"}, "Decode k_new device");
  ExpectError(
      decode(0, pair, qt(bsz), kt(bsz), vt(bsz, -1, DType::kBF16, MemorySpace::kDevice), ot(bsz)),
      absl::StatusCode::kInvalidArgument, {"Decode v_new", "device"}, "Decode v_new device");
  ExpectError(
      decode(0, pair, qt(bsz), kt(bsz), vt(bsz), ot(bsz, -1, DType::kFP32, MemorySpace::kDevice)),
      absl::StatusCode::kInvalidArgument, {"Decode out", "device"}, "Decode out device");
  ExpectError(decode(0, {s1, unknown}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kNotFound, {"999"}, "Decode unknown sequence");
  ExpectError(decode(0, {s1, s1}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kInvalidArgument, {"11"}, "Decode sequence twice");
  ExpectError(decode(1, {s1, s3}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kFailedPrecondition, {"33"}, "Decode layer not prefilled");
  ExpectError(decode(0, {s4}, qt(1), kt(1), vt(1), ot(1)), absl::StatusCode::kFailedPrecondition,
              {"44"}, "Decode empty sequence");
  ExpectTwinsEqual("after bad Decode calls", pair);

  // ---- Sequences, NumTokens, Inspect.
  ExpectError(a.AddSequence(s1), absl::StatusCode::kAlreadyExists, {"11"}, "AddSequence twice");
  ExpectError(a.AddSequence(55), absl::StatusCode::kResourceExhausted, {"max_sequences"},
              "AddSequence beyond max_sequences");
  ExpectError(a.RemoveSequence(unknown), absl::StatusCode::kNotFound, {"999"},
              "RemoveSequence unknown");
  ExpectError(a.NumTokens(unknown, 0).status(), absl::StatusCode::kNotFound, {"999"},
              "NumTokens unknown");
  ExpectError(a.NumTokens(s1, 2).status(), absl::StatusCode::kInvalidArgument, {"layer"},
              "NumTokens layer");
  ExpectError(a.Inspect(unknown, 0, 0).status(), absl::StatusCode::kNotFound, {"999"},
              "Inspect unknown");
  ExpectError(a.Inspect(s1, -1, 0).status(), absl::StatusCode::kInvalidArgument, {"layer"},
              "Inspect layer");
  ExpectError(a.Inspect(s1, 0, hk).status(), absl::StatusCode::kInvalidArgument, {"kv_head"},
              "Inspect kv_head");
  ExpectTwinsEqual("after bad sequence calls", pair);

  // A removed sequence is unknown everywhere, and its id can be used again.
  Remove(s2);
  ExpectError(a.NumTokens(s2, 0).status(), absl::StatusCode::kNotFound, {"22"},
              "NumTokens removed");
  ExpectError(decode(0, {s1, s2}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)), absl::StatusCode::kNotFound,
              {"22"}, "Decode removed sequence");
  Add(s2);
  ExpectError(decode(0, {s1, s2}, qt(bsz), kt(bsz), vt(bsz), ot(bsz)),
              absl::StatusCode::kFailedPrecondition, {"22"}, "Decode re-added sequence");
  for (int layer = 0; layer < 2; ++layer) Prefill(s2, layer, 300);
  ExpectTwinsEqual("after re-adding", pair);
}

// Host store and max_sequence_tokens exhaustion, for Prefill and for Decode when a page must
// start (all or nothing over the batch).
TEST_F(TwinCacheTest, ExhaustedStoreAndTokenLimitChangeNothing) {
  Options o = TwinOptions();
  o.max_sequence_tokens = 256;
  const int p = o.page_size, hk = o.shape.num_kv_heads;
  // s1 64 tokens (4 pages), s2 48 tokens (3 pages), ballast 240 tokens (15 pages), both
  // layers: (4 + 3 + 15) * 2 layers * 2 heads = 88 frames; room for 3 more.
  const int64_t frames = 88 + 3;
  o.host_memory_bytes = frames * 2 * PageBytes(o.shape, p);
  Create(o);
  if (HasFatalFailure()) return;
  ASSERT_EQ(a_->cache().GetStats().host_pages_capacity, frames);
  constexpr SeqId s1 = 1, s2 = 2, ballast = 3;
  for (SeqId seq : {s1, s2, ballast}) Add(seq);
  for (int layer = 0; layer < 2; ++layer) {
    Prefill(s1, layer, 64);
    Prefill(s2, layer, 48);
    Prefill(ballast, layer, 240);
  }
  if (HasFatalFailure()) return;
  ASSERT_EQ(a_->cache().GetStats().host_pages_used, 88);
  KvCache& a = a_->cache();
  const int d = o.shape.head_dim, hq = o.shape.num_query_heads;

  // Prefill of 40 tokens into s1 needs 3 pages per KV head: 6 frames, 3 free.
  {
    const std::vector<uint16_t> rows = a_->RandomRows(40, rng_);
    const ConstTensor t = MakeConstTensor(rows.data(), DType::kBF16, {40, hk, d});
    ExpectError(a.Prefill(s1, 0, t, t, ConstTensor{}, nullptr),
                absl::StatusCode::kResourceExhausted, {"host store"}, "Prefill, store full");
  }
  // Decode of {s2, s1}: both start a page (4 frames), 3 free: nothing may be taken.
  const DecodeInputs in = a_->RandomDecodeInputs(2, rng_);
  std::vector<float> out(static_cast<size_t>(2 * hq * d));
  auto decode = [&](std::vector<SeqId> seqs, int64_t b) {
    return a.Decode(0, seqs, MakeConstTensor(in.q.data(), DType::kBF16, {b, hq, d}),
                    MakeConstTensor(in.k.data(), DType::kBF16, {b, hk, d}),
                    MakeConstTensor(in.v.data(), DType::kBF16, {b, hk, d}),
                    MakeMutableTensor(out.data(), DType::kFP32, {b, hq, d}), nullptr);
  };
  ExpectError(decode({s2, s1}, 2), absl::StatusCode::kResourceExhausted, {"host store"},
              "Decode, store full");
  EXPECT_EQ(a.GetStats().host_pages_used, 88) << "a failed Decode took frames";
  ExpectTwinsEqual("after store-full calls", {}, /*decode=*/false);

  // max_sequence_tokens: the ballast reaches 256 tokens in layer 0 (16 pages: 2 frames).
  Prefill(ballast, 0, 16);
  if (HasFatalFailure()) return;
  ExpectError(decode({s2, ballast}, 2), absl::StatusCode::kResourceExhausted,
              {"max_sequence_tokens"}, "Decode at max_sequence_tokens");
  {
    const std::vector<uint16_t> rows = a_->RandomRows(1, rng_);
    const ConstTensor t = MakeConstTensor(rows.data(), DType::kBF16, {1, hk, d});
    ExpectError(a.Prefill(ballast, 0, t, t, ConstTensor{}, nullptr),
                absl::StatusCode::kResourceExhausted, {"max_sequence_tokens"},
                "Prefill at max_sequence_tokens");
  }
  ExpectTwinsEqual("after token-limit calls", {}, /*decode=*/false);

  // With room again, both caches decode identically.
  Remove(ballast);
  ExpectTwinsEqual("after freeing the store", {s2, s1});
  EXPECT_EQ(a.GetStats().host_pages_used, b_->model().HostPagesNeeded(p));
}

// Create refuses bad options with InvalidArgument naming every bad field, and configurations
// that cannot run.
TEST(KvCacheCreateTest, BadOptions) {
  Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
  ASSERT_TRUE(KvCache::Create(o).ok());

  Options bad = o;
  bad.shape.head_dim = 96;
  bad.page_size = 24;
  bad.window_tokens = 0;
  bad.budget.max_pages = 0;
  bad.max_batch_size = bad.max_sequences + 1;
  bad.score_decay = 0.0f;
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument,
              {"shape.head_dim", "page_size", "window_tokens", "budget.max_pages", "max_batch_size",
               "score_decay"},
              "Create with six bad fields");

  bad = o;
  bad.shape.num_kv_heads = 3;  // does not divide 4 query heads
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument, {"num_kv_heads"},
              "Create with Hk not dividing Hq");

  bad = o;
  bad.shape.num_layers = 0;
  bad.sink_tokens = 8;  // not a multiple of 16
  bad.cache_slots_per_budget = 0.5;
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument,
              {"shape.num_layers", "sink_tokens", "cache_slots_per_budget"},
              "Create with three bad fields");

  // More cache slots than the resolve supports.
  bad = o;
  bad.budget.max_pages = 4096;
  bad.cache_slots_per_budget = 32;
  bad.max_sequence_tokens = 4096 * 16;
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << created.status();

  // A host store below one page frame per KV head.
  bad = o;
  bad.host_memory_bytes = PageBytes(o.shape, o.page_size);
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument, {"host_memory_bytes"},
              "Create with a tiny host store");

  // The CUDA backend with a device budget far too small: ResourceExhausted with the
  // breakdown (checked before any device is touched), or FailedPrecondition without a device.
  bad = o;
  bad.backend = Backend::kCuda;
  bad.gpu_memory_bytes = 4096;
  created = KvCache::Create(bad);
  ASSERT_FALSE(created.ok());
  if (created.status().code() == absl::StatusCode::kResourceExhausted) {
    ExpectError(created.status(), absl::StatusCode::kResourceExhausted,
                {"gpu_memory_bytes", "max_sequences"}, "Create with a tiny GPU budget");
  } else {
    EXPECT_EQ(created.status().code(), absl::StatusCode::kFailedPrecondition) << created.status();
  }
}

// budget.mass_target is documented ("select the fewest pages whose estimated share reaches
// this target") but the page-bounds index has no mass estimate and Decode always selects the
// top max_pages: a cache created with a mass target must either honour it or be refused.
TEST(KvCacheCreateTest, MassTargetIsRefusedByThePageBoundsIndex) {
  Options o = HostOptions(2, 64, DType::kBF16, 16, 16, 32);
  o.budget.mass_target = 0.5;
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(o);
  ASSERT_FALSE(created.ok()) << "a mass target is accepted and then silently ignored";
  ExpectError(created.status(), absl::StatusCode::kInvalidArgument, {"mass_target"},
              "Create with a mass target");
}

// ---- 6. Statistics ------------------------------------------------------------------------

// The counters agree with what Inspect reports step by step and with the token counts;
// byte counts follow from them; the bound is positive after decodes; ResetStats zeroes the
// counters but not the memory in use.
TEST(KvCacheStatsTest, CountersAreConsistent) {
  // Four sink pages, so that the 20-token sequence is shorter than its sink region.
  Options o = HostOptions(2, 64, DType::kFP16, 16, 64, 32);
  o.budget.max_pages = 3;
  o.cache_slots_per_budget = 1.5;
  o.collect_timings = true;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  const Geometry& geo = d.geometry();
  const int hk = o.shape.num_kv_heads, p = o.page_size;
  const int64_t page_bytes = PageBytes(o.shape, p);
  std::mt19937_64 rng(51);

  const std::vector<SeqId> seqs = {1, 2, 3};
  std::vector<LayerStats> want(2);
  for (SeqId seq : seqs) {
    ASSERT_OK(d.Add(seq));
    const int64_t tokens = seq == 3 ? 20 : Uniform(rng, 200, 700);
    for (int layer = 0; layer < 2; ++layer) {
      ASSERT_OK(d.PrefillRandom(seq, layer, tokens, rng, 100));
      want[layer].prefill_tokens += tokens;
      want[layer].prefill_bytes_stored += tokens / p * hk * 2 * page_bytes;
    }
  }
  {
    const Stats stats = d.cache().GetStats();
    EXPECT_EQ(stats.Total().decode_steps, 0);
    EXPECT_EQ(stats.DecodeBoundMs(), 0.0) << "no decode yet";
    EXPECT_EQ(stats.host_pages_used, d.model().HostPagesNeeded(p));
    EXPECT_EQ(stats.num_sequences, 3);
    EXPECT_EQ(stats.gpu_bytes_reserved, 0) << "host backend";
  }
  for (int step = 0; step < 40; ++step) {
    const int layer = step % 3 == 0 ? 1 : 0;
    const std::vector<SeqId> batch = RandomBatch(seqs, 3, rng);
    for (SeqId seq : batch) {
      if (d.model().Tokens(seq, layer) % p == p - 1) {
        want[layer].bytes_written_back += int64_t{hk} * 2 * page_bytes;
      }
    }
    const DecodeInputs in = d.RandomDecodeInputs(batch.size(), rng, 2.0f);
    std::vector<float> out;
    ASSERT_OK(d.Decode(layer, batch, in, DType::kFP32, &out));
    for (SeqId seq : batch) {
      const int64_t tokens = d.model().Tokens(seq, layer);       // after the append
      const int64_t kv_row = 2 * int64_t{o.shape.head_dim} * 2;  // K and V of one token, fp16
      want[layer].hot_bytes_read +=
          static_cast<int64_t>(geo.HotTokens(tokens).size()) * hk * kv_row;
      want[layer].summary_bytes_read += geo.NumCold(tokens) * hk * kv_row;  // 2 x D bounds
    }
    want[layer].decode_steps += 1;
    want[layer].decode_items += static_cast<int64_t>(batch.size()) * hk;
    absl::StatusOr<std::vector<std::vector<KvCache::CacheInspection>>> x =
        d.InspectBatch(layer, batch);
    ASSERT_TRUE(x.ok()) << x.status();
    for (size_t b = 0; b < batch.size(); ++b) {
      EXPECT_GE(geo.NumCold(d.model().Tokens(batch[b], layer)), 0);
      for (const KvCache::CacheInspection& i : (*x)[b]) {
        want[layer].pages_selected += static_cast<int64_t>(i.selected_pages.size());
        want[layer].page_hits += i.hits;
        want[layer].page_misses += i.misses;
      }
    }
  }
  const Stats stats = d.cache().GetStats();
  ASSERT_EQ(stats.layers.size(), 2u);
  for (int layer = 0; layer < 2; ++layer) {
    const LayerStats& s = stats.layers[layer];
    const LayerStats& w = want[layer];
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    EXPECT_EQ(s.decode_steps, w.decode_steps);
    EXPECT_EQ(s.decode_items, w.decode_items);
    EXPECT_EQ(s.prefill_tokens, w.prefill_tokens);
    EXPECT_EQ(s.prefill_bytes_stored, w.prefill_bytes_stored);
    EXPECT_EQ(s.pages_selected, w.pages_selected);
    EXPECT_EQ(s.page_hits, w.page_hits);
    EXPECT_EQ(s.page_misses, w.page_misses);
    EXPECT_EQ(s.pages_selected, s.page_hits + s.page_misses);
    EXPECT_GT(s.page_misses, 0);
    EXPECT_EQ(s.bytes_loaded, s.page_misses * 2 * page_bytes);
    EXPECT_EQ(s.selected_bytes_read, s.pages_selected * 2 * page_bytes);
    EXPECT_EQ(s.bytes_written_back, w.bytes_written_back);
    EXPECT_EQ(s.hot_bytes_read, w.hot_bytes_read) << "hot set: sinks plus window tokens";
    EXPECT_EQ(s.summary_bytes_read, w.summary_bytes_read) << "bounds of the cold pages";
    EXPECT_GE(s.plan_ms, 0.0);
    EXPECT_GE(s.select_ms, 0.0);
    EXPECT_GE(s.resolve_ms, 0.0);
    EXPECT_GE(s.load_ms, 0.0);
    EXPECT_GE(s.attend_ms, 0.0);
    EXPECT_GT(s.step_ms, 0.0) << "collect_timings is on";
  }
  EXPECT_GT(stats.DecodeBoundMs(), 0.0);
  EXPECT_EQ(stats.hbm_bytes_per_second, o.hbm_bytes_per_second);
  EXPECT_EQ(stats.pcie_bytes_per_second, o.pcie_bytes_per_second);
  EXPECT_EQ(stats.host_pages_used, d.model().HostPagesNeeded(p));
  const LayerStats total = stats.Total();
  EXPECT_EQ(total.pages_selected, want[0].pages_selected + want[1].pages_selected);

  d.cache().ResetStats();
  const Stats reset = d.cache().GetStats();
  EXPECT_EQ(reset.Total().decode_steps, 0);
  EXPECT_EQ(reset.Total().pages_selected, 0);
  EXPECT_EQ(reset.Total().page_hits, 0);
  EXPECT_EQ(reset.Total().bytes_loaded, 0);
  EXPECT_EQ(reset.Total().step_ms, 0.0);
  EXPECT_EQ(reset.DecodeBoundMs(), 0.0);
  EXPECT_EQ(reset.host_pages_used, d.model().HostPagesNeeded(p));
  EXPECT_EQ(reset.num_sequences, 3);
  // Counting resumes from zero.
  const DecodeInputs in = d.RandomDecodeInputs(1, rng);
  ASSERT_OK(d.Decode(0, {1}, in, DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> x = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(x.ok());
  const LayerStats after = d.cache().GetStats().layers[0];
  EXPECT_EQ(after.decode_steps, 1);
  EXPECT_EQ(after.pages_selected, after.page_hits + after.page_misses);
  EXPECT_EQ(after.pages_selected,
            hk * std::min<int64_t>(o.budget.max_pages, geo.NumCold(d.model().Tokens(1, 0))));
}

// ---- Inspect ------------------------------------------------------------------------------

// kv_cache.h: Inspect reports "the last Decode of `layer` that included `seq`", which need not
// be the layer's last Decode.
TEST(KvCacheInspectTest, ReportsTheLayersLastDecodeWhenItIncludedTheSequence) {
  Options o = HostOptions(1, 64, DType::kBF16, 16, 0, 16);
  o.budget.max_pages = 2;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  std::mt19937_64 rng(61);
  for (SeqId seq : {1, 2}) {
    ASSERT_OK(d.Add(seq));
    for (int layer = 0; layer < 2; ++layer) ASSERT_OK(d.PrefillRandom(seq, layer, 200, rng));
  }
  ASSERT_OK(d.Decode(0, {1, 2}, d.RandomDecodeInputs(2, rng), DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> first = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->selected_pages.size(), 2u);
  EXPECT_EQ(first->hits + first->misses, 2);
  // Another layer's decode does not change layer 0's report.
  ASSERT_OK(d.Decode(1, {1}, d.RandomDecodeInputs(1, rng), DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> other_layer = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(other_layer.ok());
  EXPECT_EQ(other_layer->selected_pages, first->selected_pages);
  // A decode of layer 0 without sequence 1: the layer's step arrays now hold another batch,
  // so the selection part is empty (kv_cache.h), while the directory is still sequence 1's.
  ASSERT_OK(d.Decode(0, {2}, d.RandomDecodeInputs(1, rng), DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> later = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE(later->selected_pages.empty());
  EXPECT_EQ(later->hits, 0);
  EXPECT_EQ(later->misses, 0);
  EXPECT_EQ(later->slot_page, first->slot_page);
  // A removed sequence is never reported, even when its id comes back.
  ASSERT_OK(d.cache().RemoveSequence(2));
  ASSERT_OK(d.cache().AddSequence(2));
  absl::StatusOr<KvCache::CacheInspection> readded = d.cache().Inspect(2, 0, 0);
  ASSERT_TRUE(readded.ok());
  EXPECT_TRUE(readded->selected_pages.empty());
}

}  // namespace
}  // namespace kvtier
