// The split centroid (centroid_parts = 2) on the GPU against the host twins, on fresh random
// inputs (never zero), every output poisoned before each launch:
//  - LaunchPageSummaries (the split kernel) bit for bit: the header defines the split's fp32
//    arithmetic operation by operation, so the parts, their mean keys and values, counts and
//    the page bounds must be identical. Pages of 0 to P tokens (full pages too), of random
//    keys, of two groups and of an outlier (so that the split does split), and one page with
//    a NaN key, where a NaN output must be NaN on both sides (its bits may differ: the host
//    keeps a NaN's payload, the GPU makes it canonical).
//  - LaunchBlockSelect with two parts: the same selections as the twin, entry for entry (the
//    scores are bit-identical, block_select.h), over batches of several items of mixed sizes,
//    with empty parts, some of them with keys that would dominate if their logit counted.
//  - LaunchEstimation with two parts against the twin (double precision): out within 1e-3 of
//    max(|want|, 1) (out is a weighted mean of mean values, of order 1 here) and lse
//    within 1e-4; NaN-poisoned outputs, and NaN never passes.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/block_select.h"
#include "kernels/block_summary.h"
#include "kernels/estimation.h"
#include "tests/testing/block_select_gpu.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/estimation_lists_gpu.h"
#include "tests/testing/gpu_test_util.h"
#include "tests/testing/half_bits.h"
#include "tests/testing/poison.h"

namespace kvtier {
namespace {

using testing_util::DeviceEstimationLists;
using testing_util::EstimationItemSpec;
using testing_util::EstimationLists;
using testing_util::IsPoisoned;
using testing_util::ListAddressing;
using testing_util::ListAddressingName;
using testing_util::Poisoned;

constexpr uint16_t kPoisonHalf = 0x7FC1;    // a NaN in bf16 and in fp16
constexpr int32_t kPoisonInt = 0x7E7E7E7E;  // no valid index or count

using testing_util::Bits;
using testing_util::Value;

class SplitCentroidGpuTest : public GpuStreamTest {
 protected:
  SplitCentroidGpuTest() : GpuStreamTest("GPU split centroid tests") {}
};

// ---- Page summaries ------------------------------------------------------------------------

// Twin and kernel outputs agree: the same bits, or (NaN outputs) NaN on both sides where
// neither is the poison left by a missing write.
bool SameHalf(DType dtype, uint16_t got, uint16_t want) {
  if (got == want) return true;
  return got != kPoisonHalf && want != kPoisonHalf && std::isnan(Value(dtype, got)) &&
         std::isnan(Value(dtype, want));
}
bool SameFloat(float got, float want) {
  if (std::bit_cast<uint32_t>(got) == std::bit_cast<uint32_t>(want)) return true;
  return !IsPoisoned(got) && !IsPoisoned(want) && std::isnan(got) && std::isnan(want);
}

// Runs twin and kernel on `num_pages` pages of `page` tokens and expects identical outputs.
// Page j holds j % (page + 1) tokens; pages j % 3 == 1 are two groups of keys, pages j % 3 ==
// 2 one outlier among similar keys, the others random keys; the last page (full) has a NaN
// key element. Each page's outputs are followed by a guard slot, poisoned on both sides.
void CheckSplitSummaries(DType dtype, int dim, int page, bool all_outputs, uint32_t seed,
                         cudaStream_t stream) {
  SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim << " page " << page
                                  << (all_outputs ? " all outputs" : " key_mean and count only")
                                  << " seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  const int n = 2 * (page + 1);
  std::vector<int32_t> tokens(n);
  for (int j = 0; j < n; ++j) tokens[j] = j % (page + 1);
  ASSERT_EQ(tokens[n - 1], page);
  const size_t page_elements = static_cast<size_t>(page) * dim;
  std::vector<uint16_t> k(n * page_elements), v(n * page_elements);
  for (auto& x : k) x = Bits(dtype, 0.2f + normal(rng));
  for (auto& x : v) x = Bits(dtype, normal(rng));
  auto centre = [&](float sd) {
    std::vector<float> c(dim);
    for (float& x : c) x = sd * normal(rng);
    return c;
  };
  auto place = [&](int j, int t, const std::vector<float>& c, float noise) {
    for (int d = 0; d < dim; ++d) {
      k[j * page_elements + static_cast<size_t>(t) * dim + d] =
          Bits(dtype, c[d] + noise * normal(rng));
    }
  };
  for (int j = 0; j < n; ++j) {
    if (tokens[j] < 2) continue;
    if (j % 3 == 1) {  // two groups, members at random
      const std::vector<float> a = centre(1.0f);
      std::vector<float> b = centre(1.5f);
      for (int d = 0; d < dim; ++d) b[d] += a[d];
      for (int t = 0; t < tokens[j]; ++t) place(j, t, rng() % 3 == 0 ? b : a, 0.05f);
    } else if (j % 3 == 2) {  // one outlier
      const std::vector<float> c = centre(1.0f);
      for (int t = 0; t < tokens[j]; ++t) place(j, t, c, 0.05f);
      std::vector<float> far = centre(2.0f);
      for (int d = 0; d < dim; ++d) far[d] += c[d];
      place(j, static_cast<int>(rng() % tokens[j]), far, 0.0f);
    }
  }
  k[(n - 1) * page_elements + static_cast<size_t>(page / 3) * dim + dim / 2 + 1] =
      dtype == DType::kBF16 ? 0x7FC0 : 0x7E00;  // a NaN key element

  // Outputs: per page 3 slots (2 parts, 1 guard) of key_mean, value_mean, count; 3 rows of
  // bounds (max, min, guard).
  const size_t slots = static_cast<size_t>(n) * 3;
  std::vector<uint16_t> bounds(slots * dim, kPoisonHalf), key_mean(slots * dim, kPoisonHalf);
  std::vector<uint16_t> value_mean(slots * dim, kPoisonHalf);
  std::vector<int32_t> count(slots, kPoisonInt);
  std::vector<float> spread(slots, Poisoned<float>());
  DeviceBuffer d_spread = Upload(spread);
  DeviceBuffer d_k = Upload(k), d_v = Upload(v), d_tokens = Upload(tokens);
  DeviceBuffer d_bounds = Upload(bounds), d_key_mean = Upload(key_mean);
  DeviceBuffer d_value_mean = Upload(value_mean), d_count = Upload(count);
  std::vector<const void*> hk, hv, dk, dv;
  std::vector<void*> hb, hm, db, dm, hs, ds;
  std::vector<float*> hv_spread, dv_spread;
  std::vector<int32_t*> hc, dc;
  for (int j = 0; j < n; ++j) {
    const size_t at = static_cast<size_t>(j) * 3;
    hk.push_back(k.data() + j * page_elements);
    hv.push_back(v.data() + j * page_elements);
    hb.push_back(bounds.data() + at * dim);
    hm.push_back(key_mean.data() + at * dim);
    hs.push_back(value_mean.data() + at * dim);
    hc.push_back(count.data() + at);
    hv_spread.push_back(spread.data() + at);
    dv_spread.push_back(d_spread.as<float>() + at);
    dk.push_back(d_k.as<uint16_t>() + j * page_elements);
    dv.push_back(d_v.as<uint16_t>() + j * page_elements);
    db.push_back(d_bounds.as<uint16_t>() + at * dim);
    dm.push_back(d_key_mean.as<uint16_t>() + at * dim);
    ds.push_back(d_value_mean.as<uint16_t>() + at * dim);
    dc.push_back(d_count.as<int32_t>() + at);
  }
  PageSummaryParams p;
  p.dtype = dtype;
  p.head_dim = dim;
  p.page_size = page;
  p.num_pages = n;
  p.centroid_parts = 2;
  PageSummaryParams host = p;
  host.k_pages = hk.data();
  host.v_pages = hv.data();
  host.tokens = tokens.data();
  host.bounds = all_outputs ? hb.data() : nullptr;
  host.key_mean = hm.data();
  host.value_mean = all_outputs ? hs.data() : nullptr;
  host.count = hc.data();
  host.key_spread = all_outputs ? hv_spread.data() : nullptr;
  ASSERT_OK(ReferencePageSummaries(host));
  DeviceBuffer d_kp = Upload(dk), d_vp = Upload(dv), d_bp = Upload(db), d_mp = Upload(dm),
               d_sp = Upload(ds), d_cp = Upload(dc), d_spread_ptr = Upload(dv_spread);
  p.k_pages = d_kp.as<const void*>();
  p.v_pages = d_vp.as<const void*>();
  p.tokens = d_tokens.as<int32_t>();
  p.bounds = all_outputs ? d_bp.as<void*>() : nullptr;
  p.key_mean = d_mp.as<void*>();
  p.value_mean = all_outputs ? d_sp.as<void*>() : nullptr;
  p.count = d_cp.as<int32_t*>();
  p.key_spread = all_outputs ? d_spread_ptr.as<float*>() : nullptr;
  ASSERT_OK(LaunchPageSummaries(p, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<uint16_t> got_bounds = Download<uint16_t>(d_bounds, bounds.size());
  const std::vector<uint16_t> got_key_mean = Download<uint16_t>(d_key_mean, key_mean.size());
  const std::vector<uint16_t> got_value_mean = Download<uint16_t>(d_value_mean, value_mean.size());
  const std::vector<int32_t> got_count = Download<int32_t>(d_count, count.size());
  const std::vector<float> got_spread = Download<float>(d_spread, spread.size());

  int split_pages = 0, nan_means = 0;
  for (int j = 0; j < n; ++j) {
    for (int s = 0; s < 3; ++s) {
      const size_t at = static_cast<size_t>(j) * 3 + s;
      ASSERT_EQ(got_count[at], count[at]) << "page " << j << " slot " << s;
      ASSERT_TRUE(SameFloat(got_spread[at], spread[at]))
          << "key_spread page " << j << " slot " << s << ": " << got_spread[at] << " vs "
          << spread[at];
      for (int d = 0; d < dim; ++d) {
        const size_t x = at * dim + d;
        ASSERT_TRUE(SameHalf(dtype, got_key_mean[x], key_mean[x]))
            << "key_mean page " << j << " slot " << s << " channel " << d << ": " << std::hex
            << got_key_mean[x] << " vs " << key_mean[x];
        ASSERT_TRUE(SameHalf(dtype, got_bounds[x], bounds[x]))
            << "bounds page " << j << " row " << s << " channel " << d << ": " << std::hex
            << got_bounds[x] << " vs " << bounds[x];
        ASSERT_TRUE(SameHalf(dtype, got_value_mean[x], value_mean[x]))
            << "value_mean page " << j << " slot " << s << " channel " << d << ": " << std::hex
            << got_value_mean[x] << " vs " << value_mean[x];
        nan_means += s < 2 && key_mean[x] != kPoisonHalf && std::isnan(Value(dtype, key_mean[x]));
      }
    }
    split_pages += count[static_cast<size_t>(j) * 3 + 1] > 0 ? 1 : 0;
  }
  // The batch exercised the split and the NaN page.
  EXPECT_GE(split_pages, page) << "pages with a non-empty second part";
  EXPECT_GT(nan_means, 0) << "the NaN key made no NaN mean";
}

TEST_F(SplitCentroidGpuTest, SplitSummariesEqualTwinBitForBit) {
  uint32_t seed = 1;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int page : {16, 32, 64}) {
        ASSERT_NO_FATAL_FAILURE(CheckSplitSummaries(dtype, dim, page, true, seed++, stream()));
      }
    }
    ASSERT_NO_FATAL_FAILURE(CheckSplitSummaries(dtype, 128, 64, false, seed++, stream()));
  }
}

TEST_F(SplitCentroidGpuTest, SplitSummariesRejectLargePages) {
  const int32_t tokens[1] = {1};
  const void* pages[1] = {tokens};
  void* outputs[1] = {nullptr};
  PageSummaryParams p;
  p.dtype = DType::kBF16;
  p.head_dim = 128;
  p.page_size = kMaxSplitPageSize + 1;
  p.num_pages = 1;
  p.centroid_parts = 2;
  p.k_pages = pages;
  p.tokens = tokens;
  p.key_mean = outputs;
  // Host pointers the launcher must not read: it fails before launching.
  absl::Status status = LaunchPageSummaries(p, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("page_size"), std::string::npos) << status;
  p.page_size = 16;
  p.centroid_parts = 3;
  status = LaunchPageSummaries(p, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("centroid_parts"), std::string::npos) << status;
}

// ---- Block selection ------------------------------------------------------------------------

struct ItemSpec {
  int blocks;
  int begin;
  int end;
};

// Random two-part summaries and queries for a batch (testing/block_select_gpu.h: every item's
// summaries in one pool, and the check of the kernel against the twin). Counts in [3, 40] with
// empty parts: part 0 of a few blocks, part 1 of about a third.
struct SplitSelectBatch : testing_util::BlockSelectPool {
  SplitSelectBatch(DType dtype, int dim, int group, std::vector<ItemSpec> specs, uint32_t seed)
      : BlockSelectPool({BlockScoreKind::kCentroid, 2, dtype, dim, group}),
        items(std::move(specs)) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    auto nonzero = [&](float mean, float sd) {
      for (;;) {
        const uint16_t b = Bits(dtype, mean + sd * normal(rng));
        if (std::abs(Value(dtype, b)) >= 1e-2f) return b;
      }
    };
    q.resize(items.size() * group * dim);
    for (auto& x : q) x = nonzero(0.1f, 1.0f);
    std::uniform_int_distribution<int> draw(3, 40), empties(0, 29);
    for (const ItemSpec& item : items) {
      max_blocks = std::max(max_blocks, item.blocks);
      summary_offset.push_back(pool.size());
      count_offset.push_back(counts.size());
      for (int b = 0; b < item.blocks; ++b) {
        for (int x = 0; x < 2 * dim; ++x) pool.push_back(nonzero(0.2f, 1.0f));
        const int k = empties(rng);
        counts.push_back(k < 2 ? 0 : draw(rng));
        counts.push_back(k == 0 || k >= 20 ? 0 : draw(rng));
      }
      begins.push_back(item.begin);
      ends.push_back(item.end);
    }
  }

  uint16_t* Key(int item, int block, int part) {
    return pool.data() + summary_offset[item] + (static_cast<size_t>(block) * 2 + part) * dim;
  }
  int32_t& Count(int item, int block, int part) {
    return counts[count_offset[item] + static_cast<size_t>(block) * 2 + part];
  }

  // In item `item`, every `every`-th block gets an empty part (alternately part 0 and part 1)
  // whose key is aligned with head 0's query: a logit of several hundred, which would zero
  // every other weight if it set the maximum.
  void PlantHeavyEmptyParts(int item, int every) {
    int x = 0;
    for (int b = 5; b < items[item].blocks; b += every, ++x) {
      const int part = x % 2;
      Count(item, b, part) = 0;
      Count(item, b, 1 - part) = 4;
      for (int d = 0; d < dim; ++d) {
        const float qd = Value(dtype, q[static_cast<size_t>(item) * group * dim + d]);
        Key(item, b, part)[d] = Bits(dtype, qd >= 0 ? 60.0f : -60.0f);
      }
    }
  }

  std::vector<ItemSpec> items;
};

std::vector<ItemSpec> MixedItems() {
  return {{8192, 0, 8192}, {3000, 64, 2900}, {5, 0, 5},     {1, 0, 1},
          {64, 10, 10},    {700, 3, 600},    {129, 0, 129}, {4500, 0, 4500}};
}

TEST_F(SplitCentroidGpuTest, SplitBlockSelectEqualsTwin) {
  uint32_t seed = 100;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 8}) {
        SplitSelectBatch batch(dtype, dim, group, MixedItems(), seed++);
        batch.PlantHeavyEmptyParts(1, 97);
        batch.PlantHeavyEmptyParts(5, 31);
        batch.Check(BlockSelectMode::kTopK, 1, 0.0f, stream());
        batch.Check(BlockSelectMode::kTopK, 300, 0.0f, stream());
        batch.Check(BlockSelectMode::kTopK, 4096, 0.0f, stream());
        batch.Check(BlockSelectMode::kMassTarget, 4096, 0.5f, stream());
        batch.Check(BlockSelectMode::kMassTarget, 4096, 0.9f, stream());
        batch.Check(BlockSelectMode::kMassTarget, 4096, 1.0f, stream());
        batch.Check(BlockSelectMode::kMassTarget, 16, 0.99f, stream());
        if (HasFatalFailure()) return;
      }
    }
  }
}

// The zone's selection after the retrieval's, from the same scores, in mixed items with heavy
// empty parts; the logits kept for the estimation are the twin's bits.
TEST_F(SplitCentroidGpuTest, SplitBlockSelectZoneAndLogitsEqualTwin) {
  uint32_t seed = 400;
  for (int dim : {64, 128}) {
    for (int group : {1, 4, 8}) {
      SplitSelectBatch batch(DType::kBF16, dim, group, MixedItems(), seed++);
      batch.PlantHeavyEmptyParts(1, 97);
      batch.Check(BlockSelectMode::kTopK, 64, 0.0f, stream(), /*zone_k=*/1000);
      batch.Check(BlockSelectMode::kTopK, 64, 0.0f, stream(), /*zone_k=*/1000, true);
      batch.Check(BlockSelectMode::kTopK, 5, 0.0f, stream(), /*zone_k=*/5, true);
      batch.Check(BlockSelectMode::kMassTarget, 4096, 0.6f, stream(), /*zone_k=*/4096, true);
      batch.Check(BlockSelectMode::kMassTarget, 64, 0.9f, stream(), /*zone_k=*/300);
      if (HasFatalFailure()) return;
    }
  }
  SplitSelectBatch fp16(DType::kFP16, 256, 4, MixedItems(), seed);
  fp16.Check(BlockSelectMode::kTopK, 64, 0.0f, stream(), /*zone_k=*/2048, true);
}

// Many small items: every item's logit rows and score row in the workspace must stay its own
// (a single item would not show an item stride that differs between the two kernels).
TEST_F(SplitCentroidGpuTest, SplitBlockSelectOfManySmallItemsEqualsTwin) {
  std::vector<ItemSpec> items;
  for (int i = 0; i < 40; ++i) items.push_back({1 + (i * 37) % 200, 0, 1 + (i * 37) % 200});
  SplitSelectBatch batch(DType::kBF16, 128, 4, items, 7);
  batch.Check(BlockSelectMode::kTopK, 8, 0.0f, stream());
  batch.Check(BlockSelectMode::kMassTarget, 64, 0.8f, stream());
}

// ---- Estimation -----------------------------------------------------------------------------

// Twin (host arrays) against kernel (device copies) with the lists in `addressing`, with or
// without the exclusion lists.
void CheckEstimation(const EstimationLists& batch, ListAddressing addressing, bool exclusion,
                     cudaStream_t stream) {
  const size_t rows = batch.rows();
  const int dim = batch.dim();
  std::vector<float> want(rows * dim, Poisoned<float>()), want_lse(rows, Poisoned<float>());
  const EstimationParams host = batch.Params(want.data(), want_lse.data(), addressing, exclusion);
  SCOPED_TRACE(testing::Message() << DTypeName(host.dtype) << " D " << dim << " G "
                                  << host.group_size << ListAddressingName(addressing)
                                  << (exclusion ? " exclusion" : ""));
  ASSERT_OK(ReferenceEstimation(host));

  const DeviceEstimationLists device(batch);
  DeviceBuffer d_out = Upload(std::vector<float>(rows * dim, Poisoned<float>()));
  DeviceBuffer d_lse = Upload(std::vector<float>(rows, Poisoned<float>()));
  ASSERT_OK(LaunchEstimation(
      device.Params(d_out.as<float>(), d_lse.as<float>(), addressing, exclusion), stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<float> got = Download<float>(d_out, rows * dim);
  const std::vector<float> got_lse = Download<float>(d_lse, rows);
  int empty_rows = 0;
  for (size_t r = 0; r < rows; ++r) {
    if (std::isinf(want_lse[r])) {
      ASSERT_EQ(got_lse[r], want_lse[r]) << "row " << r;
      ++empty_rows;
    } else {
      ASSERT_NEAR(got_lse[r], want_lse[r], 1e-4) << "row " << r;
    }
    for (int d = 0; d < dim; ++d) {
      const float w = want[r * dim + d];
      ASSERT_NEAR(got[r * dim + d], w, 1e-3 * std::max(1.0f, std::abs(w)))
          << "row " << r << " d " << d;
    }
  }
  EXPECT_LT(empty_rows, static_cast<int>(rows)) << "no row had contributing parts";
}

TEST_F(SplitCentroidGpuTest, SplitEstimationEqualsTwin) {
  std::mt19937 rng(300);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 3, 4, 8}) {  // 3: a partial group of heads in one thread block
        // No list, one id, a few, thousands (every warp folds many), random ones.
        std::vector<EstimationItemSpec> items = {{10, 0, 2}, {5, 1, 0},         {7, 5, 2},
                                                 {1, 3, 1},  {2000, 5000, 100}, {300, 300, 20}};
        for (int i = 0; i < 4; ++i) {
          items.push_back({1 + static_cast<int>(rng() % 200), static_cast<int>(rng() % 400),
                           static_cast<int>(rng() % 30)});
        }
        const EstimationLists batch(dtype, dim, group, 2, items, rng());
        for (ListAddressing addressing : {ListAddressing::kOffsets, ListAddressing::kStride}) {
          for (bool exclusion : {false, true}) {
            ASSERT_NO_FATAL_FAILURE(CheckEstimation(batch, addressing, exclusion, stream()));
          }
        }
      }
    }
  }
}

TEST_F(SplitCentroidGpuTest, SplitEstimationRejectsBadParts) {
  const EstimationLists batch(DType::kBF16, 64, 2, 2, {{4, 3, 1}}, 5);
  std::vector<float> out(batch.rows() * 64), lse(batch.rows());
  // Host pointers the launcher must not read: it fails before launching.
  EstimationParams p = batch.Params(out.data(), lse.data(), ListAddressing::kOffsets, false);
  p.centroid_parts = 3;
  const absl::Status status = LaunchEstimation(p, stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("centroid_parts"), std::string::npos) << status;
}

}  // namespace
}  // namespace kvtier
