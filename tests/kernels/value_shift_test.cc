// Host twins of the value-shift kernels (value_shift.h) against sums written out here, on
// fresh random pages whose keys form two groups: the statistics gain each complete page's
// sum of dv dk^T over its tokens (deviations from the nearer part's means), its sum of |dk|^2
// and its P tokens, and nothing from a partial page or a null destination; the shift is
// scale * D * (sum) q / (sum |dk|^2), 0 without statistics, NaN from NaN ones; the estimation
// with a shift moves each row by (sum w s / sum w) shift, and a lone centroid's by s shift.
#include "kernels/value_shift.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/block_summary.h"
#include "kernels/estimation.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/value_shift_pages.h"

namespace kvtier {
namespace {

using testing_util::EstimationItemSpec;
using testing_util::EstimationLists;
using testing_util::ValueShiftPages;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The statistics written out: per complete page, the part of each token by the nearer stored
// part mean key (double distances; random keys leave no near ties), sums in double.
std::vector<double> DirectStats(const ValueShiftPages& b, const std::vector<float>& initial) {
  const int dim = b.dim();
  const int64_t floats = ValueKeyStatsFloats(dim);
  std::vector<double> out(initial.begin(), initial.end());
  for (int j = 0; j < b.num_pages(); ++j) {
    if (b.tokens()[j] != b.page_size()) continue;
    double* stats = out.data() + (j % b.items()) * floats;
    auto mean = [&](const std::vector<uint16_t>& a, int part, int d) {
      return LoadAsFloat(b.dtype(), a.data(), (static_cast<size_t>(j) * 2 + part) * dim + d);
    };
    for (int t = 0; t < b.page_size(); ++t) {
      double dist[2] = {0.0, 0.0};
      for (int part = 0; part < 2; ++part) {
        for (int d = 0; d < dim; ++d) {
          const double e = b.Key(j, t, d) - mean(b.key_mean(), part, d);
          dist[part] += e * e;
        }
      }
      const int part = b.count()[2 * j + 1] > 0 && dist[1] < dist[0] ? 1 : 0;
      std::vector<double> dk(dim), dv(dim);
      for (int d = 0; d < dim; ++d) {
        dk[d] = b.Key(j, t, d) - mean(b.key_mean(), part, d);
        dv[d] = b.Value(j, t, d) - mean(b.value_mean(), part, d);
        stats[int64_t{dim} * dim] += dk[d] * dk[d];
      }
      for (int r = 0; r < dim; ++r) {
        for (int c = 0; c < dim; ++c) stats[int64_t{r} * dim + c] += dv[r] * dk[c];
      }
    }
    stats[int64_t{dim} * dim + 1] += b.page_size();
  }
  return out;
}

void ExpectStatsNear(const std::vector<float>& got, const std::vector<double>& want, int dim,
                     int items) {
  const int64_t floats = ValueKeyStatsFloats(dim);
  for (int i = 0; i < items; ++i) {
    SCOPED_TRACE(absl::StrCat("item ", i));
    double scale = 1e-3;
    for (int64_t k = 0; k < int64_t{dim} * dim; ++k) {
      scale = std::max(scale, std::abs(want[i * floats + k]));
    }
    for (int64_t k = 0; k < int64_t{dim} * dim; ++k) {
      ASSERT_NEAR(got[i * floats + k], want[i * floats + k], 1e-5 * scale) << "entry " << k;
    }
    const double square = want[i * floats + int64_t{dim} * dim];
    EXPECT_NEAR(got[i * floats + int64_t{dim} * dim], square, 1e-5 * std::max(square, 1.0));
    EXPECT_EQ(got[i * floats + int64_t{dim} * dim + 1], want[i * floats + int64_t{dim} * dim + 1]);
  }
}

TEST(ValueKeyCovarianceTest, AddsEveryCompletePageOnce) {
  std::mt19937_64 rng(7);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int page_size : {16, 64}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " D ", dim, " P ", page_size));
        ValueShiftPages b(dtype, dim, page_size, 3, 4, 0.3, rng());
        ASSERT_TRUE(ReferencePageSummaries(b.Summaries()).ok());
        // Statistics that already hold sums: the pages add to them.
        std::normal_distribution<float> normal;
        for (float& x : b.stats()) x = normal(rng);
        for (int i = 0; i < b.items(); ++i) {  // whole token counts, which add exactly
          b.stats()[(i + 1) * ValueKeyStatsFloats(dim) - 1] = 32.0f * i;
        }
        const std::vector<float> initial = b.stats();
        ASSERT_TRUE(ReferenceValueKeyCovariance(b.Covariance()).ok());
        ASSERT_NO_FATAL_FAILURE(
            ExpectStatsNear(b.stats(), DirectStats(b, initial), dim, b.items()));
      }
    }
  }
}

TEST(ValueKeyCovarianceTest, SkipsPartialPagesAndNullDestinations) {
  ValueShiftPages b(DType::kBF16, 128, 16, 2, 3, 1.0, 11);  // every page partial
  ASSERT_TRUE(ReferencePageSummaries(b.Summaries()).ok());
  ASSERT_TRUE(ReferenceValueKeyCovariance(b.Covariance()).ok());
  for (float x : b.stats()) ASSERT_EQ(x, 0.0f);
  // Complete, but without a destination.
  for (int32_t& t : b.mutable_tokens()) t = 16;
  ASSERT_TRUE(ReferencePageSummaries(b.Summaries()).ok());
  ValueKeyCovarianceParams p = b.Covariance();
  std::vector<float*> none(static_cast<size_t>(b.num_pages()), nullptr);
  p.stats = none.data();
  ASSERT_TRUE(ReferenceValueKeyCovariance(p).ok());
  for (float x : b.stats()) ASSERT_EQ(x, 0.0f);
  // A complete page summarised twice counts twice: callers add a page when it completes.
  ASSERT_TRUE(ReferenceValueKeyCovariance(b.Covariance()).ok());
  EXPECT_EQ(b.stats()[ValueKeyStatsFloats(128) - 1], 3 * 16.0f);
}

TEST(ValueKeyCovarianceTest, NanKeyMakesItsItemNan) {
  ValueShiftPages b(DType::kBF16, 64, 16, 2, 2, 0.0, 13);
  ASSERT_TRUE(ReferencePageSummaries(b.Summaries()).ok());
  const_cast<uint16_t&>(b.keys()[5]) = FloatToBF16(kNaN);  // page 0: item 0
  ASSERT_TRUE(ReferenceValueKeyCovariance(b.Covariance()).ok());
  const int64_t floats = ValueKeyStatsFloats(64);
  EXPECT_TRUE(std::isnan(b.stats()[64 * 64]));
  for (int64_t k = floats; k < 2 * floats; ++k) ASSERT_FALSE(std::isnan(b.stats()[k]));
}

TEST(ValueKeyCovarianceTest, RejectsBadFields) {
  ValueShiftPages b(DType::kBF16, 64, 16, 1, 1, 0.0, 3);
  ValueKeyCovarianceParams p = b.Covariance();
  p.head_dim = 96;
  EXPECT_EQ(ReferenceValueKeyCovariance(p).code(), absl::StatusCode::kInvalidArgument);
  p = b.Covariance();
  p.item_stride = 0;
  EXPECT_NE(ReferenceValueKeyCovariance(p).message().find("item_stride"), std::string::npos);
  p = b.Covariance();
  p.stats = nullptr;
  EXPECT_NE(ReferenceValueKeyCovariance(p).message().find("stats"), std::string::npos);
  p = b.Covariance();
  std::vector<const void*> null_keys(1, nullptr);
  p.k_pages = null_keys.data();
  EXPECT_NE(ReferenceValueKeyCovariance(p).message().find("entry 0"), std::string::npos);
  for (float x : b.stats()) ASSERT_EQ(x, 0.0f);
}

TEST(ValueShiftTest, IsScaledCrossCovarianceTimesQuery) {
  std::mt19937_64 rng(17);
  std::normal_distribution<float> normal;
  for (int dim : {64, 128, 256}) {
    for (int group : {1, 4}) {
      const int items = 4;
      const int64_t floats = ValueKeyStatsFloats(dim);
      std::vector<float> stats(items * floats);
      for (float& x : stats) x = normal(rng);
      for (int i = 0; i < items; ++i) stats[i * floats + int64_t{dim} * dim] = 50.0f + i;
      stats[2 * floats + int64_t{dim} * dim] = 0.0f;  // item 2: nothing counted yet
      stats[3 * floats + int64_t{dim} * dim] = kNaN;  // item 3: NaN statistics
      std::vector<const float*> ptr;
      for (int i = 0; i < items; ++i) ptr.push_back(stats.data() + i * floats);
      ptr[1] = nullptr;  // item 1: no statistics
      std::vector<uint16_t> q(static_cast<size_t>(items) * group * dim);
      for (uint16_t& x : q) x = FloatToBF16(normal(rng));
      std::vector<float> shift(q.size(), kNaN);
      ValueShiftParams p;
      p.dtype = DType::kBF16;
      p.head_dim = dim;
      p.group_size = group;
      p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
      p.num_items = items;
      p.q = q.data();
      p.stats = ptr.data();
      p.shift = shift.data();
      ASSERT_TRUE(ReferenceValueShift(p).ok());
      for (int g = 0; g < group; ++g) {
        for (int r = 0; r < dim; ++r) {
          double dot = 0.0;
          for (int c = 0; c < dim; ++c) {
            dot += double{stats[int64_t{r} * dim + c]} * BF16ToFloat(q[g * dim + c]);
          }
          const double want = p.softmax_scale * dim * dot / 50.0;
          ASSERT_NEAR(shift[int64_t{g} * dim + r], want, 1e-5 * (std::abs(want) + 1e-3));
          ASSERT_EQ(shift[(int64_t{1} * group + g) * dim + r], 0.0f);
          ASSERT_EQ(shift[(int64_t{2} * group + g) * dim + r], 0.0f);
          ASSERT_TRUE(std::isnan(shift[(int64_t{3} * group + g) * dim + r]));
        }
      }
    }
  }
  ValueShiftParams bad;
  bad.dtype = DType::kBF16;
  bad.head_dim = 128;
  bad.group_size = 0;
  EXPECT_NE(ReferenceValueShift(bad).message().find("group_size"), std::string::npos);
}

// The shift moves a row by one scalar times the shift: the weighted mean of the estimated
// centroids' spreads, within [0, the largest spread]; a lone centroid's row by its spread.
TEST(EstimationValueShiftTest, MovesEachRowByWeightedSpreadTimesShift) {
  std::mt19937_64 rng(23);
  for (int parts : {1, 2}) {
    std::vector<EstimationItemSpec> items(6);
    for (size_t i = 0; i < items.size(); ++i) {
      items[i].clusters = 1 + static_cast<int>(rng() % 40);
      items[i].count = i == 0 ? 0 : static_cast<int>(1 + rng() % 30);
    }
    EstimationLists batch(DType::kBF16, 128, 4, parts, 32, 0, items, rng());
    batch.AddSpread(rng());
    const size_t rows = batch.rows();
    std::vector<float> plain(rows * 128, kNaN), plain_lse(rows, kNaN);
    ASSERT_TRUE(ReferenceEstimation(batch.Params(plain.data(), plain_lse.data())).ok());
    batch.AddValueShift(rng());
    std::vector<float> shifted(rows * 128, kNaN), shifted_lse(rows, kNaN);
    const EstimationParams p = batch.Params(shifted.data(), shifted_lse.data());
    ASSERT_TRUE(ReferenceEstimation(p).ok());
    for (size_t row = 0; row < rows; ++row) {
      ASSERT_EQ(shifted_lse[row], plain_lse[row]) << "row " << row;  // weights do not change
      double num = 0.0, den = 0.0;
      for (int d = 0; d < 128; ++d) {
        const double s = p.value_shift[row * 128 + d];
        num += (shifted[row * 128 + d] - plain[row * 128 + d]) * s;
        den += s * s;
      }
      const double ratio = num / den;
      if (plain_lse[row] == -std::numeric_limits<float>::infinity()) {
        EXPECT_EQ(ratio, 0.0) << "row " << row;
        continue;
      }
      EXPECT_GE(ratio, 0.0);
      EXPECT_LE(ratio, 0.6);
      for (int d = 0; d < 128; ++d) {
        const double moved = shifted[row * 128 + d] - plain[row * 128 + d];
        ASSERT_NEAR(moved, ratio * p.value_shift[row * 128 + d], 1e-5) << "row " << row;
      }
    }
  }
  // Without spreads there is nothing to scale the shift by.
  std::vector<EstimationItemSpec> one(1);
  one[0].clusters = 3;
  one[0].count = 2;
  EstimationLists batch(DType::kBF16, 64, 2, 1, 4, 0, one, 5);
  batch.AddValueShift(6);
  std::vector<float> out(batch.rows() * 64), lse(batch.rows());
  EXPECT_NE(ReferenceEstimation(batch.Params(out.data(), lse.data())).message().find("key_spread"),
            std::string::npos);
}

}  // namespace
}  // namespace kvtier
