// CUDA runtime errors as absl::Status. Only for code built with KVTIER_WITH_CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/base/status.h"

namespace kvtier {

// A Status naming the failed call, the CUDA error and where it happened. The code follows
// the error: out of memory is ResourceExhausted, bad arguments InvalidArgument, a missing
// device or driver Unavailable, everything else Internal.
absl::Status CudaErrorToStatus(cudaError_t error, const char* call, const char* file, int line);

// After a kernel launch on `stream`: the launch error if any; with KVTIER_SYNC_AFTER_LAUNCH
// also synchronises the stream so an asynchronous fault is reported at this launch.
absl::Status CheckKernelLaunch(const char* kernel, cudaStream_t stream, const char* file, int line);

}  // namespace kvtier

// Evaluates a CUDA runtime call; returns a Status from the enclosing function on failure.
#define KVTIER_CUDA_RETURN_IF_ERROR(call)                                                        \
  do {                                                                                           \
    const cudaError_t kvtier_internal_cuda_error = (call);                                       \
    if (kvtier_internal_cuda_error != cudaSuccess) {                                             \
      return ::kvtier::CudaErrorToStatus(kvtier_internal_cuda_error, #call, __FILE__, __LINE__); \
    }                                                                                            \
  } while (false)

// Put right after `kernel<<<..., stream>>>(...)`.
#define KVTIER_RETURN_IF_LAUNCH_FAILED(kernel_name, stream) \
  KVTIER_RETURN_IF_ERROR(::kvtier::CheckKernelLaunch(kernel_name, stream, __FILE__, __LINE__))
