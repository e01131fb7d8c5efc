// Host twin of estimation's range and superset modes (estimation.h), the wave index's rest:
// a range estimates exactly the clusters it spans (as the same ids listed would); a selection
// taken out of its range's estimate leaves the estimate of the rest (as the rest listed
// would, up to the rounding of the superset's fp32 results); a selection of the whole range
// leaves nothing, an empty one the superset itself; NaN in the superset's lse makes the row
// NaN; bad fields are named.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/estimation.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/estimation_rest.h"

namespace kvtier {
namespace {

using testing_util::AsOffsets;
using testing_util::AsRanges;
using testing_util::EstimationLists;
using testing_util::MakeRestLists;
using testing_util::RestItems;
using testing_util::RestLists;

constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Result {
  std::vector<float> out, lse;
  Result(size_t rows, int dim) : out(rows * dim, kPoison), lse(rows, kPoison) {}
};

TEST(EstimationRestTest, RangeEqualsTheListOfItsClusters) {
  std::mt19937_64 rng(41);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int parts : {1, 2}) {
      for (int variant = 0; variant < 3; ++variant) {  // mean keys, logits, logits + spread
        const int stride = 1 + static_cast<int>(rng() % 30);
        EstimationLists batch(dtype, 64, 3, parts, stride, 0, RestItems(8, 80, stride, rng), rng());
        if (variant > 0) batch.AddLogits(rng());
        if (variant > 1) batch.AddSpread(rng());
        const RestLists r = MakeRestLists(batch, stride, rng);
        Result range(batch.rows(), 64), listed(batch.rows(), 64);
        const EstimationParams base = batch.Params(nullptr, nullptr);
        EstimationParams p = AsRanges(base, r.begin.data(), r.end.data());
        p.out = range.out.data();
        p.lse = range.lse.data();
        ASSERT_TRUE(ReferenceEstimation(p).ok());
        EstimationParams q = AsOffsets(base, r.range_ids.data(), r.range_offsets.data());
        q.out = listed.out.data();
        q.lse = listed.lse.data();
        ASSERT_TRUE(ReferenceEstimation(q).ok());
        const std::string what = absl::StrCat(DTypeName(dtype), " parts ", parts, " v ", variant);
        // The same clusters in the same order: the same bits (NaN-free inputs).
        EXPECT_EQ(range.out, listed.out) << what;
        EXPECT_EQ(range.lse, listed.lse) << what;
        // Item 2's range is empty.
        for (int g = 0; g < 3; ++g) EXPECT_EQ(range.lse[2 * 3 + g], -kInf) << what;
      }
    }
  }
}

// The rest from the superset against the rest listed: equal up to the superset's rounding to
// fp32, which the division by the rest's share (1 - f) magnifies.
TEST(EstimationRestTest, SupersetLessSelectionEqualsTheRest) {
  std::mt19937_64 rng(43);
  int compared = 0;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128}) {
      for (int parts : {1, 2}) {
        const int stride = 1 + static_cast<int>(rng() % 40);
        EstimationLists batch(dtype, dim, 4, parts, stride, 0, RestItems(10, 120, stride, rng),
                              rng());
        batch.AddLogits(rng());
        if (rng() % 2 == 0) batch.AddSpread(rng());
        const RestLists r = MakeRestLists(batch, stride, rng);
        const std::string what = absl::StrCat(DTypeName(dtype), " D ", dim, " parts ", parts);
        const EstimationParams base = batch.Params(nullptr, nullptr);
        Result whole(batch.rows(), dim), rest(batch.rows(), dim), direct(batch.rows(), dim),
            selected(batch.rows(), dim);
        EstimationParams p = AsRanges(base, r.begin.data(), r.end.data());
        p.out = whole.out.data();
        p.lse = whole.lse.data();
        ASSERT_TRUE(ReferenceEstimation(p).ok());
        p = base;
        p.out = selected.out.data();
        p.lse = selected.lse.data();
        ASSERT_TRUE(ReferenceEstimation(p).ok());
        p.superset_out = whole.out.data();
        p.superset_lse = whole.lse.data();
        p.out = rest.out.data();
        p.lse = rest.lse.data();
        ASSERT_TRUE(ReferenceEstimation(p).ok());
        p = AsOffsets(base, r.rest_ids.data(), r.rest_offsets.data());
        p.out = direct.out.data();
        p.lse = direct.lse.data();
        ASSERT_TRUE(ReferenceEstimation(p).ok());
        for (size_t row = 0; row < batch.rows(); ++row) {
          const int item = static_cast<int>(row / 4);
          // Nothing left, or nothing left that holds tokens.
          const bool empty_rest = direct.lse[row] == -kInf;
          if (item == 0) {  // nothing selected: the superset itself
            EXPECT_EQ(rest.lse[row], whole.lse[row]) << what;
            for (int d = 0; d < dim; ++d) {
              ASSERT_EQ(rest.out[row * dim + d], whole.out[row * dim + d]) << what;
            }
            continue;
          }
          if (empty_rest) {
            EXPECT_EQ(rest.lse[row], -kInf) << what << " row " << row;
            for (int d = 0; d < dim; ++d) ASSERT_EQ(rest.out[row * dim + d], 0.0f) << what;
            continue;
          }
          // The rest's share of the superset; below kRestFloor it counts as empty.
          const double share = 1.0 - std::exp(static_cast<double>(selected.lse[row]) -
                                              static_cast<double>(whole.lse[row]));
          if (share < 1e-3) continue;
          ++compared;
          const double tol = 1e-5 / share;
          EXPECT_NEAR(rest.lse[row], direct.lse[row], tol * (1 + std::abs(direct.lse[row])))
              << what << " row " << row;
          for (int d = 0; d < dim; ++d) {
            ASSERT_NEAR(rest.out[row * dim + d], direct.out[row * dim + d],
                        tol * (1 + std::abs(direct.out[row * dim + d])))
                << what << " row " << row << " d " << d;
          }
        }
      }
    }
  }
  EXPECT_GT(compared, 40);
}

TEST(EstimationRestTest, NanSupersetLseMakesTheRowNan) {
  std::mt19937_64 rng(47);
  EstimationLists batch(DType::kBF16, 64, 2, 2, 8, 0, RestItems(5, 40, 8, rng), rng());
  batch.AddLogits(rng());
  const RestLists r = MakeRestLists(batch, 8, rng);
  const EstimationParams base = batch.Params(nullptr, nullptr);
  Result whole(batch.rows(), 64), rest(batch.rows(), 64), clean(batch.rows(), 64);
  EstimationParams p = AsRanges(base, r.begin.data(), r.end.data());
  p.out = whole.out.data();
  p.lse = whole.lse.data();
  ASSERT_TRUE(ReferenceEstimation(p).ok());
  p = base;
  p.superset_out = whole.out.data();
  p.superset_lse = whole.lse.data();
  p.out = clean.out.data();
  p.lse = clean.lse.data();
  ASSERT_TRUE(ReferenceEstimation(p).ok());
  whole.lse[7] = kPoison;  // item 3, head 1
  p.out = rest.out.data();
  p.lse = rest.lse.data();
  ASSERT_TRUE(ReferenceEstimation(p).ok());
  for (size_t row = 0; row < batch.rows(); ++row) {
    if (row == 7) {
      EXPECT_TRUE(std::isnan(rest.lse[row]));
      for (int d = 0; d < 64; ++d) EXPECT_TRUE(std::isnan(rest.out[row * 64 + d])) << d;
    } else {
      EXPECT_EQ(rest.lse[row], clean.lse[row]) << row;
    }
  }
}

TEST(EstimationRestTest, RejectsBadRangeAndSupersetFields) {
  std::mt19937_64 rng(53);
  EstimationLists batch(DType::kBF16, 64, 2, 1, 8, 0, RestItems(4, 30, 8, rng), rng());
  RestLists r = MakeRestLists(batch, 8, rng);
  Result out(batch.rows(), 64), other(batch.rows(), 64);
  const EstimationParams base = batch.Params(out.out.data(), out.lse.data());
  struct Case {
    std::string expected;
    EstimationParams p;
  };
  std::vector<Case> cases;
  EstimationParams p = AsRanges(base, r.begin.data(), nullptr);
  cases.push_back({"range_end is null", p});
  std::vector<int32_t> bad_end = r.end;
  bad_end[3] = r.begin[3] - 1;
  cases.push_back({"range of item 3", AsRanges(base, r.begin.data(), bad_end.data())});
  std::vector<int32_t> bad_begin = r.begin;
  bad_begin[1] = -2;
  cases.push_back({"range of item 1", AsRanges(base, bad_begin.data(), r.end.data())});
  p = base;
  p.superset_out = other.out.data();
  cases.push_back({"superset_out and superset_lse", p});
  p.superset_lse = out.lse.data();
  cases.push_back({"alias", p});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    std::fill(out.out.begin(), out.out.end(), kPoison);
    const absl::Status status = ReferenceEstimation(c.p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(std::string(status.message()).find(c.expected), std::string::npos) << status;
    EXPECT_TRUE(std::isnan(out.out[0]));  // nothing written
  }
}

}  // namespace
}  // namespace kvtier
