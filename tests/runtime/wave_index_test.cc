// KvCache with the clustered (wave) index on the host backend, against host oracles
// (runtime_test_util.h). Target F1: with a retrieval budget covering every cold page the wave
// index is exact, i.e. Decode equals full attention over every stored token (the twins in
// double: far inside the bf16 relative error of 1e-2 that F1 asks), on random shapes, GQA
// groups, page sizes, prefill pieces and mixed sequence lengths in one batch, with and without
// an estimation zone (a zone of budget + estimate pages then holds only selected pages, so
// nothing is estimated). With a small budget: the output is finite, Inspect's selection is
// min(budget, cold pages) cold pages whose positions are distinct cold positions (the
// segment layout permutes tokens within the cold pages only), and, without an estimation
// zone, the output is exact attention over the hot set plus exactly those positions.
// Estimating the rest (budget.estimate_rest: every cold page not retrieved is estimated): F1
// at a full budget, the same output as a zone covering every cold page at a small one,
// Inspect's and the stats' count of estimated pages.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/value_shift.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"
#include "tests/runtime/wave_test_cases.h"

namespace kvtier {
namespace {

using runtime_test::Driver;
using runtime_test::WaveCase;
using runtime_test::WaveCaseName;

// 2 layers, 2 KV heads of group g, sequences of up to 2048 tokens.
Options HostWaveOptions(const WaveCase& c) {
  Options o = runtime_test::WaveOptions(c, 2048);
  o.host_memory_bytes = int64_t{160} << 20;
  return o;
}

class WaveFullBudgetTest : public ::testing::TestWithParam<WaveCase> {};

TEST_P(WaveFullBudgetTest, DecodeEqualsExactAttention) {
  const WaveCase c = GetParam();
  runtime_test::ExpectWaveFullBudgetExact(
      HostWaveOptions(c), runtime_test::WaveSchedule(c, 1700, 24), runtime_test::HostTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WaveFullBudgetTest,
    ::testing::Values(WaveCase{1, 64, DType::kBF16, 16, 0, 64, 64, 97, 0, 0, 1},
                      WaveCase{2, 128, DType::kFP16, 16, 32, 128, 256, 0, 0, 0, 2},
                      WaveCase{4, 64, DType::kFP16, 16, 16, 32, 512, 301, 0, 8, 3},
                      WaveCase{8, 128, DType::kBF16, 16, 64, 256, 128, 77, 0, 0, 4},
                      WaveCase{4, 128, DType::kBF16, 32, 0, 32, 96, 0, 0, 16, 5},
                      WaveCase{1, 256, DType::kFP16, 16, 16, 48, 64, 129, 0, 4, 6},
                      WaveCase{2, 64, DType::kBF16, 64, 64, 64, 1024, 0, 0, 0, 7},
                      // The rest estimated: with every cold page retrieved it is empty.
                      WaveCase{1, 64, DType::kBF16, 16, 0, 64, 64, 97, 0, -1, 41},
                      WaveCase{4, 128, DType::kFP16, 16, 32, 128, 256, 0, 0, -1, 42},
                      WaveCase{8, 64, DType::kBF16, 32, 64, 64, 128, 77, 0, -1, 43},
                      WaveCase{2, 256, DType::kFP16, 64, 64, 64, 512, 0, 0, -1, 44}),
    WaveCaseName);

class WaveSmallBudgetTest : public ::testing::TestWithParam<WaveCase> {};

TEST_P(WaveSmallBudgetTest, SelectsDistinctColdPositionsAndStaysFinite) {
  const WaveCase c = GetParam();
  runtime_test::ExpectWaveSmallBudgetConsistent(HostWaveOptions(c),
                                                runtime_test::WaveSmallBudgetSchedule(c, 1700, 24),
                                                runtime_test::HostTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Budgets, WaveSmallBudgetTest,
    ::testing::Values(WaveCase{1, 64, DType::kBF16, 16, 0, 64, 64, 97, 3, 0, 11},
                      WaveCase{4, 128, DType::kFP16, 16, 32, 128, 256, 0, 8, 0, 12},
                      WaveCase{8, 64, DType::kBF16, 16, 16, 32, 128, 211, 2, 6, 13},
                      WaveCase{2, 128, DType::kBF16, 32, 64, 32, 512, 0, 5, 10, 14},
                      WaveCase{4, 64, DType::kFP16, 16, 16, 64, 96, 0, 1, 3, 15},
                      WaveCase{2, 128, DType::kBF16, 16, 16, 64, 256, 0, 4, -1, 16}),
    WaveCaseName);

// The step's HBM traffic counts the estimation zone: per item, the candidates ranked after the
// retrieved ones up to the zone's length: each page's two parts' mean values, key spreads and
// counts, and its G x 2 logits from the scoring pass (its mean keys are not read again).
TEST(WaveStatsTest, EstimationZoneBytesAreCounted) {
  const WaveCase c{2, 64, DType::kBF16, 16, 16, 32, 256, 0, 3, 5, 21};
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(HostWaveOptions(c));
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& driver = **created;
  std::mt19937_64 rng(c.seed);
  // Sequence 1: 12 cold pages (more than budget + estimate); sequence 2: 6 (fewer).
  const int64_t tokens[2] = {16 + 12 * 16 + 32 - 1, 16 + 6 * 16 + 32 - 1};
  for (SeqId seq : {SeqId{1}, SeqId{2}}) {
    ASSERT_TRUE(driver.Add(seq).ok());
    ASSERT_TRUE(driver.PrefillRandom(seq, 0, tokens[seq - 1], rng).ok());
  }
  driver.cache().ResetStats();
  const std::vector<SeqId> seqs = {1, 2};
  ASSERT_TRUE(
      driver.Decode(0, seqs, driver.RandomDecodeInputs(2, rng), DType::kFP32, nullptr).ok());
  const int64_t hk = driver.cache().options().shape.num_kv_heads;
  const int64_t d = c.head_dim;
  const int64_t group = driver.cache().options().shape.group_size();
  const int64_t page_bytes = 2 * d * 2 + 2 * 4 + 2 * 4 + group * 2 * 4;  // both parts
  // After the append each holds one more token: the cold pages stay 12 and 6.
  const int64_t zone_pages = (std::min<int64_t>(12, c.budget + c.estimate) - c.budget) +
                             (std::min<int64_t>(6, c.budget + c.estimate) - c.budget);
  const LayerStats total = driver.cache().GetStats().Total();
  // And each item's value-key statistics, once (the value shift).
  EXPECT_EQ(total.estimate_bytes_read,
            zone_pages * hk * page_bytes + 2 * hk * ValueKeyStatsBytes(c.head_dim));
  EXPECT_EQ(total.hbm_bytes(), total.hot_bytes_read + total.selected_bytes_read +
                                   total.summary_bytes_read + total.estimate_bytes_read);
}

// ---- estimating the rest --------------------------------------------------------------------

// HostWaveOptions of `c` with every cold page that is not retrieved estimated.
Options HostRestOptions(WaveCase c) {
  c.estimate = -1;  // WaveOptions: budget.estimate_rest
  return HostWaveOptions(c);
}

// A sequence of `cold` cold pages whose last page is one token short of full (so that the
// next decode's token leaves the cold pages as they are): sink + cold pages + window - 1.
int64_t TokensWithColdPages(const Options& o, int64_t cold) {
  return o.sink_tokens + cold * o.page_size + o.window_tokens - 1;
}

// A small budget: the rest, estimated over every candidate less the retrieved pages, equals an
// estimation zone covering every cold page (the same sums, one taken directly and one as a
// whole less its retrieved part, in double on the host; outputs fp32), on two caches fed the
// same tokens and queries. Both select the same pages, and the estimate is not negligible: the
// output moves well away from exact attention over the hot set plus the selected positions.
class WaveRestSmallBudgetTest : public ::testing::TestWithParam<WaveCase> {};

TEST_P(WaveRestSmallBudgetTest, EqualsAZoneCoveringEveryColdPage) {
  const WaveCase c = GetParam();
  const Options rest_options = HostRestOptions(c);
  Options zone_options = HostWaveOptions(c);
  zone_options.budget.estimate_pages =
      static_cast<int>(zone_options.max_sequence_tokens / zone_options.page_size);
  absl::StatusOr<std::unique_ptr<Driver>> rest_created = Driver::Create(rest_options);
  ASSERT_TRUE(rest_created.ok()) << rest_created.status();
  absl::StatusOr<std::unique_ptr<Driver>> zone_created = Driver::Create(zone_options);
  ASSERT_TRUE(zone_created.ok()) << zone_created.status();
  Driver& rest = **rest_created;
  Driver& zone = **zone_created;
  const runtime_test::Geometry& geo = rest.geometry();
  // All hot, fewer cold pages than the budget, and two with many more.
  const std::vector<int64_t> lengths = {rest_options.sink_tokens + rest_options.window_tokens / 2,
                                        TokensWithColdPages(rest_options, c.budget - 1), 1300,
                                        1650};
  std::vector<SeqId> seqs;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const SeqId seq = static_cast<SeqId>(i + 1);
    ASSERT_TRUE(rest.Add(seq).ok());
    ASSERT_TRUE(zone.Add(seq).ok());
    for (int layer = 0; layer < rest_options.shape.num_layers; ++layer) {
      std::mt19937_64 rest_rng(c.seed * 100 + seq * 10 + layer);
      std::mt19937_64 zone_rng(c.seed * 100 + seq * 10 + layer);
      ASSERT_TRUE(rest.PrefillRandom(seq, layer, lengths[i], rest_rng, c.prefill_call_chunk).ok());
      ASSERT_TRUE(zone.PrefillRandom(seq, layer, lengths[i], zone_rng, c.prefill_call_chunk).ok());
    }
    seqs.push_back(seq);
  }
  constexpr double kRel = 1e-4;
  const size_t d = static_cast<size_t>(c.head_dim);
  std::mt19937_64 rng(c.seed);
  double largest_effect = 0;  // of the estimate, as a share of a row's scale
  int64_t estimated_pages = 0;
  for (int step = 0; step < 6; ++step) {
    const int layer = step % rest_options.shape.num_layers;
    const std::string what = absl::StrCat("step ", step, ", layer ", layer);
    const runtime_test::DecodeInputs in = rest.RandomDecodeInputs(seqs.size(), rng, 2.0f);
    std::vector<float> rest_out, zone_out;
    KVTIER_RT_ASSERT_OK(rest.Decode(layer, seqs, in, DType::kFP32, &rest_out));
    KVTIER_RT_ASSERT_OK(zone.Decode(layer, seqs, in, DType::kFP32, &zone_out));
    std::vector<std::vector<std::vector<int64_t>>> positions(seqs.size());
    for (size_t b = 0; b < seqs.size(); ++b) {
      const int64_t cold = geo.NumCold(rest.model().Tokens(seqs[b], layer));
      for (int kh = 0; kh < rest_options.shape.num_kv_heads; ++kh) {
        const std::string where = absl::StrCat(what, ", seq ", seqs[b], ", kv head ", kh);
        absl::StatusOr<KvCache::CacheInspection> r = rest.cache().Inspect(seqs[b], layer, kh);
        absl::StatusOr<KvCache::CacheInspection> z = zone.cache().Inspect(seqs[b], layer, kh);
        ASSERT_TRUE(r.ok()) << where << ": " << r.status();
        ASSERT_TRUE(z.ok()) << where << ": " << z.status();
        ASSERT_EQ(r->selected_pages, z->selected_pages) << where;
        ASSERT_EQ(r->selected_positions, z->selected_positions) << where;
        EXPECT_EQ(r->selected_pages.size(), std::min<size_t>(c.budget, cold)) << where;
        EXPECT_EQ(r->estimated_pages, cold - static_cast<int64_t>(r->selected_pages.size()))
            << where;
        EXPECT_EQ(r->estimated_pages, z->estimated_pages) << where;
        estimated_pages += r->estimated_pages;
        positions[b].push_back(r->selected_positions);
      }
    }
    const std::vector<double> unestimated = rest.ReferenceAt(layer, seqs, in, positions);
    ASSERT_EQ(rest_out.size(), zone_out.size());
    for (size_t row = 0; row * d < rest_out.size(); ++row) {
      double scale = 0;
      for (size_t i = row * d; i < (row + 1) * d; ++i) {
        scale = std::max(scale, std::abs(static_cast<double>(zone_out[i])));
      }
      ASSERT_GT(scale, 0) << what << ": query row " << row << " is zero";
      for (size_t i = row * d; i < (row + 1) * d; ++i) {
        ASSERT_TRUE(std::isfinite(rest_out[i])) << what << ": element " << i;
        ASSERT_LE(std::abs(static_cast<double>(rest_out[i]) - zone_out[i]), kRel * scale)
            << what << ": query row " << row << ", element " << i << ": rest " << rest_out[i]
            << ", zone " << zone_out[i] << " (row scale " << scale << ")";
        largest_effect = std::max(largest_effect, std::abs(zone_out[i] - unestimated[i]) / scale);
      }
    }
  }
  EXPECT_GT(estimated_pages, 0);
  EXPECT_GT(largest_effect, 100 * kRel) << "the estimate hardly moved the output";
}

INSTANTIATE_TEST_SUITE_P(
    Budgets, WaveRestSmallBudgetTest,
    ::testing::Values(WaveCase{2, 64, DType::kBF16, 16, 16, 32, 128, 97, 3, 0, 51},
                      WaveCase{4, 128, DType::kFP16, 16, 32, 128, 256, 0, 8, 0, 52},
                      WaveCase{1, 64, DType::kBF16, 32, 0, 64, 64, 0, 2, 0, 53},
                      WaveCase{8, 128, DType::kBF16, 16, 64, 64, 512, 301, 5, 0, 54}),
    WaveCaseName);

// Inspect in rest mode: every cold candidate the selection left is estimated, by count or by a
// mass target (whose selection may stop short of the budget).
TEST(WaveRestInspectTest, EstimatedPagesAreTheColdPagesNotSelected) {
  for (const double mass_target : {0.0, 0.3}) {
    SCOPED_TRACE(absl::StrCat("mass target ", mass_target));
    const WaveCase c{2, 64, DType::kBF16, 16, 16, 32, 256, 0, 4, 0, 61};
    Options o = HostRestOptions(c);
    o.budget.mass_target = mass_target;
    absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
    ASSERT_TRUE(created.ok()) << created.status();
    Driver& driver = **created;
    std::mt19937_64 rng(c.seed);
    // 12 cold pages (more than the budget), 2 (fewer), none (all hot).
    const int64_t cold[3] = {12, 2, 0};
    const std::vector<SeqId> seqs = {1, 2, 3};
    for (SeqId seq : seqs) {
      ASSERT_TRUE(driver.Add(seq).ok());
      const int64_t tokens = cold[seq - 1] > 0 ? TokensWithColdPages(o, cold[seq - 1]) : 20;
      ASSERT_TRUE(driver.PrefillRandom(seq, 0, tokens, rng).ok());
    }
    KVTIER_RT_ASSERT_OK(
        driver.Decode(0, seqs, driver.RandomDecodeInputs(seqs.size(), rng), DType::kFP32, nullptr));
    int short_of_budget = 0;  // selections the mass target stopped before the budget
    for (SeqId seq : seqs) {
      ASSERT_EQ(driver.geometry().NumCold(driver.model().Tokens(seq, 0)), cold[seq - 1]);
      for (int kh = 0; kh < o.shape.num_kv_heads; ++kh) {
        const std::string where = absl::StrCat("seq ", seq, ", kv head ", kh);
        absl::StatusOr<KvCache::CacheInspection> x = driver.cache().Inspect(seq, 0, kh);
        ASSERT_TRUE(x.ok()) << where << ": " << x.status();
        const int64_t selected = static_cast<int64_t>(x->selected_pages.size());
        if (mass_target == 0) {
          EXPECT_EQ(selected, std::min<int64_t>(c.budget, cold[seq - 1])) << where;
        } else {
          EXPECT_GE(selected, cold[seq - 1] > 0 ? 1 : 0) << where;
          EXPECT_LE(selected, std::min<int64_t>(c.budget, cold[seq - 1])) << where;
          short_of_budget += selected < std::min<int64_t>(c.budget, cold[seq - 1]) ? 1 : 0;
        }
        EXPECT_EQ(x->estimated_pages, cold[seq - 1] - selected) << where;
        EXPECT_EQ(x->estimated_tokens, int64_t{x->estimated_pages} * c.page) << where;
      }
    }
    if (mass_target > 0) EXPECT_GT(short_of_budget, 0) << "the mass target never stopped early";
  }
}

// The step's HBM traffic in rest mode counts what the rest's estimate reads: every cold
// candidate (the estimate over them all), then the retrieved ones again (taken out): per item
// candidates + min(candidates, budget) pages, each page's bytes as in the zone's.
TEST(WaveStatsTest, EstimateRestBytesCountEveryCandidateAndTheRetrievedOnesAgain) {
  const WaveCase c{2, 64, DType::kBF16, 16, 16, 32, 256, 0, 3, 0, 22};
  const Options o = HostRestOptions(c);
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& driver = **created;
  std::mt19937_64 rng(c.seed);
  // 12, 6 and 2 cold pages, of which 3, 3 and 2 are retrieved.
  const int64_t cold[3] = {12, 6, 2};
  const std::vector<SeqId> seqs = {1, 2, 3};
  for (SeqId seq : seqs) {
    ASSERT_TRUE(driver.Add(seq).ok());
    ASSERT_TRUE(driver.PrefillRandom(seq, 0, TokensWithColdPages(o, cold[seq - 1]), rng).ok());
  }
  driver.cache().ResetStats();
  KVTIER_RT_ASSERT_OK(
      driver.Decode(0, seqs, driver.RandomDecodeInputs(seqs.size(), rng), DType::kFP32, nullptr));
  const int64_t hk = o.shape.num_kv_heads;
  const int64_t d = c.head_dim;
  const int64_t group = o.shape.group_size();
  const int64_t page_bytes = 2 * d * 2 + 2 * 4 + 2 * 4 + group * 2 * 4;  // both parts
  const LayerStats total = driver.cache().GetStats().Total();
  EXPECT_EQ(total.estimate_bytes_read, ((12 + 3) + (6 + 3) + (2 + 2)) * hk * page_bytes +
                                           3 * hk * ValueKeyStatsBytes(c.head_dim));
  EXPECT_EQ(total.hbm_bytes(), total.hot_bytes_read + total.selected_bytes_read +
                                   total.summary_bytes_read + total.estimate_bytes_read);
}

// The value shift's per-item sums start at zero for every sequence: a sequence in a slot that
// another used (prefilled, decoded past page boundaries, removed) decodes exactly as it does
// in a fresh cache.
TEST(WaveValueShiftTest, AReusedSlotStartsWithoutThePreviousSums) {
  const WaveCase c{2, 64, DType::kBF16, 16, 16, 32, 256, 0, 2, -1, 77};
  Options o = HostWaveOptions(c);
  o.max_sequences = 1;
  o.max_batch_size = 1;
  const int layers = o.shape.num_layers;
  auto decode_steps = [&](Driver& d, SeqId seq, uint64_t seed, int steps,
                          std::vector<float>* last) {
    std::mt19937_64 rng(seed);
    for (int step = 0; step < steps; ++step) {
      const runtime_test::DecodeInputs in = d.RandomDecodeInputs(1, rng, 2.0f);
      for (int layer = 0; layer < layers; ++layer) {
        KVTIER_RT_ASSERT_OK(d.Decode(layer, {seq}, in, DType::kFP32, last));
      }
    }
  };
  auto prefill = [&](Driver& d, SeqId seq, uint64_t seed) {
    std::mt19937_64 rng(seed);
    KVTIER_RT_ASSERT_OK(d.Add(seq));
    for (int layer = 0; layer < layers; ++layer) {
      KVTIER_RT_ASSERT_OK(d.PrefillRandom(seq, layer, 600, rng));
    }
  };
  absl::StatusOr<std::unique_ptr<Driver>> used = Driver::Create(o);
  absl::StatusOr<std::unique_ptr<Driver>> fresh = Driver::Create(o);
  ASSERT_TRUE(used.ok() && fresh.ok());
  prefill(**used, 1, 1);
  decode_steps(**used, 1, 2, 40, nullptr);  // completes pages: they add to the sums
  KVTIER_RT_ASSERT_OK((*used)->Remove(1));
  std::vector<float> in_used, in_fresh;
  prefill(**used, 2, 3);
  decode_steps(**used, 2, 4, 20, &in_used);
  prefill(**fresh, 2, 3);
  decode_steps(**fresh, 2, 4, 20, &in_fresh);
  ASSERT_EQ(in_used.size(), in_fresh.size());
  for (size_t i = 0; i < in_used.size(); ++i) ASSERT_EQ(in_used[i], in_fresh[i]) << i;
}

}  // namespace
}  // namespace kvtier
