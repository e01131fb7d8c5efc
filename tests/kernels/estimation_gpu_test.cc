// LaunchEstimation against its host twin (double precision) on fresh random inputs: cluster
// mean keys and queries never near zero, value sums and counts random (some counts 0), ids in
// random order with repeats; out and lse poisoned with NaN before the launch, and NaN never
// passes a comparison (ASSERT_NEAR fails on NaN).
//
// Error bound. The kernel works in fp32: logits are dot products of D terms (relative error
// ~D * 2^-24 of |q||c|, times scale), exponentials and the online-softmax rescaling add a few
// ulps each, and the sums run over up to 5,000 clusters. Outputs are weighted means of value
// sums of magnitude ~n (<= 50 here): |got - want| <= 1e-4 * max(|want|, 1) for out, and
// 1e-4 * max(|lse|, 1) for lse, leaves an order of magnitude of margin over what fp32 gives.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/estimation.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr double kTolerance = 1e-4;

class EstimationGpuTest : public GpuTest {
 protected:
  EstimationGpuTest() : GpuTest("GPU estimation tests") {}
};

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
  std::vector<float> sums;
  std::vector<int32_t> counts, offsets = {0}, ids;
  std::vector<size_t> key_at, sum_at, count_at;
  std::uniform_int_distribution<int> count(-2, 50);
  for (int i = 0; i < n; ++i) {
    key_at.push_back(keys.size());
    sum_at.push_back(sums.size());
    count_at.push_back(counts.size());
    for (int c = 0; c < clusters[i]; ++c) {
      const int m = std::max(0, count(rng));
      counts.push_back(m);
      for (int d = 0; d < dim; ++d) {
        keys.push_back(nonzero(0.2f));
        sums.push_back(m * (0.5f + normal(rng)));
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

  std::vector<const void*> hk;
  std::vector<const float*> hs;
  std::vector<const int32_t*> hc;
  for (int i = 0; i < n; ++i) {
    hk.push_back(keys.data() + key_at[i]);
    hs.push_back(sums.data() + sum_at[i]);
    hc.push_back(counts.data() + count_at[i]);
  }
  std::vector<float> want(rows * dim), want_lse(rows);
  EstimationParams host = p;
  host.q = q.data();
  host.cluster_offsets = offsets.data();
  host.cluster_ids = ids.data();
  host.key_mean = hk.data();
  host.value_sum = hs.data();
  host.count = hc.data();
  host.out = want.data();
  host.lse = want_lse.data();
  ASSERT_OK(ReferenceEstimation(host));

  DeviceBuffer d_q = Upload(q), d_keys = Upload(keys), d_sums = Upload(sums),
               d_counts = Upload(counts), d_offsets = Upload(offsets), d_ids = Upload(ids);
  std::vector<const void*> dk;
  std::vector<const float*> ds;
  std::vector<const int32_t*> dc;
  for (int i = 0; i < n; ++i) {
    dk.push_back(d_keys.as<uint16_t>() + key_at[i]);
    ds.push_back(d_sums.as<float>() + sum_at[i]);
    dc.push_back(d_counts.as<int32_t>() + count_at[i]);
  }
  DeviceBuffer d_kp = Upload(dk), d_sp = Upload(ds), d_cp = Upload(dc);
  const std::vector<float> poison(rows * dim, std::numeric_limits<float>::quiet_NaN());
  DeviceBuffer d_out = Upload(poison);
  DeviceBuffer d_lse = Upload(std::vector<float>(rows, std::numeric_limits<float>::quiet_NaN()));
  p.q = d_q.data();
  p.cluster_offsets = d_offsets.as<int32_t>();
  p.cluster_ids = d_ids.as<int32_t>();
  p.key_mean = d_kp.as<const void*>();
  p.value_sum = d_sp.as<const float*>();
  p.count = d_cp.as<const int32_t*>();
  p.out = d_out.as<float>();
  p.lse = d_lse.as<float>();
  auto stream = CudaStream::Create();
  ASSERT_OK(stream.status());
  ASSERT_OK(LaunchEstimation(p, stream->get()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream->get()));
  std::vector<float> got(rows * dim), got_lse(rows);
  ASSERT_CUDA_OK(cudaMemcpy(got.data(), p.out, got.size() * 4, cudaMemcpyDeviceToHost));
  ASSERT_CUDA_OK(cudaMemcpy(got_lse.data(), p.lse, got_lse.size() * 4, cudaMemcpyDeviceToHost));
  double worst = 0.0;
  for (size_t r = 0; r < rows; ++r) {
    if (std::isinf(want_lse[r])) {
      ASSERT_EQ(got_lse[r], want_lse[r]) << "row " << r;
    } else {
      ASSERT_NEAR(got_lse[r], want_lse[r], kTolerance * std::max(1.0f, std::abs(want_lse[r])))
          << "row " << r;
    }
    for (int d = 0; d < dim; ++d) {
      const float w = want[r * dim + d];
      ASSERT_NEAR(got[r * dim + d], w, kTolerance * std::max(1.0f, std::abs(w)))
          << "row " << r << " d " << d;
      worst = std::max<double>(worst, std::abs(got[r * dim + d] - w) / std::max(1.0f, std::abs(w)));
    }
  }
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

}  // namespace
}  // namespace kvtier
