// What every GPU test shares: assertion macros for absl::Status, StatusOr and CUDA errors,
// synchronous copies of std::vector to and from device memory, and fixtures that skip (with
// a reason naming what they cover) when no CUDA device is present. Header-only; for test
// code built with KVTIER_WITH_CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/status.h"

// `ASSERT_OK(LaunchX(p, stream));`: a fatal failure of the calling test, with the expression
// and its status, when the absl::Status is not OK.
#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const absl::Status status_ = (expr);                   \
    ASSERT_TRUE(status_.ok()) << #expr << ": " << status_; \
  } while (false)

// `ASSERT_CUDA_OK(cudaMemset(...));`: a fatal failure, with the call and the CUDA error's
// text, when the runtime call does not return cudaSuccess.
#define ASSERT_CUDA_OK(call)                                                       \
  do {                                                                             \
    const cudaError_t error_ = (call);                                             \
    ASSERT_EQ(error_, cudaSuccess) << #call << ": " << cudaGetErrorString(error_); \
  } while (false)

// `ASSERT_OK_AND_ASSIGN(DeviceBuffer b, DeviceBuffer::Allocate(n));`: the StatusOr's value
// into `lhs`, or a fatal failure of the calling test with its status.
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  ASSERT_OK_AND_ASSIGN_IMPL(KVTIER_INTERNAL_CONCAT(status_or_, __COUNTER__), lhs, rexpr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                              \
  ASSERT_TRUE(tmp.ok()) << tmp.status();           \
  lhs = *std::move(tmp)

namespace kvtier {

// Device copy of a host vector (test setup: synchronous). At least one byte is allocated, so
// an empty vector still gives a non-null address. Failures are non-fatal test failures.
template <typename T>
DeviceBuffer Upload(const std::vector<T>& host) {
  auto buffer = DeviceBuffer::Allocate(std::max<size_t>(1, host.size() * sizeof(T)));
  EXPECT_TRUE(buffer.ok()) << buffer.status();
  if (!host.empty()) {
    EXPECT_EQ(
        cudaMemcpy(buffer->data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
        cudaSuccess);
  }
  return std::move(*buffer);
}

// The first `n` elements of `buffer` (synchronous). Failures are non-fatal test failures.
template <typename T>
std::vector<T> Download(const DeviceBuffer& buffer, size_t n) {
  std::vector<T> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), buffer.data(), n * sizeof(T), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

// Base of a GPU test fixture: every test is skipped with "no CUDA device: <subject> skipped"
// when no device is present; otherwise device 0 is made current. `Base` is ::testing::Test
// or a ::testing::TestWithParam<...>. A fixture that overrides SetUp calls this one first and
// returns if IsSkipped() or HasFatalFailure().
template <typename Base = ::testing::Test>
class GpuTestBase : public Base {
 protected:
  // `subject` names what the fixture's tests cover, e.g. "GPU append tests".
  explicit GpuTestBase(const char* subject) : subject_(subject) {}

  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device: " << subject_ << " skipped";
    ASSERT_CUDA_OK(cudaSetDevice(0));
  }

 private:
  const char* subject_;
};

// GpuTestBase plus a non-blocking stream created for each test (stream_, or stream()).
template <typename Base = ::testing::Test>
class GpuStreamTestBase : public GpuTestBase<Base> {
 protected:
  explicit GpuStreamTestBase(const char* subject) : GpuTestBase<Base>(subject) {}

  void SetUp() override {
    GpuTestBase<Base>::SetUp();
    if (this->IsSkipped() || this->HasFatalFailure()) return;
    ASSERT_OK_AND_ASSIGN(stream_, CudaStream::Create());
  }

  cudaStream_t stream() const { return stream_.get(); }

  CudaStream stream_;
};

using GpuTest = GpuTestBase<>;
using GpuStreamTest = GpuStreamTestBase<>;

}  // namespace kvtier
