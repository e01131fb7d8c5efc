// LaunchRowGather against its host twin (ReferenceRowGather) byte for byte on fresh random
// rows: destinations and positions poisoned identically on both sides first (every row and
// every position entry must be written, the guard entries past each positions array must
// not), random permutations per KV head; the row sizes of every dtype and head_dim the
// runtime uses (bf16 / fp16 / fp32 x D 64, 128, 256) and odd ones (16, 48, 192 bytes), K only
// or K and V, segments anywhere in the piece or empty, long pieces. The kernel's documented
// clamping of order entries outside the segment, and its validation.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/row_gather.h"
#include "tests/testing/gpu_test_util.h"
#include "tests/testing/poison.h"
#include "tests/testing/row_gather_cases.h"

namespace kvtier {
namespace {

using testing_util::Describe;
using testing_util::GatherCase;
using testing_util::IsPoisoned;
using testing_util::kPoisonByte;
using testing_util::Poisoned;

constexpr int32_t kGuard = 4;  // int32 entries past each positions array that stay poisoned

bool SameBytes(const std::vector<uint4>& a, const std::vector<uint4>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(uint4)) == 0;
}

// One gather on the host (twin) and on the device (kernel) from the same random rows, poisoned
// destinations and order.
class GatherRun {
 public:
  void Build(const GatherCase& c, uint64_t seed) {
    spec_ = c;
    std::mt19937_64 rng(seed);
    const size_t vectors =
        std::max<size_t>(1, static_cast<size_t>(c.tokens) * c.heads * c.row_bytes / 16);
    uint4 poison;
    std::memset(&poison, kPoisonByte, sizeof(poison));
    for (int a = 0; a < 2; ++a) {
      src_[a].resize(vectors);
      for (uint4& x : src_[a]) {
        const uint64_t lo = rng(), hi = rng();
        x = {static_cast<uint32_t>(lo), static_cast<uint32_t>(lo >> 32), static_cast<uint32_t>(hi),
             static_cast<uint32_t>(hi >> 32)};
      }
      dst_[a].assign(vectors, poison);
      d_src_[a] = Upload(src_[a]);
      d_dst_[a] = Upload(dst_[a]);
    }
    order_.resize(static_cast<size_t>(c.heads));
    positions_.resize(static_cast<size_t>(c.heads));
    const size_t order_len = static_cast<size_t>(std::max(c.segment_tokens, 1));
    const size_t pos_len = static_cast<size_t>(c.segment_tokens + kGuard);
    std::vector<int32_t> all_orders, all_positions;
    for (int32_t h = 0; h < c.heads; ++h) {
      order_[h].resize(order_len);
      std::iota(order_[h].begin(), order_[h].begin() + c.segment_tokens, 0);
      std::shuffle(order_[h].begin(), order_[h].begin() + c.segment_tokens, rng);
      positions_[h].assign(pos_len, Poisoned<int32_t>());
      all_orders.insert(all_orders.end(), order_[h].begin(), order_[h].end());
      all_positions.insert(all_positions.end(), positions_[h].begin(), positions_[h].end());
    }
    d_orders_ = Upload(all_orders);
    d_positions_ = Upload(all_positions);
    std::vector<const int32_t*> order_ptr;
    std::vector<int32_t*> position_ptr;
    for (int32_t h = 0; h < c.heads; ++h) {
      order_ptr.push_back(d_orders_.as<int32_t>() + h * order_len);
      position_ptr.push_back(d_positions_.as<int32_t>() + h * pos_len);
    }
    d_order_ptr_ = Upload(order_ptr);
    d_position_ptr_ = Upload(position_ptr);
  }

  // Replaces the device order (e.g. with entries outside the segment to be clamped).
  void SetDeviceOrder(const std::vector<std::vector<int32_t>>& order) {
    std::vector<int32_t> all;
    for (const auto& o : order) all.insert(all.end(), o.begin(), o.end());
    ASSERT_EQ(all.size() * 4, d_orders_.size());
    ASSERT_CUDA_OK(
        cudaMemcpy(d_orders_.data(), all.data(), all.size() * 4, cudaMemcpyHostToDevice));
  }

  RowGatherParams DeviceParams() const {
    RowGatherParams p = Common();
    p.src[0] = d_src_[0].data();
    p.dst[0] = d_dst_[0].data();
    if (spec_.two_arrays) {
      p.src[1] = d_src_[1].data();
      p.dst[1] = d_dst_[1].data();
    }
    p.order = d_order_ptr_.as<const int32_t* const>();
    if (spec_.positions) p.positions = d_position_ptr_.as<int32_t* const>();
    return p;
  }

  absl::Status RunTwin() {
    RowGatherParams p = Common();
    p.src[0] = src_[0].data();
    p.dst[0] = dst_[0].data();
    if (spec_.two_arrays) {
      p.src[1] = src_[1].data();
      p.dst[1] = dst_[1].data();
    }
    std::vector<const int32_t*> order_ptr;
    std::vector<int32_t*> position_ptr;
    for (int32_t h = 0; h < spec_.heads; ++h) {
      order_ptr.push_back(order_[h].data());
      position_ptr.push_back(positions_[h].data());
    }
    p.order = order_ptr.data();
    if (spec_.positions) p.positions = position_ptr.data();
    return ReferenceRowGather(p);
  }

  // Device results against the twin's; every destination row and position entry written.
  void ExpectSameAsTwin() const {
    for (int a = 0; a < 2; ++a) {
      const std::vector<uint4> got = Download<uint4>(d_dst_[a], dst_[a].size());
      EXPECT_TRUE(SameBytes(got, dst_[a])) << "array " << a << " differs from the twin";
      if (a == 0 || spec_.two_arrays) {
        const size_t poisoned =
            std::count_if(got.begin(), got.end(), [](const uint4& v) { return IsPoisoned(v); });
        EXPECT_EQ(poisoned, 0u) << "array " << a << ": rows left unwritten";
      }
    }
    const size_t pos_len = static_cast<size_t>(spec_.segment_tokens + kGuard);
    const std::vector<int32_t> got = Download<int32_t>(d_positions_, spec_.heads * pos_len);
    for (int32_t h = 0; h < spec_.heads; ++h) {
      for (size_t t = 0; t < pos_len; ++t) {
        const int32_t g = got[h * pos_len + t];
        EXPECT_EQ(g, positions_[h][t]) << "positions[" << h << "][" << t << "]";
        if (!spec_.positions || t >= static_cast<size_t>(spec_.segment_tokens)) {
          EXPECT_TRUE(IsPoisoned(g)) << "positions[" << h << "][" << t << "] written";
        }
      }
    }
  }

  std::vector<std::vector<int32_t>>& host_order() { return order_; }
  const GatherCase& spec() const { return spec_; }
  const DeviceBuffer& device_dst(int a) const { return d_dst_[a]; }
  const std::vector<uint4>& host_dst(int a) const { return dst_[a]; }

 private:
  RowGatherParams Common() const {
    RowGatherParams p;
    p.num_tokens = spec_.tokens;
    p.num_heads = spec_.heads;
    p.row_bytes = spec_.row_bytes;
    p.segment_begin = spec_.segment_begin;
    p.segment_tokens = spec_.segment_tokens;
    p.position_base = spec_.position_base;
    return p;
  }

  GatherCase spec_;
  std::vector<uint4> src_[2], dst_[2];
  std::vector<std::vector<int32_t>> order_, positions_;
  DeviceBuffer d_src_[2], d_dst_[2], d_orders_, d_positions_, d_order_ptr_, d_position_ptr_;
};

class RowGatherGpuTest : public GpuStreamTest {
 protected:
  RowGatherGpuTest() : GpuStreamTest("GPU row gather tests") {}

  void Check(const GatherCase& c) {
    const uint64_t seed = std::random_device{}();
    SCOPED_TRACE(Describe(c) + ", seed " + std::to_string(seed));
    GatherRun run;
    ASSERT_NO_FATAL_FAILURE(run.Build(c, seed));
    ASSERT_OK(LaunchRowGather(run.DeviceParams(), stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    ASSERT_OK(run.RunTwin());
    run.ExpectSameAsTwin();
  }
};

TEST_F(RowGatherGpuTest, MatchesTwinByteForByte) {
  const std::vector<GatherCase> cases = {
      {64, 8, 256, 16, 32},                      // segment in the middle
      {64, 8, 256, 0, 64},                       // the whole piece
      {100, 2, 128, 0, 48},                      // at the start
      {100, 2, 512, 52, 48, false},              // at the end, K only
      {33, 3, 16, 5, 17, true, false},           // 16-byte rows, odd sizes, no positions
      {40, 1, 1024, 8, 16, true, true, 4096},    // 64 vectors a row: lanes loop
      {17, 5, 48, 0, 0},                         // empty segment: a plain copy
      {1, 4, 128, 0, 1},                         // one token
      {256, 4, 192, 16, 224, true, true, 1000},  // 192-byte rows
      {50, 2, 128, 10, 32, true, true, int64_t{1} << 30},
      {4096, 8, 256, 64, 4000, true, true, 64},  // a long prefill piece
      {3000, 1, 512, 0, 2992, false, true, 16},
  };
  for (const GatherCase& c : cases) ASSERT_NO_FATAL_FAILURE(Check(c));
}

// The row sizes of every dtype and head_dim (bf16 / fp16: 2 D bytes, fp32: 4 D bytes) over a
// grid of head counts and random segments.
TEST_F(RowGatherGpuTest, ShapesGrid) {
  std::mt19937_64 rng(std::random_device{}());
  for (int32_t element : {2, 4}) {
    for (int32_t dim : {64, 128, 256}) {
      for (int32_t heads : {1, 2, 8}) {
        const int32_t tokens = 1 + static_cast<int32_t>(rng() % 700);
        const int32_t begin = static_cast<int32_t>(rng() % tokens);
        const int32_t length = static_cast<int32_t>(rng() % (tokens - begin + 1));
        ASSERT_NO_FATAL_FAILURE(Check({tokens, heads, element * dim, begin, length, rng() % 2 == 0,
                                       true, static_cast<int64_t>(rng() % 5000)}));
      }
    }
  }
}

// row_gather.h: an order entry outside the segment is clamped into it. The kernel with such
// entries equals the twin with the clamped ones.
TEST_F(RowGatherGpuTest, ClampsOrderEntriesOutsideTheSegment) {
  const GatherCase c{80, 3, 256, 16, 40, true, true, 7};
  GatherRun run;
  ASSERT_NO_FATAL_FAILURE(run.Build(c, 11));
  std::vector<std::vector<int32_t>> device_order = run.host_order();
  device_order[0][0] = -5;   // clamped to 0
  device_order[1][39] = 40;  // clamped to 39
  device_order[2][17] = 1 << 30;
  run.host_order()[0][0] = 0;
  run.host_order()[1][39] = 39;
  run.host_order()[2][17] = 39;
  ASSERT_NO_FATAL_FAILURE(run.SetDeviceOrder(device_order));
  ASSERT_OK(LaunchRowGather(run.DeviceParams(), stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  ASSERT_OK(run.RunTwin());
  run.ExpectSameAsTwin();
}

TEST_F(RowGatherGpuTest, NoTokensLaunchesNothing) {
  RowGatherParams p;
  p.num_tokens = 0;
  p.num_heads = 8;
  p.row_bytes = 256;
  EXPECT_TRUE(LaunchRowGather(p, stream()).ok());
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
}

// Bad shapes and pointers: InvalidArgument naming the field, nothing written.
TEST_F(RowGatherGpuTest, RejectsBadInputAndWritesNothing) {
  GatherRun run;
  ASSERT_NO_FATAL_FAILURE(run.Build({40, 2, 128, 8, 16, true, true, 3}, 7));
  const RowGatherParams good = run.DeviceParams();
  auto expect = [&](const RowGatherParams& p, const char* field) {
    const absl::Status status = LaunchRowGather(p, stream());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field << ": " << status;
    EXPECT_NE(status.message().find(field), absl::string_view::npos) << status;
  };
  RowGatherParams p = good;
  p.num_tokens = -1;
  expect(p, "num_tokens");
  p = good;
  p.num_heads = 0;
  expect(p, "num_heads");
  p = good;
  p.row_bytes = 40;
  expect(p, "row_bytes");
  p = good;
  p.segment_tokens = 33;  // [8, 41) of 40 rows
  expect(p, "segment");
  p = good;
  p.position_base = -1;
  expect(p, "position_base");
  p = good;
  p.src[0] = nullptr;
  expect(p, "src[0] and dst[0]");
  p = good;
  p.src[1] = nullptr;
  expect(p, "src[1] and dst[1]");
  p = good;
  p.dst[0] = static_cast<char*>(p.dst[0]) + 2;
  expect(p, "16-byte aligned");
  p = good;
  p.order = nullptr;
  expect(p, "order is null");
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  for (int a = 0; a < 2; ++a) {
    EXPECT_TRUE(
        SameBytes(Download<uint4>(run.device_dst(a), run.host_dst(a).size()), run.host_dst(a)))
        << "array " << a << " written despite the errors";
  }
}

}  // namespace
}  // namespace kvtier
