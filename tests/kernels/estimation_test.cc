// Host twin of estimation (estimation.h) against exact attention: clusters of one token are
// attention over those tokens, and a cluster of n tokens with equal keys is attention over
// them; estimates of disjoint cluster sets merge into the estimate of their union.
#include "kernels/estimation.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/decode_attention.h"
#include "kernels/reference_attention.h"
#include "kernels/base/dtype.h"

namespace kvtier {
namespace {

constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

uint16_t Bits(DType dtype, float x) {
  return dtype == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
}
float Value(DType dtype, uint16_t b) {
  return dtype == DType::kBF16 ? BF16ToFloat(b) : FP16ToFloat(b);
}

// Random tokens of one item, stored as pages for attention and as one-token clusters (or
// `repeat`-token clusters of equal keys) for estimation.
struct Tokens {
  Tokens(DType dtype, int dim, int group, int num_tokens, int page, uint32_t seed)
      : dtype(dtype), dim(dim), group(group), num_tokens(num_tokens), page(page) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.2f, 1.0f);
    auto draw = [&] {
      for (;;) {
        const uint16_t b = Bits(dtype, normal(rng));
        if (std::abs(Value(dtype, b)) >= 1e-2f) return b;
      }
    };
    q.resize(group * dim);
    for (auto& x : q) x = draw();
    const int pages = (num_tokens + page - 1) / page;
    k.resize(static_cast<size_t>(pages) * page * dim, 0);
    v.resize(k.size(), 0);
    for (int t = 0; t < num_tokens * dim; ++t) {
      k[t] = draw();
      v[t] = draw();
    }
  }

  // Exact attention over all tokens, repeated `repeat` times each.
  void Attend(int repeat, std::vector<float>& out, std::vector<float>& lse) {
    std::vector<uint16_t> kk, vv;
    for (int t = 0; t < num_tokens; ++t) {
      for (int r = 0; r < repeat; ++r) {
        kk.insert(kk.end(), k.begin() + t * dim, k.begin() + (t + 1) * dim);
        vv.insert(vv.end(), v.begin() + t * dim, v.begin() + (t + 1) * dim);
      }
    }
    const int total = num_tokens * repeat;
    const int pages = (total + page - 1) / page;
    kk.resize(static_cast<size_t>(pages) * page * dim, 0);
    vv.resize(kk.size(), 0);
    std::vector<const void*> kp, vp;
    for (int j = 0; j < pages; ++j) {
      kp.push_back(kk.data() + static_cast<size_t>(j) * page * dim);
      vp.push_back(vv.data() + static_cast<size_t>(j) * page * dim);
    }
    const std::vector<int32_t> offsets = {0, pages};
    const std::vector<int32_t> last = {total - (pages - 1) * page};
    out.assign(group * dim, kPoison);
    lse.assign(group, kPoison);
    PagedDecodeParams p;
    p.dtype = dtype;
    p.head_dim = dim;
    p.page_size = page;
    p.group_size = group;
    p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
    p.num_items = 1;
    p.q = q.data();
    p.k_pages = kp.data();
    p.v_pages = vp.data();
    p.page_offsets = offsets.data();
    p.last_page_tokens = last.data();
    p.out = out.data();
    p.lse = lse.data();
    ASSERT_TRUE(ReferencePagedDecodeAttention(p).ok());
  }

  // Estimation with every token a cluster of `repeat` tokens with its key, value sum
  // repeat * value, over the clusters `ids`.
  void Estimate(int repeat, const std::vector<int32_t>& ids, std::vector<float>& out,
                std::vector<float>& lse) {
    value_sum.resize(static_cast<size_t>(num_tokens) * dim);
    for (int t = 0; t < num_tokens * dim; ++t) value_sum[t] = repeat * Value(dtype, v[t]);
    count.assign(num_tokens, repeat);
    key_ptr = k.data();
    sum_ptr = value_sum.data();
    count_ptr = count.data();
    offsets = {0, static_cast<int32_t>(ids.size())};
    out.assign(group * dim, kPoison);
    lse.assign(group, kPoison);
    EstimationParams p = Params(ids, out, lse);
    ASSERT_TRUE(ReferenceEstimation(p).ok());
  }

  EstimationParams Params(const std::vector<int32_t>& ids, std::vector<float>& out,
                          std::vector<float>& lse) {
    EstimationParams p;
    p.dtype = dtype;
    p.head_dim = dim;
    p.group_size = group;
    p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
    p.num_items = 1;
    p.q = q.data();
    p.cluster_offsets = offsets.data();
    p.cluster_ids = ids.data();
    p.key_mean = &key_ptr;
    p.value_sum = &sum_ptr;
    p.count = &count_ptr;
    p.out = out.data();
    p.lse = lse.data();
    return p;
  }

  DType dtype;
  int dim, group, num_tokens, page;
  std::vector<uint16_t> q, k, v;
  std::vector<float> value_sum;
  std::vector<int32_t> count, offsets;
  const void* key_ptr = nullptr;
  const float* sum_ptr = nullptr;
  const int32_t* count_ptr = nullptr;
};

void ExpectClose(const std::vector<float>& actual, const std::vector<float>& expected, double tol,
                 const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    ASSERT_NEAR(actual[i], expected[i], tol * (1.0 + std::abs(expected[i]))) << what << " " << i;
  }
}

TEST(EstimationReferenceTest, OneTokenClustersEqualExactAttention) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int n : {1, 37, 1000}) {
        Tokens tokens(dtype, dim, 4, n, 16, n + dim);
        std::vector<float> out, lse, ref_out, ref_lse;
        tokens.Attend(1, ref_out, ref_lse);
        std::vector<int32_t> ids(n);
        for (int t = 0; t < n; ++t) ids[t] = t;
        tokens.Estimate(1, ids, out, lse);
        // Both in double, rounded to float once: a few float ulps apart at most.
        ExpectClose(out, ref_out, 1e-6, "out");
        ExpectClose(lse, ref_lse, 1e-6, "lse");
      }
    }
  }
}

TEST(EstimationReferenceTest, ClusterOfEqualKeysEqualsItsTokens) {
  Tokens tokens(DType::kBF16, 128, 3, 50, 16, 5);
  std::vector<float> out, lse, ref_out, ref_lse;
  tokens.Attend(6, ref_out, ref_lse);
  std::vector<int32_t> ids(50);
  for (int t = 0; t < 50; ++t) ids[t] = 49 - t;  // order does not matter
  tokens.Estimate(6, ids, out, lse);
  ExpectClose(out, ref_out, 1e-6, "out");
  ExpectClose(lse, ref_lse, 1e-6, "lse");
}

TEST(EstimationReferenceTest, DisjointEstimatesMerge) {
  Tokens tokens(DType::kFP16, 64, 2, 300, 16, 9);
  std::vector<int32_t> all(300), first, second;
  for (int t = 0; t < 300; ++t) {
    all[t] = t;
    (t % 3 == 0 ? first : second).push_back(t);
  }
  std::vector<float> out, lse, out_a, lse_a, out_b, lse_b;
  tokens.Estimate(2, all, out, lse);
  tokens.Estimate(2, first, out_a, lse_a);
  tokens.Estimate(2, second, out_b, lse_b);
  std::vector<float> merged(out.size(), kPoison), merged_lse(lse.size(), kPoison);
  const float* part_out[] = {out_a.data(), out_b.data()};
  const float* part_lse[] = {lse_a.data(), lse_b.data()};
  MergeParams m;
  m.num_parts = 2;
  m.num_rows = 2;
  m.head_dim = 64;
  m.part_out = part_out;
  m.part_lse = part_lse;
  m.out = merged.data();
  m.lse = merged_lse.data();
  ASSERT_TRUE(ReferenceMergePartials(m).ok());
  ExpectClose(merged, out, 1e-5, "out");
  ExpectClose(merged_lse, lse, 1e-6, "lse");
}

TEST(EstimationReferenceTest, EmptyAndZeroCountClustersContributeNothing) {
  Tokens tokens(DType::kBF16, 64, 2, 10, 16, 3);
  std::vector<float> out, lse, ref_out, ref_lse;
  tokens.Estimate(1, {0, 1, 2}, ref_out, ref_lse);
  // Adding clusters with count 0 changes nothing.
  tokens.count[5] = 0;
  tokens.count[6] = -3;
  std::vector<int32_t> ids = {0, 5, 1, 6, 2};
  tokens.offsets = {0, 5};
  out.assign(128, kPoison);
  lse.assign(2, kPoison);
  ASSERT_TRUE(ReferenceEstimation(tokens.Params(ids, out, lse)).ok());
  EXPECT_EQ(out, ref_out);
  EXPECT_EQ(lse, ref_lse);
  // No clusters: out 0, lse -inf.
  ids.clear();
  tokens.offsets = {0, 0};
  ASSERT_TRUE(ReferenceEstimation(tokens.Params(ids, out, lse)).ok());
  for (float x : out) EXPECT_EQ(x, 0.0f);
  for (float x : lse) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
}

TEST(EstimationReferenceTest, RejectsBadParameters) {
  Tokens tokens(DType::kBF16, 64, 2, 10, 16, 3);
  std::vector<float> out, lse;
  tokens.Estimate(1, {0, 1}, out, lse);
  std::vector<int32_t> ids = {0, -1};
  out.assign(128, kPoison);
  EstimationParams p = tokens.Params(ids, out, lse);
  absl::Status status = ReferenceEstimation(p);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(status.message()).find("cluster_ids[1]"), std::string::npos) << status;
  EXPECT_TRUE(std::isnan(out[0]));  // nothing written
  ids = {0, 1};
  p = tokens.Params(ids, out, lse);
  p.head_dim = 32;
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("head_dim"), std::string::npos);
  p = tokens.Params(ids, out, lse);
  p.softmax_scale = std::numeric_limits<float>::infinity();
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("softmax_scale"), std::string::npos);
  p = tokens.Params(ids, out, lse);
  p.value_sum = nullptr;
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("value_sum"), std::string::npos);
  tokens.offsets = {0, -1};
  p = tokens.Params(ids, out, lse);
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("cluster_offsets[1]"),
            std::string::npos);
}

}  // namespace
}  // namespace kvtier
