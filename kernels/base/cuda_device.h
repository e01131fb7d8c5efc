// What the process can see of CUDA devices. Compiles with and without KVTIER_WITH_CUDA so
// callers (the probe, tests, the runtime's backend choice) need no #ifdef.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kvtier {

struct GpuInfo {
  int device_id = 0;
  std::string name;
  int sm_count = 0;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = 0;
  std::string pci_bus_id;  // "0000:3b:00.0", as hwloc expects it
};

// Number of usable CUDA devices: 0 when built without CUDA, with no driver or no device.
int CudaDeviceCount();

// Properties of `device_id`; Unavailable when there is no such device (or no CUDA build).
absl::StatusOr<GpuInfo> QueryGpu(int device_id);

}  // namespace kvtier
