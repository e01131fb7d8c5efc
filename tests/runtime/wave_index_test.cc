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
#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/runtime_test_util.h"

namespace kvtier {
namespace {

using runtime_test::Driver;
using runtime_test::HostOptions;

struct WaveCase {
  int g;
  int head_dim;
  DType dtype;
  int page;
  int sink;
  int window;
  int max_prefill_chunk;       // Options::max_prefill_chunk_tokens: the largest segment
  int64_t prefill_call_chunk;  // largest Prefill call (0: one call per layer)
  int budget;                  // budget.max_pages (0: every page)
  int estimate;                // budget.estimate_pages
  uint64_t seed;
};

std::string WaveCaseName(const ::testing::TestParamInfo<WaveCase>& info) {
  const WaveCase& c = info.param;
  return absl::StrCat("G", c.g, "_D", c.head_dim, "_", DTypeName(c.dtype), "_P", c.page, "_S",
                      c.sink, "_W", c.window, "_chunk", c.max_prefill_chunk, "_k", c.budget, "_e",
                      c.estimate);
}

Options WaveOptions(const WaveCase& c) {
  Options o = HostOptions(c.g, c.head_dim, c.dtype, c.page, c.sink, c.window);
  o.index = IndexKind::kWave;
  o.budget.max_pages = c.budget > 0 ? c.budget : static_cast<int>(o.max_sequence_tokens / c.page);
  o.budget.estimate_pages = c.estimate;
  o.cache_slots_per_budget = c.budget > 0 ? 1.5 : 1.0;
  o.max_prefill_chunk_tokens = c.max_prefill_chunk;
  o.host_memory_bytes = int64_t{160} << 20;
  return o;
}

class WaveFullBudgetTest : public ::testing::TestWithParam<WaveCase> {};

TEST_P(WaveFullBudgetTest, DecodeEqualsExactAttention) {
  const WaveCase c = GetParam();
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(WaveOptions(c));
  ASSERT_TRUE(created.ok()) << created.status();
  runtime_test::Schedule schedule;
  schedule.max_tokens = 1700;
  schedule.prefill_call_chunk = c.prefill_call_chunk;
  schedule.steps = 24;
  schedule.seed = c.seed;
  runtime_test::ExpectFullBudgetExact(**created, schedule, runtime_test::HostTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WaveFullBudgetTest,
    ::testing::Values(WaveCase{1, 64, DType::kBF16, 16, 0, 64, 64, 97, 0, 0, 1},
                      WaveCase{2, 128, DType::kFP16, 16, 32, 128, 256, 0, 0, 0, 2},
                      WaveCase{4, 64, DType::kFP16, 16, 16, 32, 512, 301, 0, 8, 3},
                      WaveCase{8, 128, DType::kBF16, 16, 64, 256, 128, 77, 0, 0, 4},
                      WaveCase{4, 128, DType::kBF16, 32, 0, 32, 96, 0, 0, 16, 5},
                      WaveCase{1, 256, DType::kFP16, 16, 16, 48, 64, 129, 0, 4, 6},
                      WaveCase{2, 64, DType::kBF16, 64, 64, 64, 1024, 0, 0, 0, 7}),
    WaveCaseName);

class WaveSmallBudgetTest : public ::testing::TestWithParam<WaveCase> {};

TEST_P(WaveSmallBudgetTest, SelectsDistinctColdPositionsAndStaysFinite) {
  const WaveCase c = GetParam();
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(WaveOptions(c));
  ASSERT_TRUE(created.ok()) << created.status();
  runtime_test::Schedule schedule;
  schedule.max_tokens = 1700;
  schedule.prefill_call_chunk = c.prefill_call_chunk;
  schedule.steps = 24;
  schedule.churn = 5;
  schedule.q_scale = 2.0f;  // a peaked softmax, so the selection matters
  schedule.seed = c.seed;
  int64_t reordered = 0;
  runtime_test::ExpectSmallBudgetConsistent(**created, schedule, runtime_test::HostTolerance,
                                            &reordered);
  // The segment layout is in use: some selected pages hold tokens out of position order.
  EXPECT_GT(reordered, 0) << "every selected page held its positions in order";
}

INSTANTIATE_TEST_SUITE_P(
    Budgets, WaveSmallBudgetTest,
    ::testing::Values(WaveCase{1, 64, DType::kBF16, 16, 0, 64, 64, 97, 3, 0, 11},
                      WaveCase{4, 128, DType::kFP16, 16, 32, 128, 256, 0, 8, 0, 12},
                      WaveCase{8, 64, DType::kBF16, 16, 16, 32, 128, 211, 2, 6, 13},
                      WaveCase{2, 128, DType::kBF16, 32, 64, 32, 512, 0, 5, 10, 14},
                      WaveCase{4, 64, DType::kFP16, 16, 16, 64, 96, 0, 1, 3, 15}),
    WaveCaseName);

// The step's HBM traffic counts the estimation zone: per item, the candidates ranked after the
// retrieved ones up to the zone's length, each page's split centroid (two parts of mean key,
// value sum, key spread and count).
TEST(WaveStatsTest, EstimationZoneBytesAreCounted) {
  const WaveCase c{2, 64, DType::kBF16, 16, 16, 32, 256, 0, 3, 5, 21};
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(WaveOptions(c));
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
  const int64_t page_bytes = 2 * d * 2 + 2 * d * 4 + 2 * d * 2 + 2 * 4;  // both parts
  // After the append each holds one more token: the cold pages stay 12 and 6.
  const int64_t zone_pages = (std::min<int64_t>(12, c.budget + c.estimate) - c.budget) +
                             (std::min<int64_t>(6, c.budget + c.estimate) - c.budget);
  const LayerStats total = driver.cache().GetStats().Total();
  EXPECT_EQ(total.estimate_bytes_read, zone_pages * hk * page_bytes);
  EXPECT_EQ(total.hbm_bytes(), total.hot_bytes_read + total.selected_bytes_read +
                                   total.summary_bytes_read + total.estimate_bytes_read);
}

}  // namespace
}  // namespace kvtier
