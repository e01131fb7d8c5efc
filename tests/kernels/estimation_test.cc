// Host twin of estimation (estimation.h) against exact attention: clusters of one token are
// attention over those tokens, and a cluster of n tokens with equal keys is attention over
// them; estimates of disjoint cluster sets merge into the estimate of their union. The
// fixed-stride list and exclusion modes against a plain computation of the header's sums
// (testing/estimation_lists.h), and their bad inputs.
#include "kernels/estimation.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/decode_attention.h"
#include "kernels/reference_attention.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/half_bits.h"

namespace kvtier {
namespace {

constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

using testing_util::Bits;
using testing_util::Value;

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

  // Estimation with every token a cluster of `repeat` tokens with its key and value (the
  // cluster's mean value), over the clusters `ids`.
  void Estimate(int repeat, const std::vector<int32_t>& ids, std::vector<float>& out,
                std::vector<float>& lse) {
    count.assign(num_tokens, repeat);
    key_ptr = k.data();
    mean_ptr = v.data();
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
    p.value_mean = &mean_ptr;
    p.count = &count_ptr;
    p.out = out.data();
    p.lse = lse.data();
    return p;
  }

  DType dtype;
  int dim, group, num_tokens, page;
  std::vector<uint16_t> q, k, v;
  std::vector<int32_t> count, offsets;
  const void* key_ptr = nullptr;
  const void* mean_ptr = nullptr;
  const int32_t* count_ptr = nullptr;
};

void ExpectClose(const std::vector<float>& actual, const std::vector<float>& expected, double tol,
                 const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::isinf(expected[i])) {  // an lse of a row without contributions: exactly -inf
      ASSERT_EQ(actual[i], expected[i]) << what << " " << i;
      continue;
    }
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
  p.value_mean = nullptr;
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("value_mean"), std::string::npos);
  tokens.offsets = {0, -1};
  p = tokens.Params(ids, out, lse);
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("cluster_offsets[1]"),
            std::string::npos);
}

// ---- Fixed-stride lists and exclusion ---------------------------------------------------

using testing_util::EstimationItemSpec;
using testing_util::EstimationLists;

// Runs the twin on `batch` (outputs poisoned) and compares it with the plain computation.
void ExpectTwinEqualsPlain(const EstimationLists& batch, const std::string& what) {
  std::vector<float> want, want_lse;
  batch.Plain(&want, &want_lse);
  std::vector<float> out(batch.rows() * batch.dim(), kPoison), lse(batch.rows(), kPoison);
  const absl::Status status = ReferenceEstimation(batch.Params(out.data(), lse.data()));
  ASSERT_TRUE(status.ok()) << what << ": " << status;
  ExpectClose(lse, want_lse, 1e-6, what + " lse");
  ExpectClose(out, want, 1e-6, what + " out");
}

// Random list lengths (0, 1, a few, the whole stride), ids with repeats, unused slots -1.
std::vector<EstimationItemSpec> RandomItems(int items, int stride, int exclude_stride,
                                            std::mt19937_64& rng) {
  std::vector<EstimationItemSpec> out;
  for (int i = 0; i < items; ++i) {
    EstimationItemSpec s;
    s.clusters = 1 + static_cast<int>(rng() % 60);
    const uint64_t kind = rng() % 5;
    s.count = kind == 0 ? 0 : kind == 1 ? 1 : kind == 2 ? stride : static_cast<int>(rng() % stride);
    s.excluded = exclude_stride > 0 ? static_cast<int>(rng() % (exclude_stride + 1)) : 0;
    out.push_back(s);
  }
  return out;
}

TEST(EstimationListsTest, FixedStrideListsEqualPlainSums) {
  std::mt19937_64 rng(21);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 3, 8}) {
        for (int parts : {1, 2}) {
          const std::string what = std::string(DTypeName(dtype)) + " D " + std::to_string(dim) +
                                   " G " + std::to_string(group) + " parts " +
                                   std::to_string(parts);
          const int stride = 1 + static_cast<int>(rng() % 40);
          const EstimationLists batch(dtype, dim, group, parts, stride, 0,
                                      RandomItems(7, stride, 0, rng), rng());
          ASSERT_NO_FATAL_FAILURE(ExpectTwinEqualsPlain(batch, what));
        }
      }
    }
  }
}

TEST(EstimationListsTest, ExclusionEqualsPlainSumsWithoutTheExcluded) {
  std::mt19937_64 rng(22);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4}) {
        for (int parts : {1, 2}) {
          const std::string what = std::string(DTypeName(dtype)) + " D " + std::to_string(dim) +
                                   " G " + std::to_string(group) + " parts " +
                                   std::to_string(parts);
          const int stride = 1 + static_cast<int>(rng() % 40);
          const int exclude_stride = 1 + static_cast<int>(rng() % 20);
          const EstimationLists batch(dtype, dim, group, parts, stride, exclude_stride,
                                      RandomItems(9, stride, exclude_stride, rng), rng());
          ASSERT_NO_FATAL_FAILURE(ExpectTwinEqualsPlain(batch, what));
        }
      }
    }
  }
}

// Precomputed logits (the zone's scoring pass's): the twin takes them for scale q.c and does
// not read the mean keys (left null), with the spread term on top; random logits unrelated to
// q, so a twin that computed q.c would differ. A logit_stride too narrow for a listed id is
// refused, naming the field.
TEST(EstimationListsTest, PrecomputedLogitsEqualPlainSums) {
  std::mt19937_64 rng(24);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128}) {
      for (int parts : {1, 2}) {
        const std::string what = std::string(DTypeName(dtype)) + " D " + std::to_string(dim) +
                                 " parts " + std::to_string(parts) + " logits";
        const int stride = 1 + static_cast<int>(rng() % 40);
        const int exclude_stride = 1 + static_cast<int>(rng() % 20);
        EstimationLists batch(dtype, dim, 3, parts, stride, exclude_stride,
                              RandomItems(9, stride, exclude_stride, rng), rng());
        std::vector<float> key_out(batch.rows() * dim), key_lse(batch.rows());
        ASSERT_TRUE(ReferenceEstimation(batch.Params(key_out.data(), key_lse.data())).ok());
        batch.AddLogits(rng());
        ASSERT_EQ(batch.Params(nullptr, nullptr).key_mean, nullptr);
        ASSERT_NO_FATAL_FAILURE(ExpectTwinEqualsPlain(batch, what));
        std::vector<float> out(batch.rows() * dim), lse(batch.rows());
        ASSERT_TRUE(ReferenceEstimation(batch.Params(out.data(), lse.data())).ok());
        bool differs = false;
        for (size_t r = 0; r < batch.rows(); ++r) {
          if (std::isfinite(lse[r]) && std::abs(lse[r] - key_lse[r]) > 1e-2f) differs = true;
        }
        EXPECT_TRUE(differs) << what << ": the logits were not used";
        batch.AddSpread(rng());
        ASSERT_NO_FATAL_FAILURE(ExpectTwinEqualsPlain(batch, what + " spread"));

        EstimationParams narrow = batch.Params(out.data(), lse.data());
        narrow.logit_stride = parts;  // only cluster 0 fits
        const absl::Status status = ReferenceEstimation(narrow);
        EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << what << ": " << status;
        EXPECT_NE(std::string(status.message()).find("logit_stride"), std::string::npos) << status;
      }
    }
  }
}

// The spread correction: the twin adds kSpreadWeight scale^2 / 2 |q|^2 spread to each
// centroid's logit, as the plain computation does; and a spread moves the result (the
// correction is applied, not ignored).
TEST(EstimationListsTest, SpreadCorrectionEqualsPlainSums) {
  std::mt19937_64 rng(23);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int parts : {1, 2}) {
        const std::string what = std::string(DTypeName(dtype)) + " D " + std::to_string(dim) +
                                 " parts " + std::to_string(parts) + " spread";
        const int stride = 1 + static_cast<int>(rng() % 40);
        const int exclude_stride = 1 + static_cast<int>(rng() % 20);
        EstimationLists batch(dtype, dim, 4, parts, stride, exclude_stride,
                              RandomItems(9, stride, exclude_stride, rng), rng());
        std::vector<float> plain_out(batch.rows() * dim), plain_lse(batch.rows());
        ASSERT_TRUE(ReferenceEstimation(batch.Params(plain_out.data(), plain_lse.data())).ok());
        batch.AddSpread(rng());
        ASSERT_NO_FATAL_FAILURE(ExpectTwinEqualsPlain(batch, what));
        std::vector<float> out(batch.rows() * dim), lse(batch.rows());
        ASSERT_TRUE(ReferenceEstimation(batch.Params(out.data(), lse.data())).ok());
        bool moved = false;
        for (size_t r = 0; r < batch.rows(); ++r) {
          if (std::isfinite(lse[r]) && lse[r] > plain_lse[r] + 1e-3f) moved = true;
          if (std::isfinite(plain_lse[r])) {
            EXPECT_GE(lse[r], plain_lse[r]) << what << " row " << r;
          }
        }
        EXPECT_TRUE(moved) << what;
      }
    }
  }
}

// The estimate of a list with exclusion equals the estimate of the list with the excluded
// ids removed (offsets mode), and excluding nothing equals no exclusion at all; excluding
// every listed id leaves an empty row (0, -inf).
TEST(EstimationListsTest, ExclusionRemovesExactlyTheListedPages) {
  const std::vector<EstimationItemSpec> items = {{20, 10, 6}, {15, 30, 12}, {40, 0, 3},
                                                 {5, 30, 2},  {60, 17, 12}, {1, 1, 1}};
  EstimationLists batch(DType::kBF16, 128, 2, 1, 30, 12, items, 99);
  std::vector<float> out(batch.rows() * 128, kPoison), lse(batch.rows(), kPoison);
  ASSERT_TRUE(ReferenceEstimation(batch.Params(out.data(), lse.data())).ok());

  // The same lists, filtered on the host, in offsets mode without exclusion.
  std::vector<int32_t> offsets = {0}, kept;
  for (int i = 0; i < 6; ++i) {
    const int32_t* row = batch.exclude().data() + i * 12;
    for (int32_t j = 0; j < batch.list_count()[i]; ++j) {
      const int32_t id = batch.ids()[i * 30 + j];
      if (std::find(row, row + batch.exclude_count()[i], id) == row + batch.exclude_count()[i]) {
        kept.push_back(id);
      }
    }
    offsets.push_back(static_cast<int32_t>(kept.size()));
  }
  std::vector<float> filtered(out.size(), kPoison), filtered_lse(lse.size(), kPoison);
  EstimationParams p = batch.Params(filtered.data(), filtered_lse.data());
  p.list_count = nullptr;
  p.list_stride = 0;
  p.cluster_offsets = offsets.data();
  p.cluster_ids = kept.data();
  p.exclude_ids = nullptr;
  p.exclude_count = nullptr;
  p.exclude_stride = 0;
  ASSERT_TRUE(ReferenceEstimation(p).ok());
  ExpectClose(out, filtered, 1e-6, "exclusion vs filtered out");
  ExpectClose(lse, filtered_lse, 1e-6, "exclusion vs filtered lse");

  // Exclusion lists of count 0 (their rows still hold listed ids): as without exclusion.
  std::vector<float> none(out.size(), kPoison), none_lse(lse.size(), kPoison);
  std::vector<float> off(out.size(), kPoison), off_lse(lse.size(), kPoison);
  const std::vector<int32_t> saved = batch.exclude_count();
  std::fill(batch.exclude_count().begin(), batch.exclude_count().end(), 0);
  ASSERT_TRUE(ReferenceEstimation(batch.Params(none.data(), none_lse.data())).ok());
  p = batch.Params(off.data(), off_lse.data());
  p.exclude_ids = nullptr;
  p.exclude_count = nullptr;
  p.exclude_stride = 0;
  ASSERT_TRUE(ReferenceEstimation(p).ok());
  EXPECT_EQ(none, off);
  EXPECT_EQ(none_lse, off_lse);
  EXPECT_NE(none, out) << "the exclusions of the random batch changed nothing";
  batch.exclude_count() = saved;

  // Item 0 excludes every id it lists: its rows are empty; the others are unchanged.
  std::vector<int32_t> listed(batch.ids().begin(), batch.ids().begin() + batch.list_count()[0]);
  std::sort(listed.begin(), listed.end());
  listed.erase(std::unique(listed.begin(), listed.end()), listed.end());
  ASSERT_LE(listed.size(), 12u);  // 10 listed
  std::copy(listed.begin(), listed.end(), batch.exclude().begin());
  batch.exclude_count()[0] = static_cast<int32_t>(listed.size());
  std::vector<float> empty(out.size(), kPoison), empty_lse(lse.size(), kPoison);
  ASSERT_TRUE(ReferenceEstimation(batch.Params(empty.data(), empty_lse.data())).ok());
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(empty_lse[r], -std::numeric_limits<float>::infinity());
    for (int d = 0; d < 128; ++d) EXPECT_EQ(empty[r * 128 + d], 0.0f);
  }
  for (size_t x = 2 * 128; x < out.size(); ++x) ASSERT_EQ(empty[x], out[x]) << x;
  for (size_t r = 2; r < lse.size(); ++r) ASSERT_EQ(empty_lse[r], lse[r]) << r;
}

// Bad list and exclusion parameters: InvalidArgument naming the field, nothing written.
TEST(EstimationListsTest, RejectsBadListsAndExclusions) {
  std::vector<EstimationItemSpec> items = {{10, 5, 3}, {8, 7, 2}, {4, 0, 0}, {20, 8, 4}};
  struct Case {
    std::string expected;
    void (*mutate)(EstimationLists&, EstimationParams&);
  };
  const std::vector<Case> cases = {
      {"list_stride is 0", [](EstimationLists&, EstimationParams& p) { p.list_stride = 0; }},
      {"list_count[3] is 9; expected in [0, 8]",
       [](EstimationLists& b, EstimationParams&) { b.list_count()[3] = 9; }},
      {"list_count[1] is -1",
       [](EstimationLists& b, EstimationParams&) { b.list_count()[1] = -1; }},
      {"cluster_ids[25] is -4",  // item 3's second slot
       [](EstimationLists& b, EstimationParams&) { b.ids()[25] = -4; }},
      {"exclude_stride is 0", [](EstimationLists&, EstimationParams& p) { p.exclude_stride = 0; }},
      {"exclude_count is null",
       [](EstimationLists&, EstimationParams& p) { p.exclude_count = nullptr; }},
      {"exclude_count[3] is 5; expected in [0, 4]",
       [](EstimationLists& b, EstimationParams&) { b.exclude_count()[3] = 5; }},
      {"exclude_count[0] is -2",
       [](EstimationLists& b, EstimationParams&) { b.exclude_count()[0] = -2; }},
      {"exclude_ids of item 3 are not ascending",
       [](EstimationLists& b, EstimationParams&) {
         std::swap(b.exclude()[3 * 4], b.exclude()[3 * 4 + 3]);
       }},
      {"cluster_offsets is null (and no list_count)",
       [](EstimationLists&, EstimationParams& p) { p.list_count = nullptr; }},
      {"key_mean[3] is null",
       [](EstimationLists&, EstimationParams& p) {
         static std::vector<const void*> keys;
         keys.assign(p.key_mean, p.key_mean + 4);
         keys[3] = nullptr;
         p.key_mean = keys.data();
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    EstimationLists batch(DType::kFP16, 64, 2, 2, 8, 4, items, 5);
    std::vector<float> out(batch.rows() * 64, kPoison), lse(batch.rows(), kPoison);
    EstimationParams p = batch.Params(out.data(), lse.data());
    ASSERT_TRUE(ReferenceEstimation(p).ok());  // the unmutated batch is fine
    std::fill(out.begin(), out.end(), kPoison);
    std::fill(lse.begin(), lse.end(), kPoison);
    c.mutate(batch, p);
    const absl::Status status = ReferenceEstimation(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(std::string(status.message()).find(c.expected), std::string::npos) << status;
    for (float x : out) ASSERT_TRUE(std::isnan(x)) << "written despite the error";
    for (float x : lse) ASSERT_TRUE(std::isnan(x)) << "written despite the error";
  }
  // centroid_parts outside {1, 2}.
  EstimationLists batch(DType::kBF16, 64, 1, 1, 8, 0, items, 6);
  std::vector<float> out(batch.rows() * 64, kPoison), lse(batch.rows(), kPoison);
  EstimationParams p = batch.Params(out.data(), lse.data());
  p.centroid_parts = 3;
  EXPECT_NE(std::string(ReferenceEstimation(p).message()).find("centroid_parts is 3"),
            std::string::npos);
}

}  // namespace
}  // namespace kvtier
