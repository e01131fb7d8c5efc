// The exact-attention measure that kvtier-replay and kvtier-accuracy share
// (tools/common/attention_accuracy.h), on hand-made data: captured mass, both errors, the
// oracle, NaN outputs, the summaries, the hot-set geometry and the reading of Inspect.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/base/dtype.h"
#include "runtime/core/options.h"
#include "runtime/kv_cache.h"
#include "tools/common/attention_accuracy.h"

namespace kvtier::tools {
namespace {

using ::testing::HasSubstr;

// One query head of D 64 over three tokens whose logits are 0, log 2 and 0 (q . k / 8 at
// scale 1/8), values e_0, e_1, e_2: exact weights 1/4, 1/2, 1/4.
struct Tiny {
  std::vector<uint16_t> q, k, v;
  Tiny() : q(64), k(3 * 64), v(3 * 64) {
    for (int i = 0; i < 64; ++i) q[i] = FloatToBF16(i == 0 ? 1.0f : 0.0f);
    const float k0[3] = {0.0f, 8.0f * std::log(2.0f), 0.0f};
    for (int t = 0; t < 3; ++t) {
      for (int i = 0; i < 64; ++i) {
        k[t * 64 + i] = FloatToBF16(i == 0 ? k0[t] : 0.0f);
        v[t * 64 + i] = FloatToBF16(i == t ? 1.0f : 0.0f);
      }
    }
  }
  // The exact weights as bf16 rounding of log 2 leaves them.
  std::vector<double> Weights() const {
    const double l = BF16ToFloat(k[64]) / 8.0;
    const double z = 2 + std::exp(l);
    return {1 / z, std::exp(l) / z, 1 / z};
  }
  GroupAttention Group(const std::vector<float>& out, const std::vector<uint8_t>& captured) const {
    GroupAttention g;
    g.dtype = DType::kBF16;
    g.group_size = 1;
    g.head_dim = 64;
    g.softmax_scale = 1.0f / 8;
    g.q = q.data();
    g.k = k.data();
    g.v = v.data();
    g.tokens = 3;
    g.kv_row_stride = 64;
    g.out = out.data();
    g.captured = captured;
    return g;
  }
};

TEST(MeasureGroupAccuracyTest, FullCaptureOfTheExactOutputIsErrorFree) {
  Tiny t;
  const std::vector<double> w = t.Weights();
  std::vector<float> out(64, 0.0f);
  for (int i = 0; i < 3; ++i) out[i] = static_cast<float>(w[i]);
  const std::vector<uint8_t> all = {1, 1, 1};
  const GroupAccuracy a = MeasureGroupAccuracy(t.Group(out, all));
  EXPECT_EQ(a.tokens, 3);
  EXPECT_EQ(a.captured_tokens, 3);
  ASSERT_EQ(a.heads.size(), 1u);
  EXPECT_DOUBLE_EQ(a.heads[0].mass_captured, 1.0);
  EXPECT_TRUE(std::isnan(a.heads[0].oracle_mass));  // not asked for
  EXPECT_LT(a.heads[0].output_error, 1e-6);
  EXPECT_LT(a.heads[0].restricted_error, 1e-6);
}

TEST(MeasureGroupAccuracyTest, PartialCaptureMeasuresMassAndBothErrors) {
  Tiny t;
  const std::vector<double> w = t.Weights();
  // The runtime attended tokens 0 and 1 only, exactly.
  std::vector<float> out(64, 0.0f);
  out[0] = static_cast<float>(w[0] / (w[0] + w[1]));
  out[1] = static_cast<float>(w[1] / (w[0] + w[1]));
  const std::vector<uint8_t> two = {1, 1, 0};
  const GroupAccuracy a = MeasureGroupAccuracy(t.Group(out, two));
  EXPECT_EQ(a.captured_tokens, 2);
  EXPECT_NEAR(a.heads[0].mass_captured, w[0] + w[1], 1e-12);
  EXPECT_LT(a.heads[0].restricted_error, 1e-6);
  const double diff[3] = {out[0] - w[0], out[1] - w[1], -w[2]};
  const double expected = std::sqrt((diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2]) /
                                    (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]));
  EXPECT_NEAR(a.heads[0].output_error, expected, 1e-6);
}

TEST(MeasureGroupAccuracyTest, AnUnwrittenOutputIsNaN) {
  Tiny t;
  const std::vector<float> out(64, std::numeric_limits<float>::quiet_NaN());
  const std::vector<uint8_t> all = {1, 1, 1};
  const GroupAccuracy a = MeasureGroupAccuracy(t.Group(out, all));
  EXPECT_TRUE(std::isnan(a.heads[0].output_error));
  EXPECT_TRUE(std::isnan(a.heads[0].restricted_error));
}

// Two heads over 8 tokens in pages of 2: token 0-1 hot; the oracle, with one page, picks the
// page of the largest mass summed over both heads, which is neither head's own best.
TEST(MeasureGroupAccuracyTest, TheOraclePicksPagesByTheGroupsSummedMass) {
  constexpr int kD = 64, kTokens = 8;
  // Logit (at scale 1) of token t for head 0 and head 1, along channel 0 and 1.
  const float head0[kTokens] = {0, 0, 0, 0, 3.5f, 0, 2.5f, 2.5f};
  const float head1[kTokens] = {0, 0, 3.5f, 0, 0, 0, 2.5f, 2.5f};
  std::vector<uint16_t> q(2 * kD, FloatToFP16(0)), k(kTokens * kD, FloatToFP16(0)),
      v(kTokens * kD, FloatToFP16(0));
  q[0] = FloatToFP16(1);
  q[kD + 1] = FloatToFP16(1);
  for (int t = 0; t < kTokens; ++t) {
    k[t * kD + 0] = FloatToFP16(head0[t]);
    k[t * kD + 1] = FloatToFP16(head1[t]);
    v[t * kD + 2] = FloatToFP16(1);
  }
  const std::vector<float> out(2 * kD, 0.0f);
  const std::vector<uint8_t> hot = {1, 1, 0, 0, 0, 0, 0, 0};
  GroupAttention g;
  g.dtype = DType::kFP16;
  g.group_size = 2;
  g.head_dim = kD;
  g.softmax_scale = 1.0f;
  g.q = q.data();
  g.k = k.data();
  g.v = v.data();
  g.tokens = kTokens;
  g.kv_row_stride = kD;
  g.out = out.data();
  g.captured = hot;
  g.hot = hot;
  g.page_size = 2;
  g.oracle_pages = 1;
  const GroupAccuracy a = MeasureGroupAccuracy(g);
  for (int h = 0; h < 2; ++h) {
    const float* logits = h == 0 ? head0 : head1;
    double z = 0;
    for (int t = 0; t < kTokens; ++t) z += std::exp(static_cast<double>(logits[t]));
    // Page 3 (tokens 6, 7) holds 2 e^2.5 = 24.4 of each head: less than either head's own best
    // page (e^3.5 + 1 = 34.1), the most of the two heads together (48.7 against 36.1).
    const double expected = (2.0 + 2 * std::exp(2.5)) / z;
    EXPECT_NEAR(a.heads[h].oracle_mass, expected, 1e-3) << "head " << h;
    EXPECT_NEAR(a.heads[h].mass_captured, 2.0 / z, 1e-3) << "head " << h;
  }
  g.oracle_pages = 100;  // more than the three cold pages: all of them
  const GroupAccuracy all = MeasureGroupAccuracy(g);
  EXPECT_NEAR(all.heads[0].oracle_mass, 1.0, 1e-12);
  EXPECT_NEAR(all.heads[1].oracle_mass, 1.0, 1e-12);
}

TEST(SummarizeTest, MeanMinMaxAndNearestRankP95) {
  std::vector<double> values;
  for (int i = 1; i <= 40; ++i) values.push_back(i);
  const ValueSummary s = Summarize(values);
  EXPECT_EQ(s.count, 40);
  EXPECT_EQ(s.non_finite, 0);
  EXPECT_DOUBLE_EQ(s.mean, 20.5);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 40);
  EXPECT_DOUBLE_EQ(s.p95, 38);  // ceil(0.95 * 40) = 38th value
  EXPECT_DOUBLE_EQ(Summarize(std::vector<double>{0.5}).p95, 0.5);
  EXPECT_EQ(Summarize({}).count, 0);
}

TEST(SummarizeTest, ANaNNeverPassesSilently) {
  const ValueSummary s = Summarize(std::vector<double>{0.1, std::nan(""), 0.2});
  EXPECT_EQ(s.count, 3);
  EXPECT_EQ(s.non_finite, 1);
  EXPECT_TRUE(std::isnan(s.mean));
  EXPECT_TRUE(std::isnan(s.p95));
  EXPECT_TRUE(std::isnan(s.max));
  EXPECT_TRUE(std::isnan(s.min));
}

TEST(HotSetTest, WholePagesOfSinkAndWindow) {
  // 8192 tokens, pages of 16, sink 64, window 1024: cold pages [4, 448).
  HotSetGeometry g = HotSet(8192, 16, 64, 1024);
  EXPECT_EQ(g.sink_end, 64);
  EXPECT_EQ(g.window_begin, 448 * 16);
  EXPECT_EQ(g.cold_tokens(), 7104);
  // A partial last page counts as a window page: 8193 tokens have 513 pages.
  g = HotSet(8193, 16, 64, 1024);
  EXPECT_EQ(g.window_begin, 449 * 16);
  // Everything hot.
  g = HotSet(500, 16, 64, 1024);
  EXPECT_EQ(g.sink_end, 64);
  EXPECT_EQ(g.window_begin, 64);
  EXPECT_EQ(ColdTokens(500, 16, 64, 1024), 0);
  g = HotSet(40, 16, 64, 1024);
  EXPECT_EQ(g.sink_end, 40);
  EXPECT_EQ(g.window_begin, 40);
}

Options SmallOptions() {
  Options o;
  o.page_size = 16;
  o.sink_tokens = 16;
  o.window_tokens = 32;
  return o;
}

TEST(ExactTokensTest, ReadsTheReportedHotSetAndPositions) {
  KvCache::CacheInspection inspection;
  inspection.tokens = 100;
  inspection.window_begin = 64;
  inspection.selected_positions = {20, 21, 40};
  inspection.selected_pages = {1, 2};
  ExactTokens exact;
  ASSERT_TRUE(ExactTokensOf(inspection, SmallOptions(), 100, &exact).ok());
  EXPECT_FALSE(exact.derived);
  EXPECT_EQ(exact.retrieved, 3);
  int hot = 0, captured = 0;
  for (int t = 0; t < 100; ++t) {
    hot += exact.hot[t];
    captured += exact.captured[t];
  }
  EXPECT_EQ(hot, 16 + 36);
  EXPECT_EQ(captured, 16 + 36 + 3);
  EXPECT_EQ(exact.captured[21], 1);
  EXPECT_EQ(exact.captured[22], 0);
}

TEST(ExactTokensTest, DerivesPositionsWhenTheRuntimeLeavesThemOut) {
  KvCache::CacheInspection inspection;  // tokens 0: not reported
  inspection.selected_pages = {2};
  ExactTokens exact;
  ASSERT_TRUE(ExactTokensOf(inspection, SmallOptions(), 100, &exact).ok());
  EXPECT_TRUE(exact.derived);
  EXPECT_EQ(exact.retrieved, 16);
  EXPECT_EQ(exact.captured[32], 1);
  EXPECT_EQ(exact.captured[47], 1);
  EXPECT_EQ(exact.captured[48], 0);
  // 100 tokens = 7 pages; window pages [5, 7): hot from 80.
  EXPECT_EQ(exact.hot[79], 0);
  EXPECT_EQ(exact.hot[80], 1);
}

TEST(ExactTokensTest, NoPositionsAreDerivedForAClusteredIndex) {
  KvCache::CacheInspection inspection;  // tokens 0: not reported
  inspection.selected_pages = {2};
  Options options = SmallOptions();
  options.index = IndexKind::kWave;
  ExactTokens exact;
  const absl::Status status = ExactTokensOf(inspection, options, 100, &exact);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("no selected_positions for the wave index"));
}

TEST(ExactTokensTest, AnInconsistentInspectionIsAnError) {
  KvCache::CacheInspection inspection;
  inspection.tokens = 99;
  inspection.window_begin = 64;
  ExactTokens exact;
  EXPECT_THAT(ExactTokensOf(inspection, SmallOptions(), 100, &exact).message(),
              HasSubstr("reports 99 tokens"));
  inspection.tokens = 100;
  inspection.selected_positions = {70};  // in the window
  EXPECT_THAT(ExactTokensOf(inspection, SmallOptions(), 100, &exact).message(),
              HasSubstr("selected position 70"));
  inspection.selected_positions = {};
  inspection.window_begin = 101;
  EXPECT_THAT(ExactTokensOf(inspection, SmallOptions(), 100, &exact).message(),
              HasSubstr("window_begin 101"));
}

}  // namespace
}  // namespace kvtier::tools
