// The value-shift kernels (value_shift.h) against their host twins on fresh random pages and
// statistics: the covariance kernel adds what the twin adds (to statistics that already hold
// sums, in prefill's page order and in any other), skipping partial pages; the shift kernel
// writes the twin's shifts (outputs poisoned with NaN first), 0 without statistics. The
// estimation kernels' value_shift is compared in estimation_gpu_test.cc.
//
// Error bound: the kernel sums in fp32 with atomics (order varies) where the twin sums in
// double: entries within 1e-4 of the item's largest, the key squares within 1e-4 relative,
// token counts exact; shifts within 1e-4 relative of the row's largest.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/block_summary.h"
#include "kernels/value_shift.h"
#include "tests/testing/gpu_test_util.h"
#include "tests/testing/value_shift_pages.h"

namespace kvtier {
namespace {

using testing_util::ValueShiftPages;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class ValueShiftGpuTest : public GpuStreamTest {
 protected:
  ValueShiftGpuTest() : GpuStreamTest("GPU value shift tests") {}
};

// Device pointer arrays into one uploaded buffer of `pages` blocks of `block` elements.
template <typename T>
std::vector<T*> Pointers(DeviceBuffer& buffer, int pages, size_t block) {
  std::vector<T*> out;
  for (int j = 0; j < pages; ++j) out.push_back(buffer.as<T>() + j * block);
  return out;
}

void CheckCovariance(ValueShiftPages& b, int item_stride, uint64_t seed, cudaStream_t stream) {
  const int dim = b.dim();
  const int pages = b.num_pages();
  ASSERT_OK(ReferencePageSummaries(b.Summaries()));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (float& x : b.stats()) x = normal(rng);
  for (int i = 0; i < b.items(); ++i) {  // whole token counts, which add exactly
    b.stats()[(i + 1) * ValueKeyStatsFloats(dim) - 1] = 32.0f * i;
  }
  const std::vector<float> initial = b.stats();

  const size_t page_elements = static_cast<size_t>(b.page_size()) * dim;
  DeviceBuffer keys = Upload(b.keys()), values = Upload(b.values());
  DeviceBuffer key_mean = Upload(b.key_mean()), value_mean = Upload(b.value_mean());
  DeviceBuffer count = Upload(b.count()), tokens = Upload(b.tokens());
  DeviceBuffer stats = Upload(initial);
  DeviceBuffer k_ptr = Upload(Pointers<uint16_t>(keys, pages, page_elements));
  DeviceBuffer v_ptr = Upload(Pointers<uint16_t>(values, pages, page_elements));
  DeviceBuffer km_ptr = Upload(Pointers<uint16_t>(key_mean, pages, 2 * dim));
  DeviceBuffer vm_ptr = Upload(Pointers<uint16_t>(value_mean, pages, 2 * dim));
  DeviceBuffer n_ptr = Upload(Pointers<int32_t>(count, pages, 2));
  std::vector<float*> stats_ptr;
  for (int j = 0; j < pages; ++j) {
    stats_ptr.push_back(stats.as<float>() + (j % b.items()) * ValueKeyStatsFloats(dim));
  }
  DeviceBuffer s_ptr = Upload(stats_ptr);

  ASSERT_OK(ReferenceValueKeyCovariance(b.Covariance()));
  ValueKeyCovarianceParams p = b.Covariance();
  p.item_stride = item_stride;
  p.k_pages = k_ptr.as<const void*>();
  p.v_pages = v_ptr.as<const void*>();
  p.tokens = tokens.as<int32_t>();
  p.key_mean = km_ptr.as<const void*>();
  p.value_mean = vm_ptr.as<const void*>();
  p.count = n_ptr.as<const int32_t*>();
  p.stats = s_ptr.as<float*>();
  ASSERT_OK(LaunchValueKeyCovariance(p, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<float> got = Download<float>(stats, initial.size());
  const int64_t floats = ValueKeyStatsFloats(dim);
  for (int i = 0; i < b.items(); ++i) {
    SCOPED_TRACE(absl::StrCat("item ", i));
    const float* want = b.stats().data() + i * floats;
    const float* have = got.data() + i * floats;
    float scale = 1e-3f;
    for (int64_t k = 0; k < int64_t{dim} * dim; ++k) scale = std::max(scale, std::abs(want[k]));
    for (int64_t k = 0; k < int64_t{dim} * dim; ++k) {
      ASSERT_NEAR(have[k], want[k], 1e-4f * scale) << "entry " << k;
    }
    const float square = want[int64_t{dim} * dim];
    EXPECT_NEAR(have[int64_t{dim} * dim], square, 1e-4f * std::max(std::abs(square), 1.0f));
    EXPECT_EQ(have[int64_t{dim} * dim + 1], want[int64_t{dim} * dim + 1]);
  }
}

TEST_F(ValueShiftGpuTest, CovarianceEqualsTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int page_size : {5, 16, 64}) {
        for (int items : {1, 5}) {
          // Or more pages an item than one run of the kernel's takes (512 tokens' worth).
          const int per_item = rng() % 2 == 0 ? 1 : 512 / page_size + 3;
          ValueShiftPages b(dtype, dim, page_size, items, per_item, 0.25, rng());
          const int stride = rng() % 2 == 0 ? items : 1;  // prefill's order, or none
          SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " D ", dim, " P ", page_size, " items ",
                                    items, " x ", per_item, " stride ", stride, " seed ", seed));
          ASSERT_NO_FATAL_FAILURE(CheckCovariance(b, stride, rng(), stream()));
        }
      }
    }
  }
}

TEST_F(ValueShiftGpuTest, ShiftEqualsTwin) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  std::normal_distribution<float> normal;
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int dim : {64, 128, 256}) {
      for (int group : {1, 4, 7}) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " D ", dim, " G ", group, " seed ", seed));
        const int items = 5;
        const int64_t floats = ValueKeyStatsFloats(dim);
        std::vector<float> stats(items * floats);
        for (float& x : stats) x = normal(rng);
        for (int i = 0; i < items; ++i) stats[i * floats + int64_t{dim} * dim] = 20.0f + 30 * i;
        stats[3 * floats + int64_t{dim} * dim] = 0.0f;  // nothing counted
        std::vector<uint16_t> q(static_cast<size_t>(items) * group * dim);
        for (uint16_t& x : q) {
          x = dtype == DType::kBF16 ? FloatToBF16(normal(rng)) : FloatToFP16(normal(rng));
        }
        DeviceBuffer d_stats = Upload(stats), d_q = Upload(q);
        std::vector<const float*> host_ptr, device_ptr;
        for (int i = 0; i < items; ++i) {
          host_ptr.push_back(i == 1 ? nullptr : stats.data() + i * floats);
          device_ptr.push_back(i == 1 ? nullptr : d_stats.as<float>() + i * floats);
        }
        DeviceBuffer d_ptr = Upload(device_ptr);
        std::vector<float> want(q.size(), kNaN);
        ValueShiftParams p;
        p.dtype = dtype;
        p.head_dim = dim;
        p.group_size = group;
        p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
        p.num_items = items;
        p.q = q.data();
        p.stats = host_ptr.data();
        p.shift = want.data();
        ASSERT_OK(ReferenceValueShift(p));
        DeviceBuffer d_shift = Upload(std::vector<float>(q.size(), kNaN));
        p.q = d_q.data();
        p.stats = d_ptr.as<const float*>();
        p.shift = d_shift.as<float>();
        ASSERT_OK(LaunchValueShift(p, stream()));
        ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
        const std::vector<float> got = Download<float>(d_shift, q.size());
        for (size_t row = 0; row < want.size() / dim; ++row) {
          float scale = 1e-6f;
          for (int d = 0; d < dim; ++d) scale = std::max(scale, std::abs(want[row * dim + d]));
          for (int d = 0; d < dim; ++d) {
            ASSERT_NEAR(got[row * dim + d], want[row * dim + d], 1e-4f * scale)
                << "row " << row << " channel " << d;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvtier
