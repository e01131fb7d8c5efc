// Flag values the command-line tools share: what the machine offers and the choice of backend
// from a --backend flag (auto, cuda or host), and the block index from an --index flag.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/base/backend_kind.h"
#include "runtime/core/options.h"

namespace kvtier::tools {

struct DeviceFacts {
  bool cuda_built = false;     // KVTIER_WITH_CUDA
  int cuda_devices = 0;        // usable devices
  int64_t free_gpu_bytes = 0;  // on the chosen device (0 when unknown)
};

// The facts of this process: CudaDeviceCount() and QueryGpu(device).
DeviceFacts QueryDeviceFacts(int device);

// Parses a --backend value: true and `*backend` set for "cuda" and "host"; for "auto", CUDA
// when this build has it and a device is visible, else host (`*is_auto` says which was given).
// False for any other name (nothing set).
bool ParseBackend(absl::string_view name, const DeviceFacts& facts, Backend* backend,
                  bool* is_auto);

// OK when `backend` can run on this machine: FailedPrecondition, in the words of `tool`
// ("kvtier-replay"), for the CUDA backend in a build without CUDA or without device `device`.
absl::Status CheckBackendAvailable(Backend backend, const DeviceFacts& facts, int device,
                                   absl::string_view tool);

// "cuda" or "host".
const char* BackendName(Backend backend);

// Parses an --index value: "page_bounds" or "wave" (IndexKindName's names); false otherwise
// (nothing set).
bool ParseIndexKind(absl::string_view name, IndexKind* index);

}  // namespace kvtier::tools
