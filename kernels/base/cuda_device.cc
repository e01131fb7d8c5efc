#include "kernels/base/cuda_device.h"

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"

#ifdef KVTIER_WITH_CUDA
#include "kernels/base/cuda_check.h"
#endif

namespace kvtier {

int CudaDeviceCount() {
#ifdef KVTIER_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error for later calls
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

absl::StatusOr<GpuInfo> QueryGpu(int device_id) {
#ifdef KVTIER_WITH_CUDA
  const int count = CudaDeviceCount();
  if (device_id < 0 || device_id >= count) {
    return absl::UnavailableError(
        absl::StrCat("no CUDA device ", device_id, " (", count, " devices visible)"));
  }
  cudaDeviceProp prop{};
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device_id));
  GpuInfo info;
  info.device_id = device_id;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.compute_capability_major = prop.major;
  info.compute_capability_minor = prop.minor;
  info.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  char bus_id[32] = {};
  KVTIER_CUDA_RETURN_IF_ERROR(cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device_id));
  info.pci_bus_id = bus_id;
  int previous = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_id));
  size_t free_bytes = 0, total_bytes = 0;
  const cudaError_t mem = cudaMemGetInfo(&free_bytes, &total_bytes);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(previous));
  KVTIER_CUDA_RETURN_IF_ERROR(mem);
  info.free_memory_bytes = static_cast<int64_t>(free_bytes);
  return info;
#else
  return absl::UnavailableError(
      absl::StrCat("no CUDA device ", device_id, ": kvtier was built without CUDA"));
#endif
}

}  // namespace kvtier
