// LaunchBlockSelect and LaunchPageSummaries against their host twins on fresh random inputs
// (never zero), outputs poisoned before each launch.
//
// What is checked: the twin and the kernels evaluate every score with the same fp32 operations
// in the same order (block_select.h), so the GPU's selection must equal the twin's exactly:
// the same count and the same ascending block indices, entry for entry, -1 padding included.
// No tolerance is involved; a NaN score ranks first on both sides, so a NaN cannot hide.
// Page summaries are compared bit for bit (NaN-free inputs).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/block_select.h"
#include "kernels/block_summary.h"
#include "tests/testing/block_select_gpu.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr uint8_t kPoisonByte = 0x7E;  // int32 0x7E7E7E7E: no valid index or count

uint16_t ToBits(DType dtype, float x) {
  return dtype == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
}
float FromBits(DType dtype, uint16_t b) {
  return dtype == DType::kBF16 ? BF16ToFloat(b) : FP16ToFloat(b);
}

struct ItemSpec {
  int blocks;
  int begin;
  int end;
};

// Random summaries and queries for a batch (testing/block_select_gpu.h: every item's summaries
// in one pool, and the check of the kernel against the twin).
struct SelectBatch : testing_util::BlockSelectPool {
  SelectBatch(BlockScoreKind kind, DType dtype, int dim, int group, std::vector<ItemSpec> specs,
              uint32_t seed)
      : BlockSelectPool({kind, 1, dtype, dim, group}), items(std::move(specs)) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    auto nonzero = [&](float mean, float sd) {
      for (;;) {
        const uint16_t b = ToBits(dtype, mean + sd * normal(rng));
        if (std::abs(FromBits(dtype, b)) >= 1e-2f) return b;
      }
    };
    q.resize(items.size() * group * dim);
    for (auto& x : q) x = nonzero(0.1f, 1.0f);
    const int rows = kind == BlockScoreKind::kPageBounds ? 2 : 1;
    std::uniform_int_distribution<int> count(0, 40);
    for (const ItemSpec& item : items) {
      max_blocks = std::max(max_blocks, item.blocks);
      summary_offset.push_back(pool.size());
      count_offset.push_back(counts.size());
      for (int b = 0; b < item.blocks; ++b) {
        if (rows == 2) {
          const size_t at = pool.size();
          pool.resize(at + 2 * dim);
          for (int d = 0; d < dim; ++d) {
            const float center = 0.3f * normal(rng);
            float hi = FromBits(dtype, nonzero(center + 0.4f, 0.3f));
            float lo = FromBits(dtype, nonzero(center - 0.4f, 0.3f));
            if (hi < lo) std::swap(hi, lo);
            pool[at + d] = ToBits(dtype, hi);
            pool[at + dim + d] = ToBits(dtype, lo);
          }
        } else {
          for (int d = 0; d < dim; ++d) pool.push_back(nonzero(0.2f, 1.0f));
          const int c = count(rng);
          counts.push_back(c <= 2 ? 0 : c);
        }
      }
      begins.push_back(item.begin);
      ends.push_back(item.end);
    }
  }

  uint16_t* Summary(int item, int block) {
    const int rows = kind == BlockScoreKind::kPageBounds ? 2 : 1;
    return pool.data() + summary_offset[item] + static_cast<size_t>(block) * rows * dim;
  }

  // The kernel against the twin (BlockSelectPool::Check) on a stream of its own.
  using BlockSelectPool::Check;
  void Check(BlockSelectMode mode, int k, float mass_target = 0.0f, int zone_k = 0,
             bool keep_logits = false) const {
    auto stream = CudaStream::Create();
    ASSERT_OK(stream.status());
    Check(mode, k, mass_target, stream->get(), zone_k, keep_logits);
  }

  std::vector<ItemSpec> items;
};

std::vector<ItemSpec> MixedItems() {
  return {{8192, 0, 8192}, {3000, 64, 2900}, {5, 0, 5},     {1, 0, 1},
          {64, 10, 10},    {700, 3, 600},    {129, 0, 129}, {4500, 0, 4500}};
}

class BlockSelectGpuTest : public GpuTest {
 protected:
  BlockSelectGpuTest() : GpuTest("GPU block select tests") {}
};

TEST_F(BlockSelectGpuTest, BoundsTopKEqualsTwin) {
  uint32_t seed = 1;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 16}) {
        SelectBatch batch(BlockScoreKind::kPageBounds, dtype, dim, group, MixedItems(), seed++);
        for (int k : {1, 128, 4096}) batch.Check(BlockSelectMode::kTopK, k);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_F(BlockSelectGpuTest, CentroidTopKAndMassTargetEqualTwin) {
  uint32_t seed = 100;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4}) {
        SelectBatch batch(BlockScoreKind::kCentroid, dtype, dim, group, MixedItems(), seed++);
        batch.Check(BlockSelectMode::kTopK, 1);
        batch.Check(BlockSelectMode::kTopK, 300);
        batch.Check(BlockSelectMode::kMassTarget, 4096, 0.5f);
        batch.Check(BlockSelectMode::kMassTarget, 4096, 0.9f);
        batch.Check(BlockSelectMode::kMassTarget, 4096, 1.0f);
        batch.Check(BlockSelectMode::kMassTarget, 16, 0.99f);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// A zone selected after the retrieval from the same scores (page bounds and one-part
// centroids), and the logits kept as the twin writes them.
TEST_F(BlockSelectGpuTest, ZoneAfterTheSelectionEqualsTwin) {
  SelectBatch bounds(BlockScoreKind::kPageBounds, DType::kBF16, 128, 4, MixedItems(), 200);
  bounds.Check(BlockSelectMode::kTopK, 64, 0.0f, /*zone_k=*/700);
  bounds.Check(BlockSelectMode::kTopK, 4096, 0.0f, /*zone_k=*/4096);
  SelectBatch centroid(BlockScoreKind::kCentroid, DType::kFP16, 64, 4, MixedItems(), 201);
  centroid.Check(BlockSelectMode::kTopK, 64, 0.0f, /*zone_k=*/700, true);
  centroid.Check(BlockSelectMode::kMassTarget, 2048, 0.7f, /*zone_k=*/2048, true);
}

TEST_F(BlockSelectGpuTest, LargestItemsEqualTwin) {
  // 64K blocks, k = 4096, plus an item whose candidates are fewer than k.
  const std::vector<ItemSpec> items = {{65536, 0, 65536}, {65536, 1000, 4000}};
  SelectBatch bounds(BlockScoreKind::kPageBounds, DType::kBF16, 128, 4, items, 7);
  bounds.Check(BlockSelectMode::kTopK, 4096);
  SelectBatch centroid(BlockScoreKind::kCentroid, DType::kBF16, 128, 4, items, 8);
  centroid.Check(BlockSelectMode::kTopK, 4096);
  centroid.Check(BlockSelectMode::kMassTarget, 4096, 0.8f);
}

TEST_F(BlockSelectGpuTest, TiesAndNaNEqualTwin) {
  SelectBatch bounds(BlockScoreKind::kPageBounds, DType::kBF16, 128, 4,
                     {{2000, 0, 2000}, {500, 20, 480}, {300, 0, 300}}, 9);
  // Item 0: runs of identical summaries (exact score ties across distant blocks).
  for (int b = 0; b < 2000; b += 3) {
    std::copy(bounds.Summary(0, 7), bounds.Summary(0, 8), bounds.Summary(0, b));
  }
  // Item 1: all blocks tie. Item 2: NaN summaries rank first.
  for (int b = 0; b < 500; ++b)
    std::copy(bounds.Summary(1, 0), bounds.Summary(1, 1), bounds.Summary(1, b));
  bounds.Summary(2, 17)[3] = 0x7FC0;
  bounds.Summary(2, 200)[128 + 9] = 0x7FC0;
  for (int k : {1, 10, 100, 1000, 4096}) bounds.Check(BlockSelectMode::kTopK, k);

  SelectBatch centroid(BlockScoreKind::kCentroid, DType::kFP16, 64, 2, {{1000, 0, 1000}}, 10);
  for (int b = 0; b < 1000; b += 2) {
    std::copy(centroid.Summary(0, 1), centroid.Summary(0, 2), centroid.Summary(0, b));
    centroid.counts[b] = 5;
  }
  for (int k : {1, 100, 4096}) centroid.Check(BlockSelectMode::kTopK, k);
  centroid.Check(BlockSelectMode::kMassTarget, 4096, 0.6f);
}

TEST_F(BlockSelectGpuTest, RejectsSmallWorkspace) {
  BlockSelectParams p;
  p.head_dim = 128;
  p.group_size = 4;
  p.num_items = 4;
  p.max_blocks = 100;
  p.k = 8;
  int32_t dummy[4] = {};
  const void* ptrs[4] = {};
  p.q = dummy;
  p.block_begin = dummy;
  p.block_end = dummy;
  p.bounds = ptrs;
  p.selected = dummy;
  p.num_selected = dummy;
  p.workspace = dummy;
  p.workspace_bytes = 16;
  auto stream = CudaStream::Create();
  ASSERT_OK(stream.status());
  const absl::Status status = LaunchBlockSelect(p, stream->get());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find("workspace"), std::string::npos) << status;
}

// ---- Page summaries ------------------------------------------------------------------------

TEST_F(BlockSelectGpuTest, PageSummariesEqualTwinBitForBit) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim);
      const int page = 16, n = 37;
      std::mt19937 rng(dim);
      std::normal_distribution<float> normal(0.2f, 1.0f);
      std::vector<uint16_t> k(n * page * dim), v(n * page * dim);
      for (auto& x : k) x = ToBits(dtype, normal(rng));
      for (auto& x : v) x = ToBits(dtype, normal(rng));
      std::vector<int32_t> tokens(n);
      for (int j = 0; j < n; ++j) tokens[j] = j % (page + 1);  // 0 to P, full pages too
      DeviceBuffer d_k = Upload(k), d_v = Upload(v), d_tokens = Upload(tokens);
      auto d_out = DeviceBuffer::Allocate(n * (4 * dim * 2 + 4 + 4));
      ASSERT_OK(d_out.status());
      ASSERT_CUDA_OK(cudaMemset(d_out->data(), kPoisonByte, d_out->size()));
      // Host mirrors of the same layout: bounds | key_mean | value_mean | count | key_spread.
      std::vector<std::byte> h_out(d_out->size(), std::byte{kPoisonByte});
      auto pointers = [&](std::byte* base, std::vector<const void*>& kp,
                          std::vector<const void*>& vp, std::vector<void*>& bp,
                          std::vector<void*>& mp, std::vector<void*>& sp, std::vector<int32_t*>& cp,
                          std::vector<float*>& xp, std::byte* kb, std::byte* vb) {
        for (int j = 0; j < n; ++j) {
          kp.push_back(kb + static_cast<size_t>(j) * page * dim * 2);
          vp.push_back(vb + static_cast<size_t>(j) * page * dim * 2);
          bp.push_back(base + static_cast<size_t>(j) * 2 * dim * 2);
          mp.push_back(base + n * 2 * dim * 2 + static_cast<size_t>(j) * dim * 2);
          sp.push_back(base + n * 3 * dim * 2 + static_cast<size_t>(j) * dim * 2);
          cp.push_back(reinterpret_cast<int32_t*>(base + n * 4 * dim * 2) + j);
          xp.push_back(reinterpret_cast<float*>(base + n * (4 * dim * 2 + 4)) + j);
        }
      };
      std::vector<const void*> hk, hv, dk, dv;
      std::vector<void*> hb, hm, db, dm, hs, ds;
      std::vector<float*> hx, dx;
      std::vector<int32_t*> hc, dc;
      pointers(h_out.data(), hk, hv, hb, hm, hs, hc, hx, reinterpret_cast<std::byte*>(k.data()),
               reinterpret_cast<std::byte*>(v.data()));
      pointers(d_out->data(), dk, dv, db, dm, ds, dc, dx, d_k.data(), d_v.data());
      PageSummaryParams p;
      p.dtype = dtype;
      p.head_dim = dim;
      p.page_size = page;
      p.num_pages = n;
      PageSummaryParams host = p;
      host.k_pages = hk.data();
      host.v_pages = hv.data();
      host.tokens = tokens.data();
      host.bounds = hb.data();
      host.key_mean = hm.data();
      host.value_mean = hs.data();
      host.count = hc.data();
      host.key_spread = hx.data();
      ASSERT_OK(ReferencePageSummaries(host));
      DeviceBuffer a = Upload(dk), b = Upload(dv), c = Upload(db), d = Upload(dm), e = Upload(ds),
                   f = Upload(dc), x = Upload(dx);
      p.k_pages = a.as<const void*>();
      p.v_pages = b.as<const void*>();
      p.tokens = d_tokens.as<int32_t>();
      p.bounds = c.as<void*>();
      p.key_mean = d.as<void*>();
      p.value_mean = e.as<void*>();
      p.count = f.as<int32_t*>();
      p.key_spread = x.as<float*>();
      auto stream = CudaStream::Create();
      ASSERT_OK(stream.status());
      ASSERT_OK(LaunchPageSummaries(p, stream->get()));
      ASSERT_CUDA_OK(cudaStreamSynchronize(stream->get()));
      const std::vector<std::byte> got = Download<std::byte>(*d_out, h_out.size());
      ASSERT_EQ(std::memcmp(got.data(), h_out.data(), got.size()), 0);
    }
  }
}

}  // namespace
}  // namespace kvtier
