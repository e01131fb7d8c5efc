#include "tools/common/tool_flags.h"

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_device.h"

namespace kvtier::tools {

DeviceFacts QueryDeviceFacts(int device) {
  DeviceFacts facts;
#ifdef KVTIER_WITH_CUDA
  facts.cuda_built = true;
#endif
  facts.cuda_devices = CudaDeviceCount();
  if (facts.cuda_devices > 0) {
    if (absl::StatusOr<GpuInfo> info = QueryGpu(device); info.ok()) {
      facts.free_gpu_bytes = info->free_memory_bytes;
    }
  }
  return facts;
}

bool ParseBackend(absl::string_view name, const DeviceFacts& facts, Backend* backend,
                  bool* is_auto) {
  if (name == "auto") {
    *is_auto = true;
    *backend = facts.cuda_built && facts.cuda_devices > 0 ? Backend::kCuda : Backend::kHost;
  } else if (name == "cuda") {
    *is_auto = false;
    *backend = Backend::kCuda;
  } else if (name == "host") {
    *is_auto = false;
    *backend = Backend::kHost;
  } else {
    return false;
  }
  return true;
}

absl::Status CheckBackendAvailable(Backend backend, const DeviceFacts& facts, int device,
                                   absl::string_view tool) {
  if (backend != Backend::kCuda) return absl::OkStatus();
  if (!facts.cuda_built) {
    return absl::FailedPreconditionError(
        absl::StrCat("--backend=cuda: this ", tool,
                     " was built without CUDA (KVTIER_WITH_CUDA=OFF); use --backend=host or "
                     "auto"));
  }
  if (facts.cuda_devices <= device) {
    return absl::FailedPreconditionError(absl::StrCat("--backend=cuda: no CUDA device ", device,
                                                      " (", facts.cuda_devices,
                                                      " visible); use --backend=host or auto"));
  }
  return absl::OkStatus();
}

const char* BackendName(Backend backend) { return backend == Backend::kCuda ? "cuda" : "host"; }

bool ParseIndexKind(absl::string_view name, IndexKind* index) {
  for (IndexKind kind : {IndexKind::kPageBounds, IndexKind::kWave}) {
    if (name == IndexKindName(kind)) {
      *index = kind;
      return true;
    }
  }
  return false;
}

}  // namespace kvtier::tools
