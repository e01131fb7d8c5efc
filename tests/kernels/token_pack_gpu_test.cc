// LaunchTokenPack against its host twin (ReferenceTokenPack) byte for byte: the destination
// pool is filled with random bytes (the "earlier content" that rows outside the run must
// keep, and poison for everything else), the same bytes on both sides; pages at shuffled
// slots. Runs that start and end inside pages, one token, odd page sizes and head counts,
// every head_dim and dtype, and a long prefill run (8K tokens x 8 heads x 128) whose copy
// rate is printed next to the device-to-device cudaMemcpy rate of the same bytes.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/token_pack.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

struct PackCase {
  DType dtype = DType::kBF16;
  int32_t heads = 8;
  int32_t head_dim = 128;
  int32_t page_size = 16;
  int32_t tokens = 0;
  int64_t first_position = 0;
};

std::string Describe(const PackCase& c) {
  return absl::StrCat(DTypeName(c.dtype), " H ", c.heads, " D ", c.head_dim, " P ", c.page_size,
                      ", ", c.tokens, " tokens from position ", c.first_position);
}

// One run on the host (twin) and on the device (kernel): k, v and the pool in 16-byte
// vectors; pool page j (K or V) at shuffled slot slot[j] of both pools.
class PackRun {
 public:
  void Build(const PackCase& c, uint64_t seed) {
    spec_ = c;
    std::mt19937_64 rng(seed);
    const int64_t row_vectors = int64_t{c.head_dim} * 2 / 16;
    const int64_t vectors = int64_t{c.tokens} * c.heads * row_vectors;
    auto random_fill = [&](std::vector<uint4>& a, int64_t n) {
      a.resize(std::max<int64_t>(n, 1));
      for (uint4& x : a) {
        const uint64_t lo = rng(), hi = rng();
        x.x = static_cast<uint32_t>(lo);
        x.y = static_cast<uint32_t>(lo >> 32);
        x.z = static_cast<uint32_t>(hi);
        x.w = static_cast<uint32_t>(hi >> 32);
      }
    };
    random_fill(k_, vectors);
    random_fill(v_, vectors);
    const int64_t entries = TokenPackPages(c.first_position, c.tokens, c.page_size) * c.heads;
    page_vectors_ = int64_t{c.page_size} * row_vectors;
    random_fill(pool_, 2 * entries * page_vectors_);
    slot_.resize(2 * entries);
    std::iota(slot_.begin(), slot_.end(), 0);
    std::shuffle(slot_.begin(), slot_.end(), rng);
    d_k_ = Upload(k_);
    d_v_ = Upload(v_);
    d_pool_ = Upload(pool_);
    std::vector<void*> k_pages(entries), v_pages(entries);
    host_k_pages_.resize(entries);
    host_v_pages_.resize(entries);
    for (int64_t e = 0; e < entries; ++e) {
      k_pages[e] = d_pool_.as<uint4>() + slot_[2 * e] * page_vectors_;
      v_pages[e] = d_pool_.as<uint4>() + slot_[2 * e + 1] * page_vectors_;
      host_k_pages_[e] = pool_.data() + slot_[2 * e] * page_vectors_;
      host_v_pages_[e] = pool_.data() + slot_[2 * e + 1] * page_vectors_;
    }
    d_k_pages_ = Upload(k_pages);
    d_v_pages_ = Upload(v_pages);
  }

  TokenPackParams DeviceParams() const {
    TokenPackParams p = Common();
    p.k = d_k_.data();
    p.v = d_v_.data();
    p.k_pages = d_k_pages_.as<void* const>();
    p.v_pages = d_v_pages_.as<void* const>();
    return p;
  }

  // The twin on the host copy of the pool.
  absl::Status RunTwin() {
    TokenPackParams p = Common();
    p.k = k_.data();
    p.v = v_.data();
    p.k_pages = host_k_pages_.data();
    p.v_pages = host_v_pages_.data();
    return ReferenceTokenPack(p);
  }

  std::vector<uint4> DevicePool() const { return Download<uint4>(d_pool_, pool_.size()); }
  const std::vector<uint4>& HostPool() const { return pool_; }
  int64_t bytes() const { return 2 * static_cast<int64_t>(k_.size()) * 16; }  // K + V
  const DeviceBuffer& device_k() const { return d_k_; }

 private:
  TokenPackParams Common() const {
    TokenPackParams p;
    p.dtype = spec_.dtype;
    p.num_kv_heads = spec_.heads;
    p.head_dim = spec_.head_dim;
    p.page_size = spec_.page_size;
    p.num_tokens = spec_.tokens;
    p.first_position = spec_.first_position;
    return p;
  }

  PackCase spec_;
  int64_t page_vectors_ = 0;
  std::vector<uint4> k_, v_, pool_;
  std::vector<int64_t> slot_;
  std::vector<void*> host_k_pages_, host_v_pages_;
  DeviceBuffer d_k_, d_v_, d_pool_, d_k_pages_, d_v_pages_;
};

// Byte equality of the two pools; names the first differing 16-byte vector.
::testing::AssertionResult SamePool(const std::vector<uint4>& gpu, const std::vector<uint4>& twin) {
  if (gpu.size() == twin.size() &&
      std::memcmp(gpu.data(), twin.data(), gpu.size() * sizeof(uint4)) == 0) {
    return ::testing::AssertionSuccess();
  }
  size_t i = 0;
  while (i < gpu.size() && std::memcmp(&gpu[i], &twin[i], sizeof(uint4)) == 0) ++i;
  return ::testing::AssertionFailure()
         << "pools differ first at vector " << i << " of " << twin.size();
}

class TokenPackGpuTest : public GpuStreamTest {
 protected:
  TokenPackGpuTest() : GpuStreamTest("GPU token pack tests") {}

  void Check(const PackCase& c) {
    const uint64_t seed = std::random_device{}();
    SCOPED_TRACE(Describe(c) + ", seed " + std::to_string(seed));
    PackRun run;
    ASSERT_NO_FATAL_FAILURE(run.Build(c, seed));
    ASSERT_OK(LaunchTokenPack(run.DeviceParams(), stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
    ASSERT_OK(run.RunTwin());
    ASSERT_TRUE(SamePool(run.DevicePool(), run.HostPool()));
  }
};

TEST_F(TokenPackGpuTest, MatchesTwinByteForByte) {
  const std::vector<PackCase> runs = {
      {DType::kBF16, 8, 128, 16, 1000, 0},  // whole pages, last partial
      {DType::kBF16, 8, 128, 16, 1, 0},     // one token
      {DType::kFP16, 2, 128, 16, 5, 3},     // inside one page, both ends partial
      {DType::kBF16, 4, 64, 32, 2, 31},     // across a page boundary
      {DType::kFP16, 1, 64, 1, 37, 5},      // one token a page
      {DType::kBF16, 3, 256, 7, 50, 12},    // odd page size and head count
      {DType::kFP16, 5, 128, 17, 300, 1000},
      {DType::kBF16, 2, 64, 64, 128, 64},  // exactly two pages
      {DType::kBF16, 8, 128, 16, 4096 + 7, 16 * 1000 + 9},
      {DType::kFP16, 2, 64, 16, 40, (int64_t{1} << 40) + 13},  // positions beyond 32 bits
      {DType::kBF16, 1, 256, 64, 3000, 65},
      {DType::kFP16, 32, 64, 16, 700, 15},
  };
  for (const PackCase& c : runs) ASSERT_NO_FATAL_FAILURE(Check(c));
}

// Every head_dim and dtype over a grid of head counts, page sizes and run offsets.
TEST_F(TokenPackGpuTest, ShapesGrid) {
  for (DType dtype : {DType::kBF16, DType::kFP16}) {
    for (int32_t head_dim : {64, 128, 256}) {
      for (int32_t heads : {1, 3, 8}) {
        for (int32_t page : {16, 32, 64}) {
          const int64_t first = (head_dim + heads + page) % page;  // 0 or inside the page
          ASSERT_NO_FATAL_FAILURE(Check({dtype, heads, head_dim, page, 3 * page + 5, first}));
        }
      }
    }
  }
}

// A long prefill run, verified, then timed: the pack moves K and V (read + written), the
// reference is cudaMemcpyAsync device to device of the same bytes on the same stream.
TEST_F(TokenPackGpuTest, LongRunNearCopyRate) {
  const PackCase c{DType::kBF16, 8, 128, 16, 8192, 5};
  ASSERT_NO_FATAL_FAILURE(Check(c));
  PackRun run;
  ASSERT_NO_FATAL_FAILURE(run.Build(c, 99));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer copy_dst, DeviceBuffer::Allocate(run.bytes()));
  ASSERT_OK_AND_ASSIGN(CudaEvent start, CudaEvent::Create());
  ASSERT_OK_AND_ASSIGN(CudaEvent stop, CudaEvent::Create());
  constexpr int kRepeats = 50;
  auto time_us = [&](auto&& launch) -> double {
    for (int i = 0; i < 3; ++i) launch();  // warm-up
    EXPECT_EQ(cudaEventRecord(start.get(), stream()), cudaSuccess);
    for (int i = 0; i < kRepeats; ++i) launch();
    EXPECT_EQ(cudaEventRecord(stop.get(), stream()), cudaSuccess);
    EXPECT_EQ(cudaEventSynchronize(stop.get()), cudaSuccess);
    float ms = 0;
    EXPECT_EQ(cudaEventElapsedTime(&ms, start.get(), stop.get()), cudaSuccess);
    return ms * 1e3 / kRepeats;
  };
  const TokenPackParams params = run.DeviceParams();
  const double pack_us = time_us([&] { EXPECT_TRUE(LaunchTokenPack(params, stream()).ok()); });
  // The same bytes (K then V are adjacent in neither buffer: one copy of K's size, twice).
  const double copy_us = time_us([&] {
    EXPECT_EQ(cudaMemcpyAsync(copy_dst.data(), run.device_k().data(), run.bytes() / 2,
                              cudaMemcpyDeviceToDevice, stream()),
              cudaSuccess);
    EXPECT_EQ(cudaMemcpyAsync(copy_dst.data() + run.bytes() / 2, run.device_k().data(),
                              run.bytes() / 2, cudaMemcpyDeviceToDevice, stream()),
              cudaSuccess);
  });
  const double pack_gbps = 2.0 * run.bytes() / (pack_us * 1e-6) * 1e-9;
  const double copy_gbps = 2.0 * run.bytes() / (copy_us * 1e-6) * 1e-9;
  std::cout << "[ rate     ] token pack " << Describe(c) << ": " << pack_us << " us, " << pack_gbps
            << " GB/s read + written; cudaMemcpy D2D of the same bytes " << copy_us << " us, "
            << copy_gbps << " GB/s; ratio " << pack_gbps / copy_gbps << "\n";
  EXPECT_GT(pack_gbps, 0.0);
}

TEST_F(TokenPackGpuTest, NoTokensLaunchesNothing) {
  TokenPackParams p;
  p.num_kv_heads = 8;
  p.head_dim = 128;
  p.page_size = 16;
  p.num_tokens = 0;
  EXPECT_TRUE(LaunchTokenPack(p, stream()).ok());
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
}

// Bad shapes: InvalidArgument; head_dims the kernel is not built for: Unimplemented; either
// way nothing is written.
TEST_F(TokenPackGpuTest, RejectsBadInputAndWritesNothing) {
  PackRun run;
  ASSERT_NO_FATAL_FAILURE(run.Build({DType::kBF16, 2, 128, 16, 40, 3}, 7));
  const TokenPackParams good = run.DeviceParams();
  auto expect = [&](absl::StatusCode code, const TokenPackParams& p, const char* what) {
    const absl::Status status = LaunchTokenPack(p, stream());
    EXPECT_EQ(status.code(), code) << what << ": " << status;
  };
  TokenPackParams p = good;
  p.dtype = DType::kFP32;
  expect(absl::StatusCode::kInvalidArgument, p, "fp32");
  p = good;
  p.head_dim = 96;  // 192-byte rows: the twin's, not the kernel's
  expect(absl::StatusCode::kUnimplemented, p, "head_dim 96");
  p = good;
  p.num_kv_heads = 0;
  expect(absl::StatusCode::kInvalidArgument, p, "no heads");
  p = good;
  p.page_size = 0;
  expect(absl::StatusCode::kInvalidArgument, p, "page_size 0");
  p = good;
  p.first_position = -3;
  expect(absl::StatusCode::kInvalidArgument, p, "negative first_position");
  p = good;
  p.k = static_cast<const char*>(p.k) + 2;
  expect(absl::StatusCode::kInvalidArgument, p, "misaligned k");
  p = good;
  p.v_pages = nullptr;
  expect(absl::StatusCode::kInvalidArgument, p, "null v_pages");
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  EXPECT_TRUE(SamePool(run.DevicePool(), run.HostPool()));
}

}  // namespace
}  // namespace kvtier
