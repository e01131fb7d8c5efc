// The split centroid (centroid_parts = 2) in the host twin of the page summaries
// (block_summary.h), against constructed pages whose split is known, against the single
// centroid (centroid_parts = 1) it refines, and against brute force in double. The split
// centroid in block selection and estimation: split_select_test.cc. Fresh random data from
// seeded generators; every output poisoned before each call (a NaN where the type has one), so
// an element left unwritten fails, and NaN never passes a comparison.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/block_summary.h"
#include "tests/testing/half_bits.h"

namespace kvtier {
namespace {

using testing_util::Bits;
using testing_util::Value;

constexpr uint16_t kPoisonHalf = 0x7FC1;  // a NaN in bf16 and in fp16
constexpr int32_t kPoisonInt = 0x7E7E7E7E;
const float kPoisonFloat = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// Half an ulp, relative: the error of one rounding to the dtype.
double Rounding(DType dtype) { return dtype == DType::kBF16 ? 0x1p-8 : 0x1p-11; }

bool HasMessage(const absl::Status& status, const std::string& text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

// ---- Page summaries ------------------------------------------------------------------------

// Pages of keys and values, [num_pages, P, D] each, rows past a page's tokens random too (a
// summary that read them would change).
struct Pages {
  Pages(DType dtype, int dim, int page_size, std::vector<int32_t> tokens, uint32_t seed)
      : dtype(dtype), dim(dim), page_size(page_size), tokens(std::move(tokens)), rng(seed) {
    const size_t n = this->tokens.size() * page_size * dim;
    k.resize(n);
    v.resize(n);
    for (auto& x : k) x = Bits(dtype, 0.2f + normal(rng));
    for (auto& x : v) x = Bits(dtype, normal(rng));
  }

  int num_pages() const { return static_cast<int>(tokens.size()); }
  uint16_t* Key(int j, int t) { return k.data() + (static_cast<size_t>(j) * page_size + t) * dim; }
  uint16_t* Val(int j, int t) { return v.data() + (static_cast<size_t>(j) * page_size + t) * dim; }
  float K(int j, int t, int d) { return Value(dtype, Key(j, t)[d]); }
  float V(int j, int t, int d) { return Value(dtype, Val(j, t)[d]); }

  // Page j's tokens `members` (the others untouched) become keys around `centre` with noise
  // of standard deviation `noise`.
  void Around(int j, const std::vector<int>& members, const std::vector<float>& centre,
              float noise) {
    for (int t : members) {
      for (int d = 0; d < dim; ++d) Key(j, t)[d] = Bits(dtype, centre[d] + noise * normal(rng));
    }
  }
  std::vector<float> RandomVector(float mean, float sd) {
    std::vector<float> x(dim);
    for (float& e : x) e = mean + sd * normal(rng);
    return x;
  }
  // Page j as two groups: `group_b` tokens (a random subset) around a centre at distance
  // ~3 sqrt(D) from the others' centre. Returns the tokens of group b.
  std::vector<bool> TwoGroups(int j, int group_b) {
    std::vector<int> order(tokens[j]);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<bool> in_b(tokens[j], false);
    for (int i = 0; i < group_b; ++i) in_b[order[i]] = true;
    const std::vector<float> a = RandomVector(0.0f, 1.0f);
    std::vector<float> b = RandomVector(0.0f, 1.5f);
    for (int d = 0; d < dim; ++d) b[d] += a[d];
    std::vector<int> members_a, members_b;
    for (int t = 0; t < tokens[j]; ++t) (in_b[t] ? members_b : members_a).push_back(t);
    Around(j, members_a, a, 0.05f);
    Around(j, members_b, b, 0.05f);
    return in_b;
  }
  // Page j as similar keys with one far outlier at a random token; returns the outlier.
  int Outlier(int j) {
    std::vector<int> all(tokens[j]);
    std::iota(all.begin(), all.end(), 0);
    const std::vector<float> centre = RandomVector(0.2f, 1.0f);
    Around(j, all, centre, 0.05f);
    const int outlier = std::uniform_int_distribution<int>(0, tokens[j] - 1)(rng);
    std::vector<float> far = RandomVector(0.0f, 2.0f);
    for (int d = 0; d < dim; ++d) far[d] += centre[d];
    Around(j, {outlier}, far, 0.0f);
    return outlier;
  }

  DType dtype;
  int dim, page_size;
  std::vector<int32_t> tokens;
  std::mt19937 rng;
  std::normal_distribution<float> normal;
  std::vector<uint16_t> k, v;
};

// One call's outputs. Each page's arrays are followed by a guard (one more part, D more bound
// elements) that stays poisoned unless the call writes past what it should.
struct Summaries {
  int parts = 1, dim = 0, num_pages = 0;
  DType dtype = DType::kBF16;
  std::vector<uint16_t> bounds, key_mean, value_mean;
  std::vector<float> key_spread;
  std::vector<int32_t> count;

  float KeySpread(int j, int part) const {
    return key_spread[static_cast<size_t>(j) * (parts + 1) + part];
  }

  uint16_t KeyMeanBits(int j, int part, int d) const {
    return key_mean[(static_cast<size_t>(j) * (parts + 1) + part) * dim + d];
  }
  uint16_t ValueMeanBits(int j, int part, int d) const {
    return value_mean[(static_cast<size_t>(j) * (parts + 1) + part) * dim + d];
  }
  double ValueMean(int j, int part, int d) const { return Value(dtype, ValueMeanBits(j, part, d)); }
  int32_t Count(int j, int part) const {
    return count[static_cast<size_t>(j) * (parts + 1) + part];
  }
  uint16_t BoundBits(int j, int row, int d) const {
    return bounds[(static_cast<size_t>(j) * 3 + row) * dim + d];
  }

  // The guards are still poisoned (checks only the arrays that were requested).
  void ExpectGuardsIntact() const {
    for (int j = 0; j < num_pages; ++j) {
      for (int d = 0; d < dim; ++d) {
        if (!bounds.empty()) {
          ASSERT_EQ(BoundBits(j, 2, d), kPoisonHalf) << "page " << j;
        }
        if (!key_mean.empty()) {
          ASSERT_EQ(KeyMeanBits(j, parts, d), kPoisonHalf) << "page " << j;
        }
        if (!value_mean.empty()) {
          ASSERT_EQ(ValueMeanBits(j, parts, d), kPoisonHalf) << "page " << j;
        }
      }
      if (!count.empty()) {
        ASSERT_EQ(Count(j, parts), kPoisonInt) << "page " << j;
      }
      if (!key_spread.empty()) {
        ASSERT_TRUE(std::isnan(KeySpread(j, parts))) << "page " << j;
      }
    }
  }
};

struct Requested {
  bool bounds = true;
  bool key_mean = true;
  bool value_mean = true;
  bool count = true;
  bool key_spread = true;
};

// Runs the twin on `pages` with `parts` centroids a page into poisoned outputs.
absl::Status Summarise(Pages& pages, int parts, Requested want, Summaries* out) {
  const int n = pages.num_pages(), dim = pages.dim;
  out->parts = parts;
  out->dim = dim;
  out->num_pages = n;
  out->dtype = pages.dtype;
  const size_t slots = static_cast<size_t>(n) * (parts + 1);
  out->bounds.assign(want.bounds ? static_cast<size_t>(n) * 3 * dim : 0, kPoisonHalf);
  out->key_mean.assign(want.key_mean ? slots * dim : 0, kPoisonHalf);
  out->value_mean.assign(want.value_mean ? slots * dim : 0, kPoisonHalf);
  out->count.assign(want.count ? slots : 0, kPoisonInt);
  out->key_spread.assign(want.key_spread ? slots : 0, kPoisonFloat);
  std::vector<const void*> kp, vp;
  std::vector<void*> bp, mp, sp;
  std::vector<float*> xp;
  std::vector<int32_t*> cp;
  for (int j = 0; j < n; ++j) {
    kp.push_back(pages.Key(j, 0));
    vp.push_back(pages.Val(j, 0));
    bp.push_back(out->bounds.data() + static_cast<size_t>(j) * 3 * dim);
    mp.push_back(out->key_mean.data() + static_cast<size_t>(j) * (parts + 1) * dim);
    sp.push_back(out->value_mean.data() + static_cast<size_t>(j) * (parts + 1) * dim);
    cp.push_back(out->count.data() + static_cast<size_t>(j) * (parts + 1));
    xp.push_back(out->key_spread.data() + static_cast<size_t>(j) * (parts + 1));
  }
  PageSummaryParams p;
  p.dtype = pages.dtype;
  p.head_dim = dim;
  p.page_size = pages.page_size;
  p.num_pages = n;
  p.centroid_parts = parts;
  p.k_pages = kp.data();
  p.v_pages = vp.data();
  p.tokens = pages.tokens.data();
  p.bounds = want.bounds ? bp.data() : nullptr;
  p.key_mean = want.key_mean ? mp.data() : nullptr;
  p.value_mean = want.value_mean ? sp.data() : nullptr;
  p.count = want.count ? cp.data() : nullptr;
  p.key_spread = want.key_spread ? xp.data() : nullptr;
  return ReferencePageSummaries(p);
}

// Part `part` of page j is exactly the tokens with in_group[t]: its count, its mean key (to
// the fp32 sum's and the dtype's rounding), its mean value (the same) and its
// key spread (the mean over channels of the keys' variance around the part's mean, to fp32
// rounding).
void ExpectPartIsGroup(Pages& pages, const Summaries& s, int j, int part,
                       const std::vector<bool>& in_group) {
  const int members = static_cast<int>(std::count(in_group.begin(), in_group.end(), true));
  ASSERT_EQ(s.Count(j, part), members) << "page " << j << " part " << part;
  double variance_sum = 0, square_abs = 0;
  for (int d = 0; d < pages.dim; ++d) {
    double key_sum = 0, key_abs = 0, value_sum = 0, value_abs = 0;
    for (int t = 0; t < pages.tokens[j]; ++t) {
      if (!in_group[t]) continue;
      key_sum += pages.K(j, t, d);
      key_abs += std::abs(pages.K(j, t, d));
      value_sum += pages.V(j, t, d);
      value_abs += std::abs(pages.V(j, t, d));
    }
    const double mean = key_sum / members;
    const double sum_error = 1e-6 * key_abs / members;  // fp32 sum of <= 64 terms, relative 2^-24
    ASSERT_NEAR(Value(pages.dtype, s.KeyMeanBits(j, part, d)), mean,
                std::abs(mean) * Rounding(pages.dtype) + 2 * sum_error + 1e-7)
        << "page " << j << " part " << part << " channel " << d;
    const double value_mean = value_sum / members;
    ASSERT_NEAR(s.ValueMean(j, part, d), value_mean,
                std::abs(value_mean) * Rounding(pages.dtype) + 2e-6 * value_abs / members + 1e-7)
        << "page " << j << " part " << part << " channel " << d;
    for (int t = 0; t < pages.tokens[j]; ++t) {
      if (!in_group[t]) continue;
      const double deviation = pages.K(j, t, d) - mean;
      variance_sum += deviation * deviation / members;
      square_abs += pages.K(j, t, d) * pages.K(j, t, d) / members;
    }
  }
  const double spread = variance_sum / pages.dim;
  // fp32 deviations from a mean within 1e-6 relative of the keys: errors of ~1e-6 |k|^2.
  ASSERT_NEAR(s.KeySpread(j, part), spread, 1e-5 * square_abs / pages.dim + 1e-7)
      << "page " << j << " part " << part;
}

TEST(SplitSummaryTest, TwoGroupsSplitIntoTheirGroups) {
  struct Case {
    int page, group_a, group_b;
  };
  const Case cases[] = {{16, 9, 7}, {16, 12, 4}, {32, 5, 27}, {64, 40, 24}, {64, 33, 30}};
  uint32_t seed = 1;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (const Case& c : cases) {
        SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim << " page " << c.page
                                        << " groups " << c.group_a << " + " << c.group_b);
        // Three pages of two groups each, the groups' tokens placed at random.
        const int n = c.group_a + c.group_b;
        Pages pages(dtype, dim, c.page, {n, n, n}, seed++);
        std::vector<std::vector<bool>> in_b;
        for (int j = 0; j < 3; ++j) in_b.push_back(pages.TwoGroups(j, c.group_b));
        Summaries s;
        ASSERT_TRUE(Summarise(pages, 2, {}, &s).ok());
        for (int j = 0; j < 3; ++j) {
          ASSERT_EQ(s.Count(j, 0) + s.Count(j, 1), c.group_a + c.group_b);
          // Either part may hold either group; the counts tell which.
          ASSERT_TRUE(s.Count(j, 0) == c.group_a || s.Count(j, 0) == c.group_b)
              << "page " << j << " counts " << s.Count(j, 0) << ", " << s.Count(j, 1);
          const int part_b = s.Count(j, 0) == c.group_b ? 0 : 1;
          std::vector<bool> in_a(in_b[j].size());
          for (size_t t = 0; t < in_a.size(); ++t) in_a[t] = !in_b[j][t];
          ASSERT_NO_FATAL_FAILURE(ExpectPartIsGroup(pages, s, j, part_b, in_b[j]));
          ASSERT_NO_FATAL_FAILURE(ExpectPartIsGroup(pages, s, j, 1 - part_b, in_a));
        }
        ASSERT_NO_FATAL_FAILURE(s.ExpectGuardsIntact());
      }
    }
  }
}

TEST(SplitSummaryTest, OutlierIsIsolatedInPartZero) {
  uint32_t seed = 100;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int page : {16, 64}) {
        SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim << " page " << page);
        // Full pages: one outlier among 15 (or 63) similar keys; and a partly filled one.
        Pages pages(dtype, dim, page, {page, page, page / 2 + 1}, seed++);
        std::vector<int> outlier;
        for (int j = 0; j < 3; ++j) outlier.push_back(pages.Outlier(j));
        Summaries s;
        ASSERT_TRUE(Summarise(pages, 2, {}, &s).ok());
        for (int j = 0; j < 3; ++j) {
          // Part 0 holds the seed, the token farthest from the mean: the outlier, alone. A
          // mean of one token is that token, exactly.
          ASSERT_EQ(s.Count(j, 0), 1) << "page " << j;
          ASSERT_EQ(s.Count(j, 1), pages.tokens[j] - 1) << "page " << j;
          for (int d = 0; d < dim; ++d) {
            ASSERT_EQ(s.KeyMeanBits(j, 0, d), pages.Key(j, outlier[j])[d]) << j << " " << d;
            ASSERT_EQ(s.ValueMeanBits(j, 0, d), pages.Val(j, outlier[j])[d]) << j << " " << d;
          }
          std::vector<bool> rest(pages.tokens[j], true);
          rest[outlier[j]] = false;
          ASSERT_NO_FATAL_FAILURE(ExpectPartIsGroup(pages, s, j, 1, rest));
        }
        ASSERT_NO_FATAL_FAILURE(s.ExpectGuardsIntact());
      }
    }
  }
}

// On random pages of every fill (random keys, two groups, outliers): the parts partition the
// page's tokens; their token-weighted mean key and mean value are the single centroid's, to
// rounding; the bounds are the parts = 1 bounds, bit for bit; an
// empty second part is all zeros.
TEST(SplitSummaryTest, PartsAddUpToTheSingleCentroid) {
  uint32_t seed = 200;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int page : {16, 32, 64}) {
        SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim << " page " << page);
        std::vector<int32_t> tokens;
        for (int t = 0; t <= page; ++t) tokens.push_back(t);
        Pages pages(dtype, dim, page, tokens, seed++);
        for (int j = 0; j < pages.num_pages(); ++j) {
          if (j >= 4 && j % 3 == 1) pages.TwoGroups(j, j / 3);
          if (j >= 4 && j % 3 == 2) pages.Outlier(j);
        }
        Summaries one, two;
        ASSERT_TRUE(Summarise(pages, 1, {}, &one).ok());
        ASSERT_TRUE(Summarise(pages, 2, {}, &two).ok());
        int split_pages = 0;
        for (int j = 0; j < pages.num_pages(); ++j) {
          const int n = pages.tokens[j];
          ASSERT_EQ(one.Count(j, 0), n);
          const int n0 = two.Count(j, 0), n1 = two.Count(j, 1);
          ASSERT_EQ(n0 + n1, n) << "page " << j;
          ASSERT_GE(n0, 0);
          ASSERT_GE(n1, 0);
          if (n > 0) {
            ASSERT_GE(n0, 1) << "page " << j << ": part 0 holds the seed";
          }
          split_pages += n1 > 0 ? 1 : 0;
          for (int d = 0; d < dim; ++d) {
            ASSERT_EQ(two.BoundBits(j, 0, d), one.BoundBits(j, 0, d)) << j << " " << d;
            ASSERT_EQ(two.BoundBits(j, 1, d), one.BoundBits(j, 1, d)) << j << " " << d;
            const double m = Value(dtype, one.KeyMeanBits(j, 0, d));
            const double m0 = Value(dtype, two.KeyMeanBits(j, 0, d));
            const double m1 = Value(dtype, two.KeyMeanBits(j, 1, d));
            double key_abs = 0, value_abs = 0;
            for (int t = 0; t < n; ++t) {
              key_abs += std::abs(pages.K(j, t, d));
              value_abs += std::abs(pages.V(j, t, d));
            }
            if (n == 0) {
              ASSERT_EQ(two.KeyMeanBits(j, 0, d), 0) << "empty page: key_mean +0";
              ASSERT_EQ(two.ValueMeanBits(j, 0, d), 0) << "empty page: value_mean +0";
            } else {
              // Each of the three means is rounded once to the dtype, after fp32 sums.
              const double weighted = (n0 * m0 + n1 * m1) / n;
              const double tol = ((n0 * std::abs(m0) + n1 * std::abs(m1)) / n + std::abs(m)) *
                                     Rounding(dtype) * 1.01 +
                                 1e-6 * key_abs / n + 1e-7;
              ASSERT_NEAR(weighted, m, tol) << "page " << j << " channel " << d;
              const double v = one.ValueMean(j, 0, d);
              const double v0 = two.ValueMean(j, 0, d), v1 = two.ValueMean(j, 1, d);
              const double value_tol = ((n0 * std::abs(v0) + n1 * std::abs(v1)) / n + std::abs(v)) *
                                           Rounding(dtype) * 1.01 +
                                       2e-6 * value_abs / n + 1e-7;
              ASSERT_NEAR((n0 * v0 + n1 * v1) / n, v, value_tol)
                  << "page " << j << " channel " << d;
            }
            if (n1 == 0) {
              ASSERT_EQ(two.KeyMeanBits(j, 1, d), 0) << "empty part 1: key_mean +0, page " << j;
              ASSERT_EQ(two.ValueMeanBits(j, 1, d), 0) << "empty part 1: value_mean +0, page " << j;
            }
          }
        }
        // The constructed pages do split (a test of the split, not of one centroid twice).
        EXPECT_GE(split_pages, page / 2) << "pages with a non-empty second part";
        ASSERT_NO_FATAL_FAILURE(one.ExpectGuardsIntact());
        ASSERT_NO_FATAL_FAILURE(two.ExpectGuardsIntact());
      }
    }
  }
}

// Pages of 0 and 1 token and of identical keys: everything in part 0, part 1 empty and zero.
TEST(SplitSummaryTest, ShortAndUniformPagesLeavePartOneEmpty) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim);
      Pages pages(dtype, dim, 16, {0, 1, 10, 16}, 300 + dim);
      for (int j : {2, 3}) {  // identical keys
        for (int t = 1; t < pages.tokens[j]; ++t) {
          std::copy(pages.Key(j, 0), pages.Key(j, 0) + dim, pages.Key(j, t));
        }
      }
      Summaries one, two;
      ASSERT_TRUE(Summarise(pages, 1, {}, &one).ok());
      ASSERT_TRUE(Summarise(pages, 2, {}, &two).ok());
      for (int j = 0; j < pages.num_pages(); ++j) {
        const int n = pages.tokens[j];
        ASSERT_EQ(two.Count(j, 0), n) << "page " << j;
        ASSERT_EQ(two.Count(j, 1), 0) << "page " << j;
        for (int d = 0; d < dim; ++d) {
          // Part 0 is the whole page: the single centroid, bit for bit (the same sums).
          ASSERT_EQ(two.KeyMeanBits(j, 0, d), one.KeyMeanBits(j, 0, d)) << j << " " << d;
          ASSERT_EQ(two.ValueMeanBits(j, 0, d), one.ValueMeanBits(j, 0, d)) << j << " " << d;
          ASSERT_EQ(two.KeyMeanBits(j, 1, d), 0) << j << " " << d;
          ASSERT_EQ(two.ValueMeanBits(j, 1, d), 0) << j << " " << d;
          ASSERT_EQ(two.BoundBits(j, 0, d), one.BoundBits(j, 0, d));
          ASSERT_EQ(two.BoundBits(j, 1, d), one.BoundBits(j, 1, d));
          if (n == 0) {
            ASSERT_EQ(two.KeyMeanBits(j, 0, d), 0);
            ASSERT_EQ(two.ValueMeanBits(j, 0, d), 0);
            ASSERT_EQ(Value(dtype, two.BoundBits(j, 0, d)), -kInf);
            ASSERT_EQ(Value(dtype, two.BoundBits(j, 1, d)), kInf);
          } else {
            // A mean of equal keys is that key, exactly (the fp32 sum of <= 64 equal
            // half-precision values is exact).
            ASSERT_EQ(two.KeyMeanBits(j, 0, d), pages.Key(j, 0)[d]) << j << " " << d;
          }
        }
        if (n == 1) {
          // The mean value of one token is its value, exactly.
          for (int d = 0; d < dim; ++d) ASSERT_EQ(two.ValueMeanBits(j, 0, d), pages.Val(j, 0)[d]);
        }
      }
      ASSERT_NO_FATAL_FAILURE(two.ExpectGuardsIntact());
    }
  }
}

// Only key_mean (no bounds, mean values or counts): the same key means as the full call.
TEST(SplitSummaryTest, KeyMeanAloneEqualsTheFullCall) {
  Pages pages(DType::kBF16, 128, 32, {32, 17, 2, 0, 1, 32}, 400);
  pages.TwoGroups(0, 11);
  pages.Outlier(5);
  Summaries full, alone;
  ASSERT_TRUE(Summarise(pages, 2, {}, &full).ok());
  ASSERT_TRUE(Summarise(pages, 2, {false, true, false, false}, &alone).ok());
  EXPECT_EQ(alone.key_mean, full.key_mean);
  EXPECT_GT(full.Count(0, 1), 0);
}

// ---- Bad parameters --------------------------------------------------------------------------

TEST(SplitCentroidParamsTest, PageSummariesRejectBadParts) {
  Pages pages(DType::kBF16, 64, 16, {16, 3}, 1000);
  for (int parts : {0, 3, -1}) {
    Summaries s;
    const absl::Status status = Summarise(pages, parts, {}, &s);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << parts;
    EXPECT_TRUE(HasMessage(status, "centroid_parts")) << status;
    for (uint16_t x : s.key_mean) ASSERT_EQ(x, kPoisonHalf) << "written despite the error";
    for (int32_t x : s.count) ASSERT_EQ(x, kPoisonInt) << "written despite the error";
  }
  // The split takes pages of at most kMaxSplitPageSize tokens; one centroid takes any.
  Pages large(DType::kFP16, 64, kMaxSplitPageSize + 1, {kMaxSplitPageSize + 1, 2}, 1001);
  Summaries s;
  absl::Status status = Summarise(large, 2, {}, &s);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(HasMessage(status, "page_size")) << status;
  for (uint16_t x : s.key_mean) ASSERT_EQ(x, kPoisonHalf) << "written despite the error";
  EXPECT_TRUE(Summarise(large, 1, {}, &s).ok());
  Pages largest(DType::kFP16, 64, kMaxSplitPageSize, {kMaxSplitPageSize}, 1002);
  EXPECT_TRUE(Summarise(largest, 2, {}, &s).ok());
  // The split writes a centroid: key_mean is required (bounds alone are not enough).
  status = Summarise(pages, 2, {true, false, false, false}, &s);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(HasMessage(status, "key_mean")) << status;
}

}  // namespace
}  // namespace kvtier
