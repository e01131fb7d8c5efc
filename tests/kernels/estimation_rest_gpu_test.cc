// LaunchEstimation's range and superset modes (the wave index's rest) against the host twin
// on fresh random batches (testing/estimation_rest.h), outputs poisoned with NaN first, with
// and without the workspace that cuts ranges into runs: a range equals the twin's estimate of
// it, from the mean keys or from precomputed logits, with and without spreads; a selection
// taken out of the kernel's own range estimate equals the twin's rest, taken out of the twin's
// range estimate.
//
// Error bound: the range's as estimation_gpu_test.cc's (1e-4 relative). The rest divides by
// its share s of the superset (1 - f), which magnifies the fp32 superset's error by 1 / s:
// rows are compared within 1e-4 / s where s >= 0.01; a rest that the twin finds empty (no
// tokens left, or a selection of the whole range) must be empty on the GPU too.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/estimation.h"
#include "tests/testing/estimation_lists.h"
#include "tests/testing/estimation_lists_gpu.h"
#include "tests/testing/estimation_rest.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

using testing_util::AsRanges;
using testing_util::DeviceEstimationLists;
using testing_util::EstimationLists;
using testing_util::MakeRestLists;
using testing_util::RestItems;
using testing_util::RestLists;

constexpr double kTolerance = 1e-4;
constexpr float kInf = std::numeric_limits<float>::infinity();

class EstimationRestGpuTest : public GpuStreamTest {
 protected:
  EstimationRestGpuTest() : GpuStreamTest("GPU estimation rest tests") {}
};

struct DeviceResult {
  DeviceResult(size_t rows, int dim)
      : rows(rows),
        dim(dim),
        out(Upload(std::vector<float>(rows * dim))),
        lse(Upload(std::vector<float>(rows))) {}
  void Poison() {
    const std::vector<float> nan(rows * dim, std::numeric_limits<float>::quiet_NaN());
    ASSERT_CUDA_OK(cudaMemcpy(out.data(), nan.data(), rows * dim * 4, cudaMemcpyHostToDevice));
    ASSERT_CUDA_OK(cudaMemcpy(lse.data(), nan.data(), rows * 4, cudaMemcpyHostToDevice));
  }
  size_t rows;
  int dim;
  DeviceBuffer out, lse;
};

// One random batch: its range estimate and its rest on the GPU against the twin, with and
// without the workspace.
void CheckBatch(EstimationLists& batch, int stride, std::mt19937_64& rng, cudaStream_t stream,
                int* compared) {
  const RestLists r = MakeRestLists(batch, stride, rng);
  const size_t rows = batch.rows();
  const int dim = batch.dim();
  const int group = static_cast<int>(rows / batch.num_items());
  // The twin: the range, then the selection taken out of it.
  std::vector<float> whole(rows * dim), whole_lse(rows), rest(rows * dim), rest_lse(rows);
  const EstimationParams host = batch.Params(nullptr, nullptr);
  EstimationParams h = AsRanges(host, r.begin.data(), r.end.data());
  h.out = whole.data();
  h.lse = whole_lse.data();
  ASSERT_OK(ReferenceEstimation(h));
  std::vector<float> selected(rows * dim), selected_lse(rows);
  h = host;
  h.out = selected.data();
  h.lse = selected_lse.data();
  ASSERT_OK(ReferenceEstimation(h));
  h.superset_out = whole.data();
  h.superset_lse = whole_lse.data();
  h.out = rest.data();
  h.lse = rest_lse.data();
  ASSERT_OK(ReferenceEstimation(h));

  const DeviceEstimationLists device(batch);
  DeviceBuffer d_begin = Upload(r.begin), d_end = Upload(r.end);
  DeviceResult d_whole(rows, dim), d_rest(rows, dim);
  auto workspace = DeviceBuffer::Allocate(EstimationWorkspaceBytes(batch.num_items(), group, dim));
  ASSERT_OK(workspace.status());
  const EstimationParams base = device.Params(nullptr, nullptr);
  for (const bool runs : {false, true}) {
    SCOPED_TRACE(runs ? "cut into runs" : "one block an item");
    ASSERT_NO_FATAL_FAILURE(d_whole.Poison());
    ASSERT_NO_FATAL_FAILURE(d_rest.Poison());
    EstimationParams p = AsRanges(base, d_begin.as<int32_t>(), d_end.as<int32_t>());
    p.out = d_whole.out.as<float>();
    p.lse = d_whole.lse.as<float>();
    p.workspace = runs ? workspace->data() : nullptr;
    p.workspace_bytes = runs ? workspace->size() : 0;
    ASSERT_OK(LaunchEstimation(p, stream));
    EstimationParams q = base;
    q.superset_out = d_whole.out.as<float>();
    q.superset_lse = d_whole.lse.as<float>();
    q.out = d_rest.out.as<float>();
    q.lse = d_rest.lse.as<float>();
    q.workspace = p.workspace;
    q.workspace_bytes = p.workspace_bytes;
    ASSERT_OK(LaunchEstimation(q, stream));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
    const std::vector<float> got_whole = Download<float>(d_whole.out, rows * dim);
    const std::vector<float> got_whole_lse = Download<float>(d_whole.lse, rows);
    const std::vector<float> got = Download<float>(d_rest.out, rows * dim);
    const std::vector<float> got_lse = Download<float>(d_rest.lse, rows);
    for (size_t row = 0; row < rows; ++row) {
      if (std::isinf(whole_lse[row])) {
        ASSERT_EQ(got_whole_lse[row], whole_lse[row]) << "range, row " << row;
      } else {
        ASSERT_NEAR(got_whole_lse[row], whole_lse[row],
                    kTolerance * std::max(1.0f, std::abs(whole_lse[row])))
            << "range, row " << row;
      }
      for (int d = 0; d < dim; ++d) {
        const float w = whole[row * dim + d];
        ASSERT_NEAR(got_whole[row * dim + d], w, kTolerance * std::max(1.0f, std::abs(w)))
            << "range, row " << row << " d " << d;
      }
      const int item = static_cast<int>(row / group);
      const bool nothing_left = r.rest_offsets[item + 1] == r.rest_offsets[item];
      if (nothing_left || whole_lse[row] == -kInf) {
        ASSERT_EQ(got_lse[row], -kInf) << "rest, row " << row;
        for (int d = 0; d < dim; ++d) ASSERT_EQ(got[row * dim + d], 0.0f) << "rest, row " << row;
        continue;
      }
      const double share = 1.0 - std::exp(static_cast<double>(selected_lse[row]) -
                                          static_cast<double>(whole_lse[row]));
      if (share < 0.01 || rest_lse[row] == -kInf) continue;
      ++*compared;
      const double tol = kTolerance / share;
      ASSERT_NEAR(got_lse[row], rest_lse[row], tol * std::max(1.0f, std::abs(rest_lse[row])))
          << "rest, row " << row;
      for (int d = 0; d < dim; ++d) {
        const float w = rest[row * dim + d];
        ASSERT_NEAR(got[row * dim + d], w, tol * std::max(1.0f, std::abs(w)))
            << "rest, row " << row << " d " << d;
      }
    }
  }
}

TEST_F(EstimationRestGpuTest, RangeAndRestEqualTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  int compared = 0;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 6}) {
        for (int variant = 0; variant < 3; ++variant) {  // mean keys, logits, logits + spread
          const int parts = 1 + static_cast<int>(rng() % 2);
          const int stride = 1 + static_cast<int>(rng() % 128);
          // Up to 3,000 clusters an item: long ranges are cut into many runs.
          EstimationLists batch(dtype, dim, group, parts, stride, 0,
                                RestItems(9, rng() % 2 == 0 ? 300 : 3000, stride, rng), rng());
          if (variant > 0) batch.AddLogits(rng());
          const bool spread = variant > 1 || rng() % 3 == 0;
          if (spread) batch.AddSpread(rng());
          // The wave index's shift: linear in the mean values, so the rest carries it too.
          const bool shift = spread && rng() % 2 == 0;
          if (shift) batch.AddValueShift(rng());
          SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " D ", dim, " G ", group, " parts ", parts,
                                    " stride ", stride, " variant ", variant, shift ? " shift" : "",
                                    " seed ", seed));
          ASSERT_NO_FATAL_FAILURE(CheckBatch(batch, stride, rng, stream(), &compared));
        }
      }
    }
  }
  EXPECT_GT(compared, 100);
}

}  // namespace
}  // namespace kvtier
