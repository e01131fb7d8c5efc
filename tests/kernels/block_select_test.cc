// Host twins of block scoring and selection (block_select.h) and of the page summaries
// (block_summary.h) against brute force written separately: scores from the textbook formulas
// in double, selections from a full sort, summaries from plain min / max / mean loops.
#include "kernels/block_select.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/block_summary.h"
#include "tests/testing/block_select_oracle.h"

namespace kvtier {
namespace {

using testing_util::ExpectSelection;
using testing_util::SortSelect;
using testing_util::TwinScores;

uint16_t ToBits(DType dtype, float x) {
  return dtype == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
}
float FromBits(DType dtype, uint16_t b) {
  return dtype == DType::kBF16 ? BF16ToFloat(b) : FP16ToFloat(b);
}

struct ItemSpec {
  int blocks;  // summary entries the item owns
  int begin;   // candidate range
  int end;
};

// A batch of summaries and queries with random, never-zero values.
struct SelectBatch : testing_util::BlockSelectShape {
  SelectBatch(BlockScoreKind kind, DType dtype, int dim, int group, std::vector<ItemSpec> items,
              uint32_t seed)
      : BlockSelectShape{kind, 1, dtype, dim, group}, items(std::move(items)), rng(seed) {
    std::normal_distribution<float> normal;
    auto nonzero = [&](float mean, float sd) {
      for (;;) {
        const float x = mean + sd * normal(rng);
        const uint16_t b = ToBits(dtype, x);
        if (std::abs(FromBits(dtype, b)) >= 1e-2f) return b;
      }
    };
    const int n = static_cast<int>(this->items.size());
    q.resize(static_cast<size_t>(n) * group * dim);
    for (auto& x : q) x = nonzero(0.1f, 1.0f);
    for (const ItemSpec& item : this->items) {
      max_blocks = std::max(max_blocks, item.blocks);
      std::vector<uint16_t> s;
      std::vector<int32_t> c;
      std::uniform_int_distribution<int> count(0, 40);
      for (int b = 0; b < item.blocks; ++b) {
        if (kind == BlockScoreKind::kPageBounds) {
          std::vector<uint16_t> hi(dim), lo(dim);
          for (int d = 0; d < dim; ++d) {
            const float center = 0.3f * normal(rng);
            float a = FromBits(dtype, nonzero(center + 0.4f, 0.3f));
            float z = FromBits(dtype, nonzero(center - 0.4f, 0.3f));
            if (a < z) std::swap(a, z);
            hi[d] = ToBits(dtype, a);
            lo[d] = ToBits(dtype, z);
          }
          s.insert(s.end(), hi.begin(), hi.end());
          s.insert(s.end(), lo.begin(), lo.end());
        } else {
          for (int d = 0; d < dim; ++d) s.push_back(nonzero(0.2f, 1.0f));
          const int k = count(rng);
          c.push_back(k <= 2 ? 0 : k);  // some empty blocks
        }
      }
      summaries.push_back(std::move(s));
      counts.push_back(std::move(c));
    }
    for (int i = 0; i < n; ++i) {
      summary_ptrs.push_back(summaries[i].data());
      count_ptrs.push_back(counts[i].data());
      begins.push_back(this->items[i].begin);
      ends.push_back(this->items[i].end);
    }
  }

  BlockSelectParams Params(BlockSelectMode mode, int k, float mass_target = 0.0f) {
    const int n = static_cast<int>(items.size());
    selected.assign(static_cast<size_t>(n) * k, 0x7EADBEEF);
    num_selected.assign(n, 0x7EADBEEF);
    BlockSelectParams p = Settings(n, std::max(1, max_blocks), mode, k, mass_target);
    p.q = q.data();
    p.block_begin = begins.data();
    p.block_end = ends.data();
    if (kind == BlockScoreKind::kPageBounds) {
      p.bounds = summary_ptrs.data();
    } else {
      p.key_mean = summary_ptrs.data();
      p.count = count_ptrs.data();
    }
    p.selected = selected.data();
    p.num_selected = num_selected.data();
    return p;
  }

  float Q(int item, int h, int d) const {
    return FromBits(dtype, q[(static_cast<size_t>(item) * group + h) * dim + d]);
  }
  float S(int item, int b, int row, int d) const {
    const int rows = kind == BlockScoreKind::kPageBounds ? 2 : 1;
    return FromBits(dtype, summaries[item][(static_cast<size_t>(b) * rows + row) * dim + d]);
  }

  std::vector<ItemSpec> items;
  std::mt19937 rng;
  int max_blocks = 0;
  std::vector<uint16_t> q;
  std::vector<std::vector<uint16_t>> summaries;
  std::vector<std::vector<int32_t>> counts;
  std::vector<const void*> summary_ptrs;
  std::vector<const int32_t*> count_ptrs;
  std::vector<int32_t> begins, ends, selected, num_selected;
};

// Textbook scores in double of item `i`'s candidates.
std::vector<double> BruteScores(const SelectBatch& b, int i, float scale) {
  const ItemSpec& item = b.items[i];
  std::vector<double> scores(item.end - item.begin, 0.0);
  if (b.kind == BlockScoreKind::kPageBounds) {
    for (int blk = item.begin; blk < item.end; ++blk) {
      double s = 0.0;
      for (int h = 0; h < b.group; ++h) {
        for (int d = 0; d < b.dim; ++d) {
          const double q = b.Q(i, h, d);
          s += std::max(q * b.S(i, blk, 0, d), q * b.S(i, blk, 1, d));
        }
      }
      scores[blk - item.begin] = s;
    }
    return scores;
  }
  for (int h = 0; h < b.group; ++h) {
    std::vector<double> logit(scores.size());
    double denominator = 0.0;
    for (int blk = item.begin; blk < item.end; ++blk) {
      double dot = 0.0;
      for (int d = 0; d < b.dim; ++d) dot += static_cast<double>(b.Q(i, h, d)) * b.S(i, blk, 0, d);
      logit[blk - item.begin] = std::exp(scale * dot);
      denominator += std::max(0, b.counts[i][blk]) * logit[blk - item.begin];
    }
    for (int blk = item.begin; blk < item.end; ++blk) {
      scores[blk - item.begin] +=
          std::max(0, b.counts[i][blk]) * logit[blk - item.begin] / denominator;
    }
  }
  return scores;
}

std::vector<ItemSpec> MixedItems() {
  return {{300, 0, 300}, {1000, 16, 990}, {5, 0, 5}, {1, 0, 1}, {64, 10, 10}, {700, 3, 600}};
}

TEST(BlockSelectReferenceTest, BoundsScoresMatchBruteForce) {
  for (int dim : {64, 128, 256}) {
    for (int group : {1, 4, 7}) {
      SelectBatch batch(BlockScoreKind::kPageBounds, DType::kBF16, dim, group, MixedItems(),
                        dim + group);
      const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 8);
      for (int i = 0; i < p.num_items; ++i) {
        const std::vector<double> expected = BruteScores(batch, i, p.softmax_scale);
        std::vector<float> actual(expected.size());
        ASSERT_TRUE(ReferenceBlockScores(p, i, actual.data()).ok());
        for (size_t r = 0; r < expected.size(); ++r) {
          // fp32 sums of G * D terms of magnitude ~1: rounding ~ sqrt(G D) * 2^-24 * max term.
          ASSERT_NEAR(actual[r], expected[r], 1e-5 * (1.0 + std::abs(expected[r])))
              << "dim " << dim << " group " << group << " item " << i << " block " << r;
        }
      }
    }
  }
}

TEST(BlockSelectReferenceTest, CentroidMassesMatchBruteForce) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int group : {1, 4}) {
      SelectBatch batch(BlockScoreKind::kCentroid, dtype, 128, group, MixedItems(), 7 + group);
      const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 8);
      for (int i = 0; i < p.num_items; ++i) {
        const std::vector<double> expected = BruteScores(batch, i, p.softmax_scale);
        std::vector<float> actual(expected.size());
        ASSERT_TRUE(ReferenceBlockScores(p, i, actual.data()).ok());
        double total = 0.0;
        for (size_t r = 0; r < expected.size(); ++r) {
          ASSERT_NEAR(actual[r], expected[r], 2e-6 * group + 1e-5 * expected[r]) << i << " " << r;
          total += actual[r];
        }
        if (!expected.empty()) {
          EXPECT_NEAR(total, group, 1e-4 * group);
        }
      }
    }
  }
}

TEST(BlockSelectReferenceTest, SelectionIsTheSortedRanking) {
  struct Case {
    BlockScoreKind kind;
    BlockSelectMode mode;
    int k;
    float target;
  };
  const Case cases[] = {{BlockScoreKind::kPageBounds, BlockSelectMode::kTopK, 1, 0},
                        {BlockScoreKind::kPageBounds, BlockSelectMode::kTopK, 37, 0},
                        {BlockScoreKind::kPageBounds, BlockSelectMode::kTopK, 4096, 0},
                        {BlockScoreKind::kCentroid, BlockSelectMode::kTopK, 64, 0},
                        {BlockScoreKind::kCentroid, BlockSelectMode::kMassTarget, 4096, 0.5f},
                        {BlockScoreKind::kCentroid, BlockSelectMode::kMassTarget, 4096, 0.9f},
                        {BlockScoreKind::kCentroid, BlockSelectMode::kMassTarget, 20, 0.9f},
                        {BlockScoreKind::kCentroid, BlockSelectMode::kMassTarget, 4096, 1.0f}};
  for (const Case& c : cases) {
    SelectBatch batch(c.kind, DType::kBF16, 64, 4, MixedItems(), 99);
    const BlockSelectParams p = batch.Params(c.mode, c.k, c.target);
    ASSERT_TRUE(ReferenceBlockSelect(p).ok());
    const uint64_t target = c.mode == BlockSelectMode::kMassTarget
                                ? internal::FixedMassTarget(c.target, 4)
                                : std::numeric_limits<uint64_t>::max();
    for (int i = 0; i < p.num_items; ++i) {
      const ItemSpec& item = batch.items[i];
      const std::vector<float> scores = TwinScores(p, i);
      const std::vector<int32_t> expected = SortSelect(scores, item.begin, c.k, target);
      ASSERT_NO_FATAL_FAILURE(ExpectSelection(p, i, expected));
      if (c.mode == BlockSelectMode::kTopK) {
        EXPECT_EQ(batch.num_selected[i], std::min(c.k, item.end - item.begin));
      }
      if (c.mode == BlockSelectMode::kMassTarget && c.k == 4096 && item.end > item.begin) {
        // The mass is reached (or every block is taken) and one block fewer would not do.
        double mass = 0.0;
        for (int32_t blk : expected) mass += scores[blk - item.begin];
        if (static_cast<int>(expected.size()) < item.end - item.begin) {
          EXPECT_GE(mass, c.target * 4 * (1 - 1e-6));
        }
      }
    }
  }
}

// The two passes one at a time (scoring, then the selection from its logits) write what one
// ReferenceBlockSelect writes, zone included; without logits the selection scores the
// summaries itself. Every output is poisoned first.
TEST(BlockSelectReferenceTest, ScoringThenSelectionEqualsOneCall) {
  for (BlockScoreKind kind : {BlockScoreKind::kPageBounds, BlockScoreKind::kCentroid}) {
    for (bool with_logits : {false, true}) {
      if (with_logits && kind == BlockScoreKind::kPageBounds) continue;
      SCOPED_TRACE(absl::StrCat(kind == BlockScoreKind::kCentroid ? "centroid" : "bounds",
                                with_logits ? " logits" : ""));
      SelectBatch batch(kind, DType::kBF16, 64, 4, MixedItems(), 7);
      BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 24);
      const size_t n = static_cast<size_t>(p.num_items);
      std::vector<int32_t> zone(n * 40, 0x7EADBEEF), zone_count(n, 0x7EADBEEF);
      p.zone_k = 40;
      p.zone_selected = zone.data();
      p.zone_count = zone_count.data();
      std::vector<float> logits;
      if (with_logits) {
        logits.assign(n * p.group_size * p.max_blocks, std::numeric_limits<float>::quiet_NaN());
        p.logits = logits.data();
      }
      ASSERT_TRUE(ReferenceBlockSelect(p).ok());
      const std::vector<int32_t> selected = batch.selected, counts = batch.num_selected;
      const std::vector<int32_t> zone_one = zone, zone_count_one = zone_count;
      const std::vector<float> logits_one = logits;
      std::fill(batch.selected.begin(), batch.selected.end(), 0x7EADBEEF);
      std::fill(batch.num_selected.begin(), batch.num_selected.end(), 0x7EADBEEF);
      std::fill(zone.begin(), zone.end(), 0x7EADBEEF);
      std::fill(zone_count.begin(), zone_count.end(), 0x7EADBEEF);
      std::fill(logits.begin(), logits.end(), std::numeric_limits<float>::quiet_NaN());
      ASSERT_TRUE(ReferenceBlockScoring(p).ok());
      EXPECT_EQ(batch.num_selected[0], 0x7EADBEEF);  // scoring selects nothing
      ASSERT_TRUE(ReferenceBlockSelectScored(p).ok());
      EXPECT_EQ(batch.selected, selected);
      EXPECT_EQ(batch.num_selected, counts);
      EXPECT_EQ(zone, zone_one);
      EXPECT_EQ(zone_count, zone_count_one);
      // Scoring and the zone alone write no selection: they take null outputs for it.
      BlockSelectParams no_outputs = p;
      no_outputs.selected = nullptr;
      no_outputs.num_selected = nullptr;
      EXPECT_TRUE(ReferenceBlockScoring(no_outputs).ok());
      EXPECT_TRUE(ReferenceBlockSelectZone(no_outputs).ok());
      EXPECT_EQ(zone, zone_one);
      const absl::Status refused = ReferenceBlockSelectScored(no_outputs);
      EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
      EXPECT_NE(std::string(refused.message()).find("selected is null"), std::string::npos);
      for (size_t j = 0; j < logits.size(); ++j) {  // NaN where no candidate wrote one
        ASSERT_TRUE(logits[j] == logits_one[j] ||
                    (std::isnan(logits[j]) && std::isnan(logits_one[j])))
            << j;
      }
    }
  }
}

TEST(BlockSelectReferenceTest, SelectionAgreesWithExactScoresAwayFromTies) {
  // The twin's fp32 ranking against the double brute force: every selected block scores at
  // least as high as every unselected one, up to the fp32 rounding of the scores.
  SelectBatch batch(BlockScoreKind::kPageBounds, DType::kFP16, 128, 4, MixedItems(), 5);
  const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 50);
  ASSERT_TRUE(ReferenceBlockSelect(p).ok());
  for (int i = 0; i < p.num_items; ++i) {
    const ItemSpec& item = batch.items[i];
    const std::vector<double> exact = BruteScores(batch, i, p.softmax_scale);
    std::vector<bool> chosen(exact.size(), false);
    for (int j = 0; j < batch.num_selected[i]; ++j) {
      chosen[batch.selected[static_cast<size_t>(i) * p.k + j] - item.begin] = true;
    }
    double lowest_chosen = std::numeric_limits<double>::infinity();
    double highest_other = -std::numeric_limits<double>::infinity();
    for (size_t r = 0; r < exact.size(); ++r) {
      if (chosen[r]) {
        lowest_chosen = std::min(lowest_chosen, exact[r]);
      } else {
        highest_other = std::max(highest_other, exact[r]);
      }
    }
    EXPECT_GE(lowest_chosen, highest_other - 1e-3) << "item " << i;
  }
}

TEST(BlockSelectReferenceTest, TiesGoToLowerIndexes) {
  SelectBatch batch(BlockScoreKind::kPageBounds, DType::kBF16, 64, 2, {{100, 7, 93}}, 3);
  // Every block gets block 0's summary: all scores tie.
  for (int b = 1; b < 100; ++b) {
    std::copy(batch.summaries[0].begin(), batch.summaries[0].begin() + 128,
              batch.summaries[0].begin() + b * 128);
  }
  const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 10);
  ASSERT_TRUE(ReferenceBlockSelect(p).ok());
  ASSERT_EQ(batch.num_selected[0], 10);
  for (int j = 0; j < 10; ++j) EXPECT_EQ(batch.selected[j], 7 + j);
}

TEST(BlockSelectReferenceTest, NaNSummaryRanksFirst) {
  SelectBatch batch(BlockScoreKind::kPageBounds, DType::kBF16, 64, 2, {{50, 0, 50}}, 4);
  batch.summaries[0][33 * 128 + 5] = 0x7FC0;  // a NaN max in block 33
  const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 1);
  ASSERT_TRUE(ReferenceBlockSelect(p).ok());
  EXPECT_EQ(batch.num_selected[0], 1);
  EXPECT_EQ(batch.selected[0], 33);
}

TEST(BlockSelectReferenceTest, RejectsBadParameters) {
  SelectBatch batch(BlockScoreKind::kPageBounds, DType::kBF16, 64, 2, {{10, 0, 10}}, 4);
  auto expect_invalid = [](const BlockSelectParams& p, const std::string& field) {
    const absl::Status status = ReferenceBlockSelect(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(std::string(status.message()).find(field), std::string::npos) << status;
  };
  BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 4);
  p.k = 0;
  expect_invalid(p, "k is 0");
  p = batch.Params(BlockSelectMode::kTopK, 4);
  p.k = kMaxSelectK + 1;
  expect_invalid(p, "k is");
  p = batch.Params(BlockSelectMode::kMassTarget, 4, 0.5f);
  expect_invalid(p, "kMassTarget");
  p = batch.Params(BlockSelectMode::kTopK, 4);
  p.group_size = 17;
  expect_invalid(p, "group_size");
  p = batch.Params(BlockSelectMode::kTopK, 4);
  p.head_dim = 96;
  expect_invalid(p, "head_dim");
  p = batch.Params(BlockSelectMode::kTopK, 4);
  batch.ends[0] = 11;
  expect_invalid(p, "block_end");
  EXPECT_EQ(batch.selected[0], 0x7EADBEEF);  // nothing written
  batch.ends[0] = 10;
  p = batch.Params(BlockSelectMode::kTopK, 4);
  p.bounds = nullptr;
  expect_invalid(p, "bounds");
  SelectBatch centroid(BlockScoreKind::kCentroid, DType::kBF16, 64, 2, {{10, 0, 10}}, 4);
  p = centroid.Params(BlockSelectMode::kMassTarget, 4, 1.5f);
  expect_invalid(p, "mass_target");
  p = centroid.Params(BlockSelectMode::kMassTarget, 4, 0.0f);
  expect_invalid(p, "mass_target");
}

TEST(BlockSelectReferenceTest, CanonicalExpIsAccurate) {
  for (float x = -103.0f; x < 88.7f; x += 0.0137f) {
    const double expected = std::exp(static_cast<double>(x));
    const double actual = internal::CanonicalExp(x);
    if (expected < 1e-37) continue;  // subnormal results: absolute error only
    ASSERT_NEAR(actual / expected, 1.0, 4e-7) << x;
  }
  EXPECT_EQ(internal::CanonicalExp(0.0f), 1.0f);
  EXPECT_EQ(internal::CanonicalExp(-200.0f), 0.0f);
  EXPECT_EQ(internal::CanonicalExp(100.0f), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(internal::CanonicalExp(std::numeric_limits<float>::quiet_NaN())));
}

TEST(BlockSelectReferenceTest, ScoreKeyOrdersLikeFloats) {
  const float values[] = {-std::numeric_limits<float>::infinity(),
                          -3.5f,
                          -1e-30f,
                          0.0f,
                          1e-30f,
                          2.0f,
                          std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN()};
  for (size_t i = 1; i < std::size(values); ++i) {
    EXPECT_LT(internal::ScoreKey(values[i - 1]), internal::ScoreKey(values[i])) << i;
  }
  EXPECT_EQ(internal::ScoreKey(-0.0f), internal::ScoreKey(0.0f));
  EXPECT_EQ(internal::ScoreKey(-std::numeric_limits<float>::quiet_NaN()),
            internal::ScoreKey(std::numeric_limits<float>::quiet_NaN()));
}

// ---- Page summaries ------------------------------------------------------------------------

TEST(PageSummaryReferenceTest, MatchesPlainLoops) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    const int dim = 128, page = 16;
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.2f, 1.0f);
    const std::vector<int32_t> tokens = {16, 1, 7, 0};
    const int n = static_cast<int>(tokens.size());
    std::vector<uint16_t> k(n * page * dim), v(n * page * dim);
    for (auto& x : k) x = ToBits(dtype, normal(rng));
    for (auto& x : v) x = ToBits(dtype, normal(rng));
    std::vector<uint16_t> bounds(n * 2 * dim, 0x7FC0), mean(n * dim, 0x7FC0);
    std::vector<uint16_t> vmean(n * dim, 0x7FC0);
    std::vector<int32_t> count(n, -1);
    std::vector<const void*> kp, vp;
    std::vector<void*> bp, mp, sp;
    std::vector<int32_t*> cp;
    for (int j = 0; j < n; ++j) {
      kp.push_back(k.data() + j * page * dim);
      vp.push_back(v.data() + j * page * dim);
      bp.push_back(bounds.data() + j * 2 * dim);
      mp.push_back(mean.data() + j * dim);
      sp.push_back(vmean.data() + j * dim);
      cp.push_back(count.data() + j);
    }
    PageSummaryParams p;
    p.dtype = dtype;
    p.head_dim = dim;
    p.page_size = page;
    p.num_pages = n;
    p.k_pages = kp.data();
    p.v_pages = vp.data();
    p.tokens = tokens.data();
    p.bounds = bp.data();
    p.key_mean = mp.data();
    p.value_mean = sp.data();
    p.count = cp.data();
    ASSERT_TRUE(ReferencePageSummaries(p).ok());
    for (int j = 0; j < n; ++j) {
      EXPECT_EQ(count[j], tokens[j]);
      for (int d = 0; d < dim; ++d) {
        double hi = -INFINITY, lo = INFINITY, ks = 0, vs = 0;
        for (int t = 0; t < tokens[j]; ++t) {
          const double kv = FromBits(dtype, k[(j * page + t) * dim + d]);
          hi = std::max(hi, kv);
          lo = std::min(lo, kv);
          ks += kv;
          vs += FromBits(dtype, v[(j * page + t) * dim + d]);
        }
        EXPECT_EQ(FromBits(dtype, bounds[j * 2 * dim + d]), hi);
        EXPECT_EQ(FromBits(dtype, bounds[j * 2 * dim + dim + d]), lo);
        const double m = tokens[j] ? ks / tokens[j] : 0.0;
        // One rounding to the dtype (2^-8 relative for bf16) dominates the fp32 sum's error.
        EXPECT_NEAR(FromBits(dtype, mean[j * dim + d]), m, std::abs(m) * 0x1p-8 + 1e-5);
        const double vm = tokens[j] ? vs / tokens[j] : 0.0;
        EXPECT_NEAR(FromBits(dtype, vmean[j * dim + d]), vm, std::abs(vm) * 0x1p-8 + 1e-5);
      }
    }
    // Out-of-range tokens: rejected, nothing written.
    const std::vector<uint16_t> before = bounds;
    const std::vector<int32_t> bad = {16, 17, 1, 1};
    p.tokens = bad.data();
    const absl::Status status = ReferencePageSummaries(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(status.message()).find("tokens[1]"), std::string::npos) << status;
    EXPECT_EQ(bounds, before);
  }
}

}  // namespace
}  // namespace kvtier
