// The step schedules that several KvCache test files run against any index kind and backend
// (runtime_test_util.h's Driver): random prefill, decode and leave/join steps; exactness at a
// budget covering every cold page; the consistency of a small budget's selection (Inspect)
// with the output; and the tolerances they compare by. Header-only; no CUDA.
#pragma once

#include "tests/runtime/runtime_test_util.h"

namespace kvtier::runtime_test {

inline std::string DescribeBatch(const std::vector<SeqId>& seqs, const Driver& d, int layer) {
  std::string s = absl::StrCat("layer ", layer, ", batch {");
  for (SeqId seq : seqs) absl::StrAppend(&s, seq, ":", d.model().Tokens(seq, layer), " ");
  return s + "tokens}";
}

// An output's element-wise tolerance against exact attention: |got - want| <= rel |want| + abs.
struct Tolerance {
  double rel = 0;
  double abs = 0;
};
using ToleranceOf = std::function<Tolerance(DType out_dtype)>;
inline Tolerance HostTolerance(DType out_dtype) {
  return {HostRelTolerance(out_dtype), kHostAbsTolerance};
}

// The relative error per query row (ExpectRowRelativeError) that a full budget must meet on
// every backend: an exact index loses nothing beyond the attention kernel's rounding.
inline constexpr double kFullBudgetRowRelativeError = 1e-2;

// Checks what Inspect reports for (seq, layer, kv head) after a Decode of `tokens` tokens by
// an index with budget.max_pages = `budget` and budget.estimate_pages = `estimate` (or
// budget.estimate_rest = `rest`), whatever the kind: min(budget, cold pages) pages selected,
// ascending, all cold; hits + misses the selection; the selected positions P a page, distinct,
// all cold positions ([S P, ColdEnd P): a clustered index permutes tokens within the cold
// pages only); the estimation zone the next min(budget + estimate, cold pages) - selected
// pages (every cold page not selected with `rest`); the hot set's bounds.
inline void ExpectColdSelection(const KvCache::CacheInspection& x, const Geometry& geo,
                                int64_t tokens, int budget, int estimate, const std::string& what,
                                bool rest = false) {
  const int64_t cold = geo.NumCold(tokens);
  const int64_t selected = std::min<int64_t>(budget, cold);
  ASSERT_EQ(static_cast<int64_t>(x.selected_pages.size()), selected) << what << ": selected";
  for (size_t i = 0; i < x.selected_pages.size(); ++i) {
    ASSERT_GE(x.selected_pages[i], geo.S) << what << ": a sink page selected";
    ASSERT_LT(x.selected_pages[i], geo.ColdEnd(tokens)) << what << ": a window page selected";
    if (i > 0) {
      ASSERT_LT(x.selected_pages[i - 1], x.selected_pages[i]) << what << ": not ascending";
    }
  }
  EXPECT_EQ(x.hits + x.misses, static_cast<int32_t>(selected)) << what;
  ASSERT_EQ(static_cast<int64_t>(x.selected_positions.size()), selected * geo.P)
      << what << ": selected positions";
  for (size_t i = 0; i < x.selected_positions.size(); ++i) {
    ASSERT_GE(x.selected_positions[i], int64_t{geo.S} * geo.P) << what << ": not a cold position";
    ASSERT_LT(x.selected_positions[i], geo.ColdEnd(tokens) * geo.P)
        << what << ": not a cold position";
    if (i > 0) {
      ASSERT_LT(x.selected_positions[i - 1], x.selected_positions[i])
          << what << ": position " << x.selected_positions[i] << " selected twice";
    }
  }
  const int64_t zone = rest           ? cold
                       : estimate > 0 ? std::min<int64_t>(int64_t{budget} + estimate, cold)
                                      : 0;
  EXPECT_EQ(x.estimated_pages, std::max<int64_t>(0, zone - selected)) << what << ": estimated";
  EXPECT_EQ(x.estimated_tokens, int64_t{x.estimated_pages} * geo.P) << what;
  EXPECT_EQ(x.tokens, tokens) << what;
  EXPECT_EQ(x.window_begin, std::min<int64_t>(geo.ColdEnd(tokens) * geo.P, tokens)) << what;
}

// A decode schedule over one cache: `sequences` sequences of mixed lengths (half of them, the
// 1st, 4th, 5th, 8th, ..., shorter than sink + window: all hot; the others longer than sink +
// window + a page, up to max_tokens), prefilled into every layer in calls of random odd sizes
// up to prefill_call_chunk (0: one call a layer); `steps` steps of random layers, batches and
// output dtypes; every `churn` steps one sequence leaves and a new one joins (short or long
// at random).
struct Schedule {
  int sequences = 4;
  int64_t max_tokens = 1700;
  int64_t prefill_call_chunk = 0;
  int steps = 14;
  int churn = 3;
  float q_scale = 1.0f;  // queries' standard deviation (keys have 1)
  uint64_t seed = 1;
};

// Runs `schedule` on `d` and calls check(step, layer, batch, inputs, out_dtype, out) after
// each Decode (the step already in the model).
inline void RunSchedule(
    Driver& d, const Schedule& schedule,
    const std::function<void(int, int, const std::vector<SeqId>&, const DecodeInputs&, DType,
                             const std::vector<float>&)>& check) {
  const Options& o = d.options();
  std::mt19937_64 rng(schedule.seed);
  SeqId next_seq = 1000;
  std::vector<SeqId> live;
  const int64_t hot_span = o.sink_tokens + o.window_tokens;
  auto add_sequence = [&](bool short_one) {
    const SeqId seq = next_seq++;
    const int64_t tokens = short_one
                               ? Uniform(rng, 1, hot_span - 1)
                               : Uniform(rng, std::min(hot_span + o.page_size, schedule.max_tokens),
                                         schedule.max_tokens);
    KVTIER_RT_ASSERT_OK(d.Add(seq));
    for (int layer = 0; layer < o.shape.num_layers; ++layer) {
      KVTIER_RT_ASSERT_OK(d.PrefillRandom(seq, layer, tokens, rng, schedule.prefill_call_chunk));
    }
    live.push_back(seq);
  };
  for (int i = 0; i < schedule.sequences; ++i) {
    add_sequence(i % 4 == 0 || i % 4 == 3);
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int step = 0; step < schedule.steps; ++step) {
    if (step > 0 && schedule.churn > 0 && step % schedule.churn == 0) {
      const size_t victim = rng() % live.size();
      KVTIER_RT_ASSERT_OK(d.Remove(live[victim]));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
      add_sequence(rng() % 2 == 0);
      if (::testing::Test::HasFatalFailure()) return;
    }
    const int layer = static_cast<int>(rng() % o.shape.num_layers);
    const std::vector<SeqId> batch = RandomBatch(live, o.max_batch_size, rng);
    const DType out_dtype = RandomOutDType(rng);
    const DecodeInputs in = d.RandomDecodeInputs(batch.size(), rng, schedule.q_scale);
    std::vector<float> out;
    KVTIER_RT_ASSERT_OK(d.Decode(layer, batch, in, out_dtype, &out));
    check(step, layer, batch, in, out_dtype, out);
    if (::testing::Test::HasFailure()) return;
  }
}

// A budget covering every cold page (budget.max_pages >= max_sequence_tokens / page_size) on
// any index and backend: each step's output equals full attention over every stored token,
// within tolerance(out_dtype) element-wise and kFullBudgetRowRelativeError per query row;
// Inspect reports every cold page selected, their positions exactly the cold positions, and
// nothing estimated (a zone of budget + estimate pages holds only selected ones).
inline void ExpectFullBudgetExact(Driver& d, const Schedule& schedule,
                                  const ToleranceOf& tolerance) {
  const Options& o = d.options();
  ASSERT_GE(int64_t{o.budget.max_pages} * o.page_size, o.max_sequence_tokens)
      << "the budget must cover every page";
  const Geometry& geo = d.geometry();
  RunSchedule(
      d, schedule,
      [&](int step, int layer, const std::vector<SeqId>& batch, const DecodeInputs& in,
          DType out_dtype, const std::vector<float>& out) {
        const std::string what = absl::StrCat("step ", step, ", ", DescribeBatch(batch, d, layer),
                                              ", out ", DTypeName(out_dtype));
        ASSERT_FALSE(AnyNaN(out)) << what << ": unwritten (NaN) output";
        const std::vector<double> want = d.Reference(layer, batch, in, nullptr);
        const Tolerance tol = tolerance(out_dtype);
        ExpectClose(out, want, tol.rel, tol.abs, what);
        ExpectRowRelativeError(out, want, o.shape.head_dim, kFullBudgetRowRelativeError, what);
        for (size_t b = 0; b < batch.size(); ++b) {
          const int64_t tokens = d.model().Tokens(batch[b], layer);
          ASSERT_EQ(*d.cache().NumTokens(batch[b], layer), tokens) << what;
          for (int kh = 0; kh < o.shape.num_kv_heads; ++kh) {
            const std::string where = absl::StrCat(what, ", entry ", b, ", kv head ", kh);
            absl::StatusOr<KvCache::CacheInspection> x = d.cache().Inspect(batch[b], layer, kh);
            ASSERT_TRUE(x.ok()) << where << ": " << x.status();
            EXPECT_EQ(x->selected_pages, geo.AllCold(tokens)) << where;
            ASSERT_NO_FATAL_FAILURE(ExpectColdSelection(*x, geo, tokens, o.budget.max_pages,
                                                        o.budget.estimate_pages, where));
            EXPECT_EQ(x->estimated_pages, 0) << where;
          }
        }
      });
}

// A small budget on any index and backend: each step's output is finite, and what Inspect
// reports is a consistent selection (ExpectColdSelection). Without an estimate the
// output is also exact attention over the hot set plus exactly the selected positions. With
// `reordered`: how many (entry, KV head) selections held positions other than their pages'
// [j P, (j + 1) P) (a clustered index's layout; 0 for page bounds).
inline void ExpectSmallBudgetConsistent(Driver& d, const Schedule& schedule,
                                        const ToleranceOf& tolerance,
                                        int64_t* reordered = nullptr) {
  if (reordered != nullptr) *reordered = 0;
  const Options& o = d.options();
  const Geometry& geo = d.geometry();
  RunSchedule(
      d, schedule,
      [&](int step, int layer, const std::vector<SeqId>& batch, const DecodeInputs& in,
          DType out_dtype, const std::vector<float>& out) {
        const std::string what = absl::StrCat("step ", step, ", ", DescribeBatch(batch, d, layer),
                                              ", out ", DTypeName(out_dtype));
        for (float x : out) ASSERT_TRUE(std::isfinite(x)) << what << ": output " << x;
        std::vector<std::vector<std::vector<int64_t>>> positions(batch.size());
        for (size_t b = 0; b < batch.size(); ++b) {
          const int64_t tokens = d.model().Tokens(batch[b], layer);
          for (int kh = 0; kh < o.shape.num_kv_heads; ++kh) {
            const std::string where = absl::StrCat(what, ", entry ", b, ", kv head ", kh);
            absl::StatusOr<KvCache::CacheInspection> x = d.cache().Inspect(batch[b], layer, kh);
            ASSERT_TRUE(x.ok()) << where << ": " << x.status();
            ASSERT_NO_FATAL_FAILURE(ExpectColdSelection(*x, geo, tokens, o.budget.max_pages,
                                                        o.budget.estimate_pages, where,
                                                        o.budget.estimate_rest));
            positions[b].push_back(x->selected_positions);
            if (reordered != nullptr &&
                x->selected_positions != geo.PageTokens(x->selected_pages)) {
              ++*reordered;
            }
          }
        }
        if (o.budget.estimate_pages == 0 && !o.budget.estimate_rest) {
          const Tolerance tol = tolerance(out_dtype);
          ExpectClose(out, d.ReferenceAt(layer, batch, in, positions), tol.rel, tol.abs, what);
        }
      });
}

}  // namespace kvtier::runtime_test
