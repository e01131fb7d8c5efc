// LaunchEstimation against its host twin (double precision) on fresh random inputs: cluster
// mean keys and queries never near zero, mean values and counts random (some counts 0), ids in
// random order with repeats; out and lse poisoned with NaN before the launch, and NaN never
// passes a comparison (ASSERT_NEAR fails on NaN).
//
// Error bound. The kernel works in fp32: logits are dot products of D terms (relative error
// ~D * 2^-24 of |q||c|, times scale), exponentials and the online-softmax rescaling add a few
// ulps each, and the sums run over up to 5,000 clusters. Outputs are weighted means of mean
// values of magnitude ~1: |got - want| <= 1e-4 * max(|want|, 1) for out, and
// 1e-4 * max(|lse|, 1) for lse, leaves an order of magnitude of margin over what fp32 gives.
//
// The fixed-stride list and exclusion modes (testing/estimation_lists.h) the same way, with
// one and two centroids a cluster, list lengths from 0 to the stride, and the kernel's
// clamping of list and exclusion counts outside [0, stride].
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/estimation.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/estimation_lists_gpu.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr double kTolerance = 1e-4;

class EstimationGpuTest : public GpuTest {
 protected:
  EstimationGpuTest() : GpuTest("GPU estimation tests") {}
};

// A row's lse against the twin's: -inf (nothing estimated) exactly, else within the bound.
void ExpectLse(float got, float want, size_t row) {
  if (std::isinf(want)) {
    ASSERT_EQ(got, want) << "row " << row;
  } else {
    ASSERT_NEAR(got, want, kTolerance * std::max(1.0f, std::abs(want))) << "row " << row;
  }
}

// Launches `p` (device arrays; out and lse are overwritten) twice: without a workspace (one
// block an item) and with one (lists cut into runs, merged by log-sum-exp), outputs poisoned
// with NaN before each; both must equal the twin's `want` / `want_lse`. `worst` (optional)
// gets the largest relative out error seen.
void ExpectLaunchesEqualTwin(EstimationParams p, const std::vector<float>& want,
                             const std::vector<float>& want_lse, cudaStream_t stream,
                             double* worst = nullptr) {
  const size_t rows = want_lse.size();
  const int dim = p.head_dim;
  auto workspace = DeviceBuffer::Allocate(EstimationWorkspaceBytes(p.num_items, p.group_size, dim));
  ASSERT_OK(workspace.status());
  for (const bool runs : {false, true}) {
    SCOPED_TRACE(runs ? "lists cut into runs" : "one block an item");
    const std::vector<float> poison(rows * dim, std::numeric_limits<float>::quiet_NaN());
    ASSERT_CUDA_OK(cudaMemcpy(p.out, poison.data(), rows * dim * 4, cudaMemcpyHostToDevice));
    ASSERT_CUDA_OK(cudaMemcpy(p.lse, poison.data(), rows * 4, cudaMemcpyHostToDevice));
    p.workspace = runs ? workspace->data() : nullptr;
    p.workspace_bytes = runs ? workspace->size() : 0;
    ASSERT_OK(LaunchEstimation(p, stream));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
    std::vector<float> got(rows * dim), got_lse(rows);
    ASSERT_CUDA_OK(cudaMemcpy(got.data(), p.out, got.size() * 4, cudaMemcpyDeviceToHost));
    ASSERT_CUDA_OK(cudaMemcpy(got_lse.data(), p.lse, rows * 4, cudaMemcpyDeviceToHost));
    for (size_t r = 0; r < rows; ++r) {
      ASSERT_NO_FATAL_FAILURE(ExpectLse(got_lse[r], want_lse[r], r));
      for (int d = 0; d < dim; ++d) {
        const float w = want[r * dim + d];
        const float g = got[r * dim + d];
        ASSERT_NEAR(g, w, kTolerance * std::max(1.0f, std::abs(w))) << "row " << r << " d " << d;
        if (worst != nullptr) {
          *worst = std::max<double>(*worst, std::abs(g - w) / std::max(1.0f, std::abs(w)));
        }
      }
    }
  }
}

// Items with `clusters[i]` summaries each, and `listed[i]` cluster ids drawn from them.
void CheckRandomBatch(DType dtype, int dim, int group, const std::vector<int>& clusters,
                      const std::vector<int>& listed, uint32_t seed) {
  SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " D " << dim << " G " << group << " seed "
                                  << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  auto nonzero = [&](float mean) {
    for (;;) {
      const float x = mean + normal(rng);
      const uint16_t b = dtype == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x);
      const float y = dtype == DType::kBF16 ? BF16ToFloat(b) : FP16ToFloat(b);
      if (std::abs(y) >= 1e-2f) return b;
    }
  };
  const int n = static_cast<int>(clusters.size());
  std::vector<uint16_t> q(static_cast<size_t>(n) * group * dim), keys;
  for (auto& x : q) x = nonzero(0.1f);
  std::vector<uint16_t> means;
  std::vector<int32_t> counts, offsets = {0}, ids;
  std::vector<size_t> key_at, mean_at, count_at;
  std::uniform_int_distribution<int> count(-2, 50);
  for (int i = 0; i < n; ++i) {
    key_at.push_back(keys.size());
    mean_at.push_back(means.size());
    count_at.push_back(counts.size());
    for (int c = 0; c < clusters[i]; ++c) {
      const int m = std::max(0, count(rng));
      counts.push_back(m);
      for (int d = 0; d < dim; ++d) {
        keys.push_back(nonzero(0.2f));
        means.push_back(nonzero(0.5f));
      }
    }
    std::uniform_int_distribution<int> pick(0, std::max(0, clusters[i] - 1));
    for (int j = 0; j < listed[i]; ++j) ids.push_back(pick(rng));
    offsets.push_back(static_cast<int32_t>(ids.size()));
  }

  EstimationParams p;
  p.dtype = dtype;
  p.head_dim = dim;
  p.group_size = group;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
  p.num_items = n;
  const size_t rows = static_cast<size_t>(n) * group;

  std::vector<const void*> hk, hs;
  std::vector<const int32_t*> hc;
  for (int i = 0; i < n; ++i) {
    hk.push_back(keys.data() + key_at[i]);
    hs.push_back(means.data() + mean_at[i]);
    hc.push_back(counts.data() + count_at[i]);
  }
  std::vector<float> want(rows * dim), want_lse(rows);
  EstimationParams host = p;
  host.q = q.data();
  host.cluster_offsets = offsets.data();
  host.cluster_ids = ids.data();
  host.key_mean = hk.data();
  host.value_mean = hs.data();
  host.count = hc.data();
  host.out = want.data();
  host.lse = want_lse.data();
  ASSERT_OK(ReferenceEstimation(host));

  DeviceBuffer d_q = Upload(q), d_keys = Upload(keys), d_means = Upload(means),
               d_counts = Upload(counts), d_offsets = Upload(offsets), d_ids = Upload(ids);
  std::vector<const void*> dk, ds;
  std::vector<const int32_t*> dc;
  for (int i = 0; i < n; ++i) {
    dk.push_back(d_keys.as<uint16_t>() + key_at[i]);
    ds.push_back(d_means.as<uint16_t>() + mean_at[i]);
    dc.push_back(d_counts.as<int32_t>() + count_at[i]);
  }
  DeviceBuffer d_kp = Upload(dk), d_sp = Upload(ds), d_cp = Upload(dc);
  DeviceBuffer d_out = Upload(std::vector<float>(rows * dim));
  DeviceBuffer d_lse = Upload(std::vector<float>(rows));
  p.q = d_q.data();
  p.cluster_offsets = d_offsets.as<int32_t>();
  p.cluster_ids = d_ids.as<int32_t>();
  p.key_mean = d_kp.as<const void*>();
  p.value_mean = d_sp.as<const void*>();
  p.count = d_cp.as<const int32_t*>();
  p.out = d_out.as<float>();
  p.lse = d_lse.as<float>();
  auto stream = CudaStream::Create();
  ASSERT_OK(stream.status());
  double worst = 0.0;
  ExpectLaunchesEqualTwin(p, want, want_lse, stream->get(), &worst);
  if (::testing::Test::HasFatalFailure()) return;
  std::cout << "  [estimation " << DTypeName(dtype) << " D " << dim << " G " << group
            << "] largest relative out error " << worst << "\n";
}

TEST_F(EstimationGpuTest, EqualsTwin) {
  uint32_t seed = 1;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 8}) {
        // An item without clusters, one cluster, a few, thousands (with repeats).
        CheckRandomBatch(dtype, dim, group, {10, 1, 7, 2000, 300}, {0, 1, 5, 5000, 300}, seed++);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// ---- Fixed-stride lists and exclusion ---------------------------------------------------

using testing_util::DeviceEstimationLists;
using testing_util::EstimationItemSpec;
using testing_util::EstimationLists;
using testing_util::ListAddressing;
using testing_util::ListAddressingName;

// Launches on `batch`'s device copy (outputs poisoned) with `device_counts` / `device_exclude`
// as the list and exclusion counts (the batch's own when empty), and compares with the twin
// run on the batch's host arrays as they are.
void CheckLists(EstimationLists& batch, const std::string& what, cudaStream_t stream,
                const std::vector<int32_t>& device_counts = {},
                const std::vector<int32_t>& device_exclude = {},
                ListAddressing addressing = ListAddressing::kStride) {
  SCOPED_TRACE(what + ListAddressingName(addressing));
  const size_t rows = batch.rows();
  const int dim = batch.dim();
  std::vector<float> want(rows * dim), want_lse(rows);
  const EstimationParams host = batch.Params(want.data(), want_lse.data(), addressing);
  ASSERT_OK(ReferenceEstimation(host));

  const DeviceEstimationLists device(batch, device_counts, device_exclude);
  DeviceBuffer d_out = Upload(std::vector<float>(rows * dim));
  DeviceBuffer d_lse = Upload(std::vector<float>(rows));
  ExpectLaunchesEqualTwin(device.Params(d_out.as<float>(), d_lse.as<float>(), addressing), want,
                          want_lse, stream);
}

class EstimationListsGpuTest : public GpuStreamTest {
 protected:
  EstimationListsGpuTest() : GpuStreamTest("GPU estimation list tests") {}
};

// Items of random sizes: no list, one id, the whole stride, random lengths; and an item with
// thousands of ids (every warp folds many).
std::vector<EstimationItemSpec> RandomItems(int stride, int exclude_stride, std::mt19937_64& rng) {
  std::vector<EstimationItemSpec> out;
  for (int i = 0; i < 9; ++i) {
    EstimationItemSpec s;
    s.clusters = 1 + static_cast<int>(rng() % 300);
    const uint64_t kind = i < 4 ? i : rng() % 4 + 4;
    s.count = kind == 0 ? 0 : kind == 1 ? 1 : kind == 2 ? stride : static_cast<int>(rng() % stride);
    s.excluded = exclude_stride > 0 ? static_cast<int>(rng() % (exclude_stride + 1)) : 0;
    out.push_back(s);
  }
  return out;
}

TEST_F(EstimationListsGpuTest, FixedStrideListsEqualTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 3, 4, 8}) {
        for (int parts : {1, 2}) {
          const int stride = rng() % 2 == 0 ? 1 + static_cast<int>(rng() % 64) : 2500;
          EstimationLists batch(dtype, dim, group, parts, stride, 0, RandomItems(stride, 0, rng),
                                rng());
          ASSERT_NO_FATAL_FAILURE(
              CheckLists(batch,
                         absl::StrCat(DTypeName(dtype), " D ", dim, " G ", group, " parts ", parts,
                                      " stride ", stride, " seed ", seed),
                         stream()));
        }
      }
    }
  }
}

// The spread correction (key_spread) on top of lists, parts and exclusion.
TEST_F(EstimationListsGpuTest, SpreadCorrectionEqualsTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 6}) {
        const int parts = 1 + static_cast<int>(rng() % 2);
        const int stride = 1 + static_cast<int>(rng() % 400);
        const int exclude_stride = 1 + static_cast<int>(rng() % std::min(stride, 50));
        EstimationLists batch(dtype, dim, group, parts, stride, exclude_stride,
                              RandomItems(stride, exclude_stride, rng), rng());
        batch.AddSpread(rng());
        const bool shift = rng() % 2 == 0;
        if (shift) batch.AddValueShift(rng());
        ASSERT_NO_FATAL_FAILURE(CheckLists(
            batch,
            absl::StrCat(DTypeName(dtype), " D ", dim, " G ", group, " parts ", parts, " stride ",
                         stride, " spread", shift ? " value shift" : "", ", seed ", seed),
            stream()));
      }
    }
  }
}

// Precomputed logits in place of the mean keys (left null on both sides), with parts,
// exclusion and the spread term.
TEST_F(EstimationListsGpuTest, PrecomputedLogitsEqualTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 6}) {
        const int parts = 1 + static_cast<int>(rng() % 2);
        const int stride = rng() % 2 == 0 ? 1 + static_cast<int>(rng() % 400) : 2500;
        const int exclude_stride = 1 + static_cast<int>(rng() % std::min(stride, 50));
        EstimationLists batch(dtype, dim, group, parts, stride, exclude_stride,
                              RandomItems(stride, exclude_stride, rng), rng());
        batch.AddLogits(rng());
        if (rng() % 2 == 0) {
          batch.AddSpread(rng());
          if (rng() % 2 == 0) batch.AddValueShift(rng());
        }
        for (ListAddressing addressing : {ListAddressing::kStride, ListAddressing::kOffsets}) {
          ASSERT_NO_FATAL_FAILURE(
              CheckLists(batch,
                         absl::StrCat(DTypeName(dtype), " D ", dim, " G ", group, " parts ", parts,
                                      " stride ", stride, " logits, seed ", seed),
                         stream(), {}, {}, addressing));
        }
      }
    }
  }
}

// A NaN in a mean value reaches the output channel it touches, in every head row of its
// item that estimates anything, on both sides; nothing else changes.
TEST_F(EstimationListsGpuTest, NanMeanValuePropagatesToItsChannel) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  for (bool logits : {true, false}) {
    SCOPED_TRACE(absl::StrCat(logits ? "logits" : "mean keys", ", seed ", seed));
    const int dim = 128, group = 4, parts = 2, stride = 600, channel = 5;
    std::vector<EstimationItemSpec> items = RandomItems(stride, 40, rng);
    items[0].clusters = 300;
    items[0].count = stride;
    items[0].excluded = 10;
    EstimationLists batch(DType::kBF16, dim, group, parts, stride, 40, items, rng());
    if (logits) batch.AddLogits(rng());
    for (int c = 0; c < items[0].clusters * parts; ++c) {
      batch.mutable_means()[batch.mean_at()[0] + static_cast<size_t>(c) * dim + channel] = 0x7FC1;
    }
    const size_t rows = batch.rows();
    std::vector<float> want(rows * dim), want_lse(rows);
    ASSERT_OK(ReferenceEstimation(batch.Params(want.data(), want_lse.data())));
    const DeviceEstimationLists device(batch);
    DeviceBuffer d_out = Upload(std::vector<float>(rows * dim));
    DeviceBuffer d_lse = Upload(std::vector<float>(rows));
    ASSERT_OK(LaunchEstimation(device.Params(d_out.as<float>(), d_lse.as<float>()), stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    const std::vector<float> got = Download<float>(d_out, rows * dim);
    const std::vector<float> got_lse = Download<float>(d_lse, rows);
    for (size_t r = 0; r < rows; ++r) {
      const bool planted = r < static_cast<size_t>(group) && std::isfinite(want_lse[r]);
      if (r < static_cast<size_t>(group)) {
        ASSERT_TRUE(planted) << "item 0 estimates nothing";
      }
      ASSERT_NO_FATAL_FAILURE(ExpectLse(got_lse[r], want_lse[r], r));
      for (int d = 0; d < dim; ++d) {
        const float w = want[r * dim + d], g = got[r * dim + d];
        if (planted && d == channel) {
          ASSERT_TRUE(std::isnan(w)) << "twin, row " << r;
          ASSERT_TRUE(std::isnan(g)) << "kernel, row " << r;
        } else {
          ASSERT_NEAR(g, w, kTolerance * std::max(1.0f, std::abs(w))) << "row " << r << " d " << d;
        }
      }
    }
  }
}

TEST_F(EstimationListsGpuTest, ExclusionEqualsTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 8}) {
        for (int parts : {1, 2}) {
          const int stride = rng() % 2 == 0 ? 1 + static_cast<int>(rng() % 64) : 2500;
          const int exclude_stride = 1 + static_cast<int>(rng() % std::min(stride, 200));
          EstimationLists batch(dtype, dim, group, parts, stride, exclude_stride,
                                RandomItems(stride, exclude_stride, rng), rng());
          ASSERT_NO_FATAL_FAILURE(CheckLists(
              batch,
              absl::StrCat(DTypeName(dtype), " D ", dim, " G ", group, " parts ", parts, " stride ",
                           stride, " exclude_stride ", exclude_stride, " seed ", seed),
              stream()));
        }
      }
    }
  }
}

// estimation.h: list_count and exclude_count outside [0, stride] are clamped by the kernel:
// the launch with out-of-range counts equals the twin with the clamped ones.
TEST_F(EstimationListsGpuTest, ClampsCountsOutsideTheStride) {
  const std::vector<EstimationItemSpec> items = {{50, 40, 6}, {30, 0, 0}, {70, 40, 6}, {9, 40, 3}};
  EstimationLists batch(DType::kBF16, 128, 4, 1, 40, 6, items, 31);
  // Device: item 0 lists 40 + 7, item 1 -5 ids; item 2 excludes 6 + 9, item 3 -1.
  std::vector<int32_t> counts = batch.list_count(), exclude = batch.exclude_count();
  ASSERT_EQ(counts[0], 40);
  counts[0] = 47;
  counts[1] = -5;
  exclude[2] = 15;
  exclude[3] = -1;
  batch.exclude_count()[3] = 0;  // the twin's (valid) equivalents
  ASSERT_NO_FATAL_FAILURE(CheckLists(batch, "clamped counts", stream(), counts, exclude));
}

// The launcher's checks of list and exclusion fields: InvalidArgument, nothing written.
TEST_F(EstimationListsGpuTest, RejectsBadListFields) {
  const std::vector<EstimationItemSpec> items = {{10, 5, 2}, {10, 5, 2}};
  EstimationLists batch(DType::kFP16, 64, 2, 1, 8, 4, items, 3);
  DeviceBuffer d_out =
      Upload(std::vector<float>(batch.rows() * 64, std::numeric_limits<float>::quiet_NaN()));
  DeviceBuffer d_lse =
      Upload(std::vector<float>(batch.rows(), std::numeric_limits<float>::quiet_NaN()));
  // Host pointers that the launcher must not read: it fails before launching.
  const EstimationParams good = batch.Params(d_out.as<float>(), d_lse.as<float>());
  auto expect = [&](const EstimationParams& p, const char* field) {
    const absl::Status status = LaunchEstimation(p, stream());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field << ": " << status;
    EXPECT_NE(std::string(status.message()).find(field), std::string::npos) << status;
  };
  EstimationParams p = good;
  p.list_stride = 0;
  expect(p, "list_stride");
  p = good;
  p.list_count = nullptr;
  expect(p, "cluster_offsets is null");
  p = good;
  p.exclude_count = nullptr;
  expect(p, "exclude_count is null");
  p = good;
  p.exclude_stride = -1;
  expect(p, "exclude_stride");
  p = good;
  p.centroid_parts = 0;
  expect(p, "centroid_parts");
  p = good;
  p.workspace = d_out.data();
  p.workspace_bytes = EstimationWorkspaceBytes(p.num_items, p.group_size, p.head_dim) - 1;
  expect(p, "workspace has");
  p.workspace_bytes += 1;
  p.workspace = d_out.data() + 4;
  expect(p, "16-byte aligned");
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  for (float x : Download<float>(d_out, batch.rows() * 64)) ASSERT_TRUE(std::isnan(x));
  for (float x : Download<float>(d_lse, batch.rows())) ASSERT_TRUE(std::isnan(x));
}

}  // namespace
}  // namespace kvtier
