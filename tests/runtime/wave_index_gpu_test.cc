// KvCache with the clustered (wave) index on the CUDA backend (GPU segment k-means, centroid
// selection, estimation kernel), against the host oracles of runtime_test_util.h; the
// counterpart of wave_index_test.cc with longer sequences and larger prefill pieces. Target
// F1: with a retrieval budget covering every cold page, Decode equals full attention over
// every stored token within the attention kernel's tolerance element-wise and a relative error
// of 1e-2 per query row, on random shapes, GQA groups and mixed sequence lengths in one batch,
// with and without an estimation zone or the rest estimated. With a small budget: finite output,
// Inspect's selected positions distinct cold positions, and without a zone the output equals exact
// attention over the hot set plus those positions. Skips without a device.
#include <cstdint>

#include "gtest/gtest.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"
#include "tests/runtime/wave_test_cases.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

using runtime_test::CudaTolerance;
using runtime_test::Tolerance;
using runtime_test::WaveCase;
using runtime_test::WaveCaseName;

// 2 layers, 4 KV heads of group g, sequences of up to 8192 tokens.
Options CudaWaveOptions(const WaveCase& c) {
  Options o = runtime_test::WaveOptions(c, 8192);
  o.backend = Backend::kCuda;
  o.shape.num_kv_heads = 4;
  o.shape.num_query_heads = 4 * c.g;
  o.host_memory_bytes = int64_t{512} << 20;
  o.gpu_memory_bytes = int64_t{4} << 30;
  return o;
}

runtime_test::ToleranceOf CudaToleranceOf(DType dtype) {
  return [dtype](DType out_dtype) {
    const double tol = CudaTolerance(dtype, out_dtype);
    return Tolerance{tol, tol};
  };
}

class WaveCudaFullBudgetTest : public GpuTestBase<::testing::TestWithParam<WaveCase>> {
 protected:
  WaveCudaFullBudgetTest() : GpuTestBase("KvCache wave index CUDA tests") {}
};

TEST_P(WaveCudaFullBudgetTest, DecodeEqualsExactAttention) {
  const WaveCase c = GetParam();
  runtime_test::ExpectWaveFullBudgetExact(
      CudaWaveOptions(c), runtime_test::WaveSchedule(c, 6000, 20), CudaToleranceOf(c.dtype));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, WaveCudaFullBudgetTest,
    ::testing::Values(WaveCase{4, 128, DType::kBF16, 16, 64, 256, 1024, 0, 0, 0, 1},
                      WaveCase{8, 128, DType::kBF16, 16, 16, 64, 4096, 0, 0, 16, 2},
                      WaveCase{1, 64, DType::kFP16, 32, 0, 32, 512, 301, 0, 0, 3},
                      WaveCase{2, 256, DType::kBF16, 64, 64, 128, 2048, 777, 0, 8, 4},
                      WaveCase{4, 64, DType::kFP16, 16, 32, 128, 256, 999, 0, 4, 5},
                      WaveCase{4, 128, DType::kBF16, 16, 64, 256, 1024, 0, 0, -1, 6},
                      WaveCase{2, 64, DType::kFP16, 32, 0, 64, 2048, 777, 0, -1, 7}),
    WaveCaseName);

class WaveCudaSmallBudgetTest : public GpuTestBase<::testing::TestWithParam<WaveCase>> {
 protected:
  WaveCudaSmallBudgetTest() : GpuTestBase("KvCache wave index CUDA tests") {}
};

TEST_P(WaveCudaSmallBudgetTest, SelectsDistinctColdPositionsAndStaysFinite) {
  const WaveCase c = GetParam();
  runtime_test::ExpectWaveSmallBudgetConsistent(CudaWaveOptions(c),
                                                runtime_test::WaveSmallBudgetSchedule(c, 6000, 20),
                                                CudaToleranceOf(c.dtype));
}

INSTANTIATE_TEST_SUITE_P(
    Budgets, WaveCudaSmallBudgetTest,
    ::testing::Values(WaveCase{4, 128, DType::kBF16, 16, 64, 128, 1024, 0, 16, 0, 11},
                      WaveCase{8, 128, DType::kFP16, 16, 16, 64, 2048, 0, 8, 32, 12},
                      WaveCase{1, 64, DType::kBF16, 32, 0, 32, 512, 301, 4, 4, 13},
                      WaveCase{2, 256, DType::kBF16, 64, 64, 64, 4096, 0, 3, 0, 14},
                      WaveCase{4, 128, DType::kBF16, 16, 64, 128, 1024, 0, 16, -1, 15},
                      WaveCase{8, 64, DType::kFP16, 16, 16, 64, 2048, 301, 4, -1, 16}),
    WaveCaseName);

}  // namespace
}  // namespace kvtier
