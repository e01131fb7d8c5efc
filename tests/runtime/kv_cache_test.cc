// KvCache on the host backend (the kernels' host twins), against host oracles: exact attention
// in double over what the cache should attend, Quest bounds recomputed from the stored keys,
// an independent model of the page-cache policies, and the host-store accounting (errors in
// kv_cache_bad_input_test.cc, statistics and Inspect in kv_cache_stats_test.cc). Shapes are
// small so that the whole file runs in CI on two cores, also under ASan/UBSan.
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

}  // namespace
}  // namespace kvtier
