#include "kernels/base/cuda_check.h"

#include "absl/strings/str_cat.h"

namespace kvtier {

absl::Status CudaErrorToStatus(cudaError_t error, const char* call, const char* file, int line) {
  // A failed runtime call also sets the thread's last error; clear it, so that the next
  // kernel launch check does not report this failure as its own (a sticky error stays).
  if (error != cudaSuccess) (void)cudaGetLastError();
  const std::string message = absl::StrCat(call, " failed with ", cudaGetErrorName(error), " (",
                                           cudaGetErrorString(error), ") at ", file, ":", line);
  switch (error) {
    case cudaSuccess:
      return absl::OkStatus();
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidPitchValue:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidMemcpyDirection:
      return absl::InvalidArgumentError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNotSupported:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CheckKernelLaunch(const char* kernel, cudaStream_t stream, const char* file,
                               int line) {
  const cudaError_t launch = cudaGetLastError();
  if (launch != cudaSuccess) {
    return CudaErrorToStatus(launch, absl::StrCat("launch of ", kernel).c_str(), file, line);
  }
#ifdef KVTIER_SYNC_AFTER_LAUNCH
  const cudaError_t run = cudaStreamSynchronize(stream);
  if (run != cudaSuccess) {
    return CudaErrorToStatus(run, absl::StrCat("execution of ", kernel).c_str(), file, line);
  }
#endif
  return absl::OkStatus();
}

}  // namespace kvtier
