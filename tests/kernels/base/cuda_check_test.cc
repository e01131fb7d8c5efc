// CUDA error mapping. Every error here is a literal cudaError_t value, so the test needs
// neither a GPU nor a driver.

#include "kernels/base/cuda_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(CudaErrorToStatusTest, SuccessIsOk) {
  EXPECT_TRUE(CudaErrorToStatus(cudaSuccess, "cudaMemcpy(dst, src, n, kind)", "x.cc", 1).ok());
}

struct Mapping {
  cudaError_t error;
  const char* name;
  absl::StatusCode code;
};

void PrintTo(const Mapping& m, std::ostream* os) { *os << m.name; }

class CudaErrorMappingTest : public testing::TestWithParam<Mapping> {};

TEST_P(CudaErrorMappingTest, CodeAndMessage) {
  const Mapping& m = GetParam();
  const absl::Status status =
      CudaErrorToStatus(m.error, "cudaMalloc(&pointer, bytes)", "runtime/foo.cc", 123);
  EXPECT_EQ(status.code(), m.code) << status;
  const std::string message = Message(status);
  EXPECT_THAT(message, HasSubstr("cudaMalloc(&pointer, bytes)"));
  EXPECT_THAT(message, HasSubstr(m.name));
  EXPECT_THAT(message, HasSubstr(cudaGetErrorString(m.error)));
  EXPECT_THAT(message, HasSubstr("runtime/foo.cc:123"));
}

INSTANTIATE_TEST_SUITE_P(
    Errors, CudaErrorMappingTest,
    testing::Values(
        Mapping{cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation",
                absl::StatusCode::kResourceExhausted},
        Mapping{cudaErrorInvalidValue, "cudaErrorInvalidValue", absl::StatusCode::kInvalidArgument},
        Mapping{cudaErrorInvalidDevice, "cudaErrorInvalidDevice",
                absl::StatusCode::kInvalidArgument},
        Mapping{cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer",
                absl::StatusCode::kInvalidArgument},
        Mapping{cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
                absl::StatusCode::kInvalidArgument},
        Mapping{cudaErrorNoDevice, "cudaErrorNoDevice", absl::StatusCode::kUnavailable},
        Mapping{cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
                absl::StatusCode::kUnavailable},
        Mapping{cudaErrorNotSupported, "cudaErrorNotSupported", absl::StatusCode::kUnavailable},
        Mapping{cudaErrorIllegalAddress, "cudaErrorIllegalAddress", absl::StatusCode::kInternal},
        Mapping{cudaErrorLaunchFailure, "cudaErrorLaunchFailure", absl::StatusCode::kInternal},
        Mapping{cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle",
                absl::StatusCode::kInternal}),
    [](const testing::TestParamInfo<Mapping>& info) {
      return std::string(info.param.name).substr(std::string("cudaError").size());
    });

// ---------------------------------------------------------------------------------------
// KVTIER_CUDA_RETURN_IF_ERROR

int evaluations = 0;
cudaError_t Fake(cudaError_t error) {
  ++evaluations;
  return error;
}

int failing_line = 0;

absl::Status FailsOnSecondCall(int& reached) {
  reached = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(Fake(cudaSuccess));
  reached = 1;
  failing_line = __LINE__ + 1;
  KVTIER_CUDA_RETURN_IF_ERROR(Fake(cudaErrorInvalidValue));
  reached = 2;
  return absl::OkStatus();
}

TEST(CudaReturnIfErrorTest, ReturnsTheFailureWithCallFileAndLine) {
  evaluations = 0;
  int reached = -1;
  const absl::Status status = FailsOnSecondCall(reached);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(reached, 1);
  EXPECT_EQ(evaluations, 2);  // each call evaluated once
  const std::string message = Message(status);
  EXPECT_THAT(message, HasSubstr("Fake(cudaErrorInvalidValue)"));
  EXPECT_THAT(message, HasSubstr("cudaErrorInvalidValue"));
  EXPECT_THAT(message, HasSubstr(absl::StrCat("cuda_check_test.cc:", failing_line)));
}

absl::Status AllSucceed(int& reached) {
  reached = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(Fake(cudaSuccess));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSuccess);
  reached = 1;
  return absl::OkStatus();
}

TEST(CudaReturnIfErrorTest, ContinuesOnSuccess) {
  evaluations = 0;
  int reached = -1;
  EXPECT_TRUE(AllSucceed(reached).ok());
  EXPECT_EQ(reached, 1);
  EXPECT_EQ(evaluations, 1);
}

absl::Status OutOfMemory() {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaErrorMemoryAllocation);
  return absl::OkStatus();
}

TEST(CudaReturnIfErrorTest, LiteralErrorValue) {
  const absl::Status status = OutOfMemory();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Message(status), HasSubstr("cudaErrorMemoryAllocation failed with "
                                         "cudaErrorMemoryAllocation"));
}

}  // namespace
}  // namespace kvtier
