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
#include <vector>

#include "gtest/gtest.h"
#include "runtime/kv_cache.h"
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
                      WaveCase{2, 64, DType::kBF16, 64, 64, 64, 1024, 0, 0, 0, 7}),
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
                      WaveCase{4, 64, DType::kFP16, 16, 16, 64, 96, 0, 1, 3, 15}),
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
  EXPECT_EQ(total.estimate_bytes_read, zone_pages * hk * page_bytes);
  EXPECT_EQ(total.hbm_bytes(), total.hot_bytes_read + total.selected_bytes_read +
                                   total.summary_bytes_read + total.estimate_bytes_read);
}

}  // namespace
}  // namespace kvtier
