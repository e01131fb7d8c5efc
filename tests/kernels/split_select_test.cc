// The split centroid (centroid_parts = 2) in the host twins of block selection (block_select.h)
// and estimation (estimation.h): against the single centroid (centroid_parts = 1) it refines
// and against brute force in double (written here; estimation's plain sums in
// testing/estimation_lists.h). The split page summaries: split_centroid_test.cc. Fresh random
// data from seeded generators; every output poisoned before each call (a NaN where the type
// has one), so an element left unwritten fails, and NaN never passes a comparison.
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
#include "kernels/block_select.h"
#include "kernels/estimation.h"
#include "tests/testing/block_select_oracle.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/half_bits.h"

namespace kvtier {
namespace {

using testing_util::Bits;
using testing_util::EstimationItemSpec;
using testing_util::EstimationLists;
using testing_util::ExpectSelection;
using testing_util::ListAddressing;
using testing_util::ListAddressingName;
using testing_util::SortSelect;
using testing_util::TwinScores;
using testing_util::Value;

constexpr uint16_t kPoisonHalf = 0x7FC1;  // a NaN in bf16 and in fp16
constexpr int32_t kPoisonInt = 0x7E7E7E7E;
const float kPoisonFloat = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

bool HasMessage(const absl::Status& status, const std::string& text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

// ---- Block selection ------------------------------------------------------------------------

struct ItemSpec {
  int blocks;  // summary entries the item owns
  int begin;   // candidate range
  int end;
};

std::vector<ItemSpec> MixedItems() {
  return {{300, 0, 300}, {1000, 16, 990}, {5, 0, 5}, {1, 0, 1}, {64, 10, 10}, {700, 3, 600}};
}

// Queries and split-centroid summaries (key_mean [blocks, 2, D], count [blocks, 2]) with
// random, never-zero keys; counts random in [1, 40], with some parts empty: part 1 of about a
// third of the blocks, part 0 of a few, both of a few.
struct SplitSelectBatch : testing_util::BlockSelectShape {
  SplitSelectBatch(DType dtype, int dim, int group, std::vector<ItemSpec> specs, uint32_t seed)
      : BlockSelectShape{BlockScoreKind::kCentroid, 2, dtype, dim, group},
        items(std::move(specs)),
        rng(seed) {
    q.resize(items.size() * group * dim);
    for (auto& x : q) x = Nonzero(0.1f, 1.0f);
    std::uniform_int_distribution<int> draw(1, 40), empties(0, 29);
    for (const ItemSpec& item : items) {
      max_blocks = std::max(max_blocks, item.blocks);
      std::vector<uint16_t> keys;
      std::vector<int32_t> counts;
      for (int b = 0; b < item.blocks; ++b) {
        for (int x = 0; x < 2 * dim; ++x) keys.push_back(Nonzero(0.2f, 1.0f));
        const int k = empties(rng);
        counts.push_back(k < 2 ? 0 : draw(rng));              // part 0: a few empty
        counts.push_back(k == 0 || k >= 20 ? 0 : draw(rng));  // part 1: a third empty
      }
      // The first candidate holds tokens: no item is all empty (its masses would be 0 / 0).
      if (item.end > item.begin) counts[static_cast<size_t>(item.begin) * 2] = 3;
      key_mean.push_back(std::move(keys));
      count.push_back(std::move(counts));
    }
    max_blocks = std::max(max_blocks, 1);
  }

  uint16_t Nonzero(float mean, float sd) {
    for (;;) {
      const uint16_t b = Bits(dtype, mean + sd * normal(rng));
      if (std::abs(Value(dtype, b)) >= 1e-2f) return b;
    }
  }
  uint16_t* Key(int item, int block, int part) {
    return key_mean[item].data() + (static_cast<size_t>(block) * 2 + part) * dim;
  }
  int32_t& Count(int item, int block, int part) {
    return count[item][static_cast<size_t>(block) * 2 + part];
  }
  float Q(int item, int h, int d) const {
    return Value(dtype, q[(static_cast<size_t>(item) * group + h) * dim + d]);
  }

  // Parameters over the batch (outputs poisoned), `parts` 2 unless a test says otherwise.
  BlockSelectParams Params(BlockSelectMode mode, int k, float mass_target = 0.0f) {
    const int n = static_cast<int>(items.size());
    selected.assign(static_cast<size_t>(n) * k, kPoisonInt);
    num_selected.assign(n, kPoisonInt);
    key_ptrs.clear();
    count_ptrs.clear();
    begins.clear();
    ends.clear();
    for (int i = 0; i < n; ++i) {
      key_ptrs.push_back(key_mean[i].data());
      count_ptrs.push_back(count[i].data());
      begins.push_back(items[i].begin);
      ends.push_back(items[i].end);
    }
    BlockSelectParams p = Settings(n, max_blocks, mode, k, mass_target);
    p.q = q.data();
    p.block_begin = begins.data();
    p.block_end = ends.data();
    p.key_mean = key_ptrs.data();
    p.count = count_ptrs.data();
    p.selected = selected.data();
    p.num_selected = num_selected.data();
    return p;
  }

  // Textbook scores of item i's candidates in double: per head, logits l = scale q.c of the
  // parts with tokens, block weight sum_p n_p e^{l_p}, mass = weight / sum of the weights;
  // score = sum over heads. The maximum subtracted is over the parts with tokens only.
  std::vector<double> BruteScores(int i, double scale) {
    const ItemSpec& item = items[i];
    std::vector<double> scores(item.end - item.begin, 0.0);
    for (int h = 0; h < group; ++h) {
      std::vector<double> logit(scores.size() * 2, 0.0);
      double top = -std::numeric_limits<double>::infinity();
      for (int b = item.begin; b < item.end; ++b) {
        for (int part = 0; part < 2; ++part) {
          if (Count(i, b, part) <= 0) continue;
          double dot = 0;
          for (int d = 0; d < dim; ++d) {
            dot += static_cast<double>(Q(i, h, d)) * Value(dtype, Key(i, b, part)[d]);
          }
          logit[(b - item.begin) * 2 + part] = scale * dot;
          top = std::max(top, scale * dot);
        }
      }
      std::vector<double> weight(scores.size(), 0.0);
      double total = 0;
      for (size_t r = 0; r < scores.size(); ++r) {
        for (int part = 0; part < 2; ++part) {
          const int32_t n = Count(i, item.begin + static_cast<int>(r), part);
          if (n > 0) weight[r] += n * std::exp(logit[r * 2 + part] - top);
        }
        total += weight[r];
      }
      for (size_t r = 0; r < scores.size(); ++r) scores[r] += weight[r] / total;
    }
    return scores;
  }

  std::vector<ItemSpec> items;
  std::mt19937 rng;
  std::normal_distribution<float> normal;
  int max_blocks = 0;
  std::vector<uint16_t> q;
  std::vector<std::vector<uint16_t>> key_mean;
  std::vector<std::vector<int32_t>> count;
  std::vector<const void*> key_ptrs;
  std::vector<const int32_t*> count_ptrs;
  std::vector<int32_t> begins, ends, selected, num_selected;
};

TEST(SplitSelectTest, ScoresMatchBruteForce) {
  uint32_t seed = 500;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 8}) {
        SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim << " G " << group);
        SplitSelectBatch batch(dtype, dim, group, MixedItems(), seed++);
        const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 8);
        for (int i = 0; i < p.num_items; ++i) {
          const std::vector<double> want = batch.BruteScores(i, p.softmax_scale);
          const std::vector<float> got = TwinScores(p, i);
          double total = 0;
          bool any = false;
          for (size_t r = 0; r < want.size(); ++r) {
            // fp32 logits (D terms), CanonicalExp (~2 ulp) and a sum of up to 1000 weights:
            // a few 1e-6 relative; 1e-4 leaves margin and still sees a wrong weight.
            ASSERT_NEAR(got[r], want[r], 1e-4 * want[r] + 1e-12) << "item " << i << " block " << r;
            total += got[r];
            const int b = batch.items[i].begin + static_cast<int>(r);
            any |= batch.Count(i, b, 0) > 0 || batch.Count(i, b, 1) > 0;
          }
          if (any) {
            EXPECT_NEAR(total, group, 1e-4 * group) << "item " << i;
          }
        }
      }
    }
  }
}

// With every second part empty (whatever its key holds, NaN included), a split-centroid item
// is a single-centroid item of the first parts: the same scores bit for bit (the twin sums
// the same terms in the same order, an empty part adding +0) and the same selections.
TEST(SplitSelectTest, EmptySecondPartsScoreAsOneCentroid) {
  uint32_t seed = 600;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int group : {1, 4}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " G " << group);
      SplitSelectBatch batch(dtype, 128, group, MixedItems(), seed++);
      std::vector<std::vector<uint16_t>> single_keys(batch.items.size());
      std::vector<std::vector<int32_t>> single_counts(batch.items.size());
      for (int i = 0; i < static_cast<int>(batch.items.size()); ++i) {
        for (int b = 0; b < batch.items[i].blocks; ++b) {
          batch.Count(i, b, 1) = 0;
          uint16_t* garbage = batch.Key(i, b, 1);
          for (int d = 0; d < 128; ++d) garbage[d] = Bits(dtype, b % 2 ? 60.0f : -60.0f);
          if (b % 7 == 0) garbage[b % 128] = kPoisonHalf;  // NaN
          single_keys[i].insert(single_keys[i].end(), batch.Key(i, b, 0), batch.Key(i, b, 0) + 128);
          single_counts[i].push_back(batch.Count(i, b, 0));
        }
      }
      for (auto [mode, k, target] : {std::tuple{BlockSelectMode::kTopK, 37, 0.0f},
                                     std::tuple{BlockSelectMode::kMassTarget, 4096, 0.9f}}) {
        BlockSelectParams two = batch.Params(mode, k, target);
        BlockSelectParams one = two;
        std::vector<const void*> key_ptrs;
        std::vector<const int32_t*> count_ptrs;
        for (size_t i = 0; i < batch.items.size(); ++i) {
          key_ptrs.push_back(single_keys[i].data());
          count_ptrs.push_back(single_counts[i].data());
        }
        std::vector<int32_t> selected(batch.selected.size(), kPoisonInt);
        std::vector<int32_t> num_selected(batch.num_selected.size(), kPoisonInt);
        one.centroid_parts = 1;
        one.key_mean = key_ptrs.data();
        one.count = count_ptrs.data();
        one.selected = selected.data();
        one.num_selected = num_selected.data();
        for (int i = 0; i < two.num_items; ++i) {
          const std::vector<float> got = TwinScores(two, i);
          const std::vector<float> want = TwinScores(one, i);
          for (size_t r = 0; r < got.size(); ++r) {
            ASSERT_FALSE(std::isnan(want[r])) << "item " << i << " block " << r;
            ASSERT_EQ(std::bit_cast<uint32_t>(got[r]), std::bit_cast<uint32_t>(want[r]))
                << "item " << i << " block " << r << ": " << got[r] << " vs " << want[r];
          }
        }
        ASSERT_TRUE(ReferenceBlockSelect(two).ok());
        ASSERT_TRUE(ReferenceBlockSelect(one).ok());
        EXPECT_EQ(batch.num_selected, num_selected);
        EXPECT_EQ(batch.selected, selected);
        EXPECT_GT(num_selected[0], 0);
      }
    }
  }
}

// An empty part whose key would give a logit far above every other (beyond CanonicalExp's
// range below the maximum) must not set the maximum: if it did, every weight would underflow
// to 0 and the masses be 0 / 0. Empty first parts and empty second parts alike. The same
// part with a token takes (nearly) all of head 0's mass, so the test can tell.
TEST(SplitSelectTest, EmptyPartsDoNotSetTheMaximum) {
  uint32_t seed = 700;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int group : {1, 4}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " G " << group);
      const int dim = 128;
      SplitSelectBatch batch(dtype, dim, group, {{200, 0, 200}}, seed++);
      // Blocks 10, 50, ...: a huge-logit key (aligned with head 0's query) in an empty part,
      // part 0 of block 10 and part 1 of block 50 and so on.
      const std::vector<int> planted = {10, 50, 90, 130, 170};
      for (size_t x = 0; x < planted.size(); ++x) {
        const int b = planted[x];
        const int part = static_cast<int>(x % 2);
        batch.Count(0, b, part) = 0;
        batch.Count(0, b, 1 - part) = 5;
        for (int d = 0; d < dim; ++d) {
          batch.Key(0, b, part)[d] = Bits(dtype, batch.Q(0, 0, d) >= 0 ? 60.0f : -60.0f);
        }
      }
      const BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 8);
      const std::vector<double> want = batch.BruteScores(0, p.softmax_scale);
      const std::vector<float> got = TwinScores(p, 0);
      double total = 0;
      for (size_t r = 0; r < want.size(); ++r) {
        ASSERT_NEAR(got[r], want[r], 1e-4 * want[r] + 1e-12) << "block " << r;
        total += got[r];
      }
      EXPECT_NEAR(total, group, 1e-4 * group);
      // Sanity: given a token, the planted part takes head 0's mass (score ~1 from head 0).
      batch.Count(0, 10, 0) = 1;
      const BlockSelectParams q = batch.Params(BlockSelectMode::kTopK, 1);
      const std::vector<float> heavy = TwinScores(q, 0);
      EXPECT_GT(heavy[10], 0.999f);
      ASSERT_TRUE(ReferenceBlockSelect(q).ok());
      EXPECT_EQ(batch.num_selected[0], 1);
      EXPECT_EQ(batch.selected[0], 10);
    }
  }
}

TEST(SplitSelectTest, SelectionIsTheSortedRanking) {
  struct Case {
    BlockSelectMode mode;
    int k;
    float target;
  };
  const Case cases[] = {{BlockSelectMode::kTopK, 1, 0},
                        {BlockSelectMode::kTopK, 37, 0},
                        {BlockSelectMode::kTopK, 4096, 0},
                        {BlockSelectMode::kMassTarget, 4096, 0.5f},
                        {BlockSelectMode::kMassTarget, 4096, 0.9f},
                        {BlockSelectMode::kMassTarget, 20, 0.9f},
                        {BlockSelectMode::kMassTarget, 4096, 1.0f}};
  for (int group : {1, 4, 8}) {
    SplitSelectBatch batch(DType::kBF16, 64, group, MixedItems(), 800 + group);
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << "G " << group << " mode " << static_cast<int>(c.mode)
                                      << " k " << c.k << " target " << c.target);
      const BlockSelectParams p = batch.Params(c.mode, c.k, c.target);
      ASSERT_TRUE(ReferenceBlockSelect(p).ok());
      const uint64_t target = c.mode == BlockSelectMode::kMassTarget
                                  ? internal::FixedMassTarget(c.target, group)
                                  : std::numeric_limits<uint64_t>::max();
      for (int i = 0; i < p.num_items; ++i) {
        const ItemSpec& item = batch.items[i];
        ASSERT_NO_FATAL_FAILURE(
            ExpectSelection(p, i, SortSelect(TwinScores(p, i), item.begin, c.k, target)));
      }
    }
  }
}

// The zone-only call writes the zone the retrieval's call with a zone writes, from the kept
// logits or from the summaries, and touches nothing else; zone_k 0 is rejected.
TEST(SplitSelectTest, ZoneOnlyCallEqualsTheCombinedCall) {
  SplitSelectBatch batch(DType::kBF16, 128, 4, MixedItems(), 901);
  const int zone_k = 400;
  const size_t n = batch.items.size();
  BlockSelectParams p = batch.Params(BlockSelectMode::kMassTarget, 64, 0.8f);
  std::vector<int32_t> want_zone(n * zone_k, kPoisonInt), want_count(n, kPoisonInt);
  std::vector<float> logits(n * 4 * 2 * batch.max_blocks, kPoisonFloat);
  p.zone_k = zone_k;
  p.zone_selected = want_zone.data();
  p.zone_count = want_count.data();
  p.logits = logits.data();
  ASSERT_TRUE(ReferenceBlockSelect(p).ok());
  const std::vector<int32_t> selected = batch.selected;
  for (bool reuse_logits : {true, false}) {
    SCOPED_TRACE(reuse_logits ? "from the kept logits" : "from the summaries");
    std::vector<int32_t> zone(n * zone_k, kPoisonInt), count(n, kPoisonInt);
    BlockSelectParams z = p;
    z.zone_selected = zone.data();
    z.zone_count = count.data();
    z.logits = reuse_logits ? logits.data() : nullptr;
    batch.selected.assign(batch.selected.size(), kPoisonInt);
    z.selected = batch.selected.data();
    ASSERT_TRUE(ReferenceBlockSelectZone(z).ok());
    EXPECT_EQ(zone, want_zone);
    EXPECT_EQ(count, want_count);
    EXPECT_EQ(batch.selected, std::vector<int32_t>(selected.size(), kPoisonInt));
  }
  p.zone_k = 0;
  const absl::Status status = ReferenceBlockSelectZone(p);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasMessage(status, "zone_k is 0")) << status;
}

// Per item: the retrieval's and the zone's score rows (centroids), the G heads' segment maxima
// and sums, then G x parts logit rows unless the caller keeps the logits.
TEST(SplitSelectTest, WorkspaceHoldsScoresSegmentsThenLogits) {
  BlockSelectParams p;
  p.kind = BlockScoreKind::kCentroid;
  p.group_size = 4;
  p.num_items = 3;
  p.max_blocks = 100;
  p.centroid_parts = 1;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 7424u);  // 3 x (2 x 100 + 2 x 4 + 4 x 100) floats, to 256
  p.centroid_parts = 2;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 12288u);  // 3 x (200 + 8 + 4 x 2 x 100) floats
  p.zone_k = 8;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 12288u);  // the zone's row is there either way
  float logits = 0.0f;
  p.logits = &logits;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 2560u);  // 3 x (200 + 8) floats
  p.max_blocks = 300;                              // three segments of 128 candidates
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 7680u);  // 3 x (600 + 2 x 4 x 3) floats
  p.max_blocks = 100;
  p.kind = BlockScoreKind::kPageBounds;
  p.centroid_parts = 1;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 1280u);  // one row of scores
  p.kind = BlockScoreKind::kCentroid;
  p.centroid_parts = 0;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 0u);
  p.centroid_parts = 3;
  EXPECT_EQ(BlockSelectWorkspaceBytes(p), 0u);
}

// ---- Estimation -----------------------------------------------------------------------------

// Random two-part clusters and their lists (testing/estimation_lists.h), in both addressing
// modes, with an ascending exclusion list per item (mostly listed ids, some not listed, some
// beyond the item's clusters). Part counts in [-2, 50]: some 0 or negative, and in every item
// of two clusters or more part 0 empty with part 1 not, and the reverse, both listed.
std::vector<EstimationItemSpec> RandomClusterItems(std::mt19937& rng) {
  // No list, one id, a short list, an item of one cluster, a long list; random ones.
  std::vector<EstimationItemSpec> items = {
      {10, 0, 2}, {5, 1, 0}, {3, 6, 3}, {1, 3, 1}, {300, 900, 40}};
  for (int i = 0; i < 5; ++i) {
    const int clusters = 2 + static_cast<int>(rng() % 60);
    items.push_back({clusters, static_cast<int>(rng() % 80), static_cast<int>(rng() % 12)});
  }
  for (EstimationItemSpec& item : items) item.one_sided_parts = true;
  return items;
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t x = 0; x < got.size(); ++x) {
    if (std::isinf(want[x])) {
      ASSERT_EQ(got[x], want[x]) << what << " " << x;
    } else {
      ASSERT_NEAR(got[x], want[x], tol * (1.0 + std::abs(want[x]))) << what << " " << x;
    }
  }
}

TEST(SplitEstimationTest, EqualsPlainSumsOverTheParts) {
  std::mt19937 rng(900);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4}) {
        const EstimationLists batch(dtype, dim, group, 2, RandomClusterItems(rng), rng());
        for (ListAddressing addressing : {ListAddressing::kOffsets, ListAddressing::kStride}) {
          for (bool with_exclusion : {false, true}) {
            const std::string what = std::string(DTypeName(dtype)) + " D " + std::to_string(dim) +
                                     " G " + std::to_string(group) +
                                     ListAddressingName(addressing) +
                                     (with_exclusion ? " exclusion" : "");
            std::vector<float> want, want_lse;
            batch.Plain(&want, &want_lse, with_exclusion);
            std::vector<float> out(batch.rows() * dim, kPoisonFloat);
            std::vector<float> lse(batch.rows(), kPoisonFloat);
            const absl::Status status = ReferenceEstimation(
                batch.Params(out.data(), lse.data(), addressing, with_exclusion));
            ASSERT_TRUE(status.ok()) << what << ": " << status;
            // Both in double, rounded to float once.
            ASSERT_NO_FATAL_FAILURE(ExpectClose(out, want, 1e-6, what + " out"));
            ASSERT_NO_FATAL_FAILURE(ExpectClose(lse, want_lse, 1e-6, what + " lse"));
            // Item 0 lists nothing: 0 and -inf; item 4 lists hundreds of parts.
            EXPECT_EQ(lse[0], -kInf) << what;
            EXPECT_TRUE(std::isfinite(lse[4 * group])) << what;
          }
        }
      }
    }
  }
}

// A two-part call is the one-part call over the expanded list: cluster c part p is cluster
// 2c + p of the same arrays read as [2 * clusters, D]. The twin folds the same centroids in
// the same order either way, so the results are identical.
TEST(SplitEstimationTest, EqualsOnePartCallOverTheExpandedList) {
  std::mt19937 rng(901);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int group : {1, 4}) {
      const EstimationLists batch(dtype, 128, group, 2, RandomClusterItems(rng), rng());
      for (ListAddressing addressing : {ListAddressing::kOffsets, ListAddressing::kStride}) {
        SCOPED_TRACE(testing::Message()
                     << DTypeName(dtype) << " G " << group << ListAddressingName(addressing));
        std::vector<float> out(batch.rows() * 128, kPoisonFloat), lse(batch.rows(), kPoisonFloat);
        ASSERT_TRUE(
            ReferenceEstimation(batch.Params(out.data(), lse.data(), addressing, true)).ok());
        std::vector<int32_t> offsets = {0}, expanded;
        for (int i = 0; i < batch.num_items(); ++i) {
          for (int32_t c : batch.Kept(i, true)) {
            expanded.push_back(2 * c);
            expanded.push_back(2 * c + 1);
          }
          offsets.push_back(static_cast<int32_t>(expanded.size()));
        }
        std::vector<float> one_out(out.size(), kPoisonFloat), one_lse(lse.size(), kPoisonFloat);
        EstimationParams one =
            batch.Params(one_out.data(), one_lse.data(), ListAddressing::kOffsets, false);
        one.centroid_parts = 1;
        one.cluster_offsets = offsets.data();
        one.cluster_ids = expanded.data();
        ASSERT_TRUE(ReferenceEstimation(one).ok());
        for (size_t x = 0; x < out.size(); ++x) {
          ASSERT_FALSE(std::isnan(out[x])) << x;
          ASSERT_EQ(out[x], one_out[x]) << x;
        }
        for (size_t r = 0; r < lse.size(); ++r) {
          ASSERT_FALSE(std::isnan(lse[r])) << r;
          ASSERT_EQ(lse[r], one_lse[r]) << r;
        }
      }
    }
  }
}

// ---- Bad parameters --------------------------------------------------------------------------

TEST(SplitCentroidParamsTest, BlockSelectRejectsBadParts) {
  SplitSelectBatch batch(DType::kBF16, 64, 2, {{10, 0, 10}}, 1003);
  for (int parts : {0, 3}) {
    BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 4);
    p.centroid_parts = parts;
    const absl::Status status = ReferenceBlockSelect(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << parts;
    EXPECT_TRUE(HasMessage(status, "centroid_parts")) << status;
    EXPECT_EQ(batch.num_selected[0], kPoisonInt) << "written despite the error";
    EXPECT_EQ(batch.selected[0], kPoisonInt) << "written despite the error";
    float score = kPoisonFloat;
    EXPECT_EQ(ReferenceBlockScores(p, 0, &score).code(), absl::StatusCode::kInvalidArgument);
  }
  // Page bounds have no parts.
  std::vector<const void*> bounds = {batch.key_mean[0].data()};
  BlockSelectParams p = batch.Params(BlockSelectMode::kTopK, 4);
  p.kind = BlockScoreKind::kPageBounds;
  p.bounds = bounds.data();
  const absl::Status status = ReferenceBlockSelect(p);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(HasMessage(status, "centroid_parts")) << status;
  EXPECT_EQ(batch.num_selected[0], kPoisonInt) << "written despite the error";
  p.centroid_parts = 1;
  EXPECT_TRUE(ReferenceBlockSelect(p).ok());
}

TEST(SplitCentroidParamsTest, EstimationRejectsBadParts) {
  std::mt19937 rng(1004);
  const EstimationLists batch(DType::kBF16, 64, 2, 2, RandomClusterItems(rng), 1005);
  for (int parts : {0, 3}) {
    std::vector<float> out(batch.rows() * 64, kPoisonFloat), lse(batch.rows(), kPoisonFloat);
    EstimationParams p = batch.Params(out.data(), lse.data());
    p.centroid_parts = parts;
    const absl::Status status = ReferenceEstimation(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << parts;
    EXPECT_TRUE(HasMessage(status, "centroid_parts")) << status;
    for (float x : out) ASSERT_TRUE(std::isnan(x)) << "written despite the error";
    for (float x : lse) ASSERT_TRUE(std::isnan(x)) << "written despite the error";
  }
}

}  // namespace
}  // namespace kvtier
