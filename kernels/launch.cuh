// Kernel launches that may be chained by Programmatic Dependent Launch (PDL, compute
// capability 9.0+).
//
// A decode step is a chain of a dozen small dependent kernels per layer. With PDL a kernel is
// launched while its predecessor on the stream still runs; its blocks then wait in
// ChainedKernelStart until the predecessor has completed and its memory is visible, so the
// launch latency overlaps the predecessor's tail.
//
// PDL is off unless KVTIER_ENABLE_PDL=1 is in the environment (read once per process): on the
// H100 it did not pay. A 2-layer Llama-3-8B-shaped replay ran 0.72 ms a step with and without
// it at 32K x 24, and 0.46 ms with it against 0.44 ms without at 120K x 6 (one run each).
// The step's time is in its dependent transfers (scoring, then the miss load), not in launch
// gaps; blocks launched early may also hold SM slots that the hot-set attention and the miss
// load on kvtier's other streams could use. Off, LaunchChained is a plain launch and
// ChainedKernelStart a no-op.
//
// Contract: every kernel launched with LaunchChained calls ChainedKernelStart() as its first
// statement, so nothing it reads or writes is touched before its predecessor is done: the
// ordering is the stream's, as with a plain launch.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace kvtier::internal {

// Waits for the kernel before this one on the stream (a no-op when it was launched without
// PDL), then lets the next kernel on the stream launch.
__device__ __forceinline__ void ChainedKernelStart() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// True when KVTIER_ENABLE_PDL is set to "1".
inline bool ChainedLaunchesEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("KVTIER_ENABLE_PDL");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

// The current device's SM count, asked of the runtime once per device (launchers size their
// grids by it on every call).
inline cudaError_t CurrentSmCount(int* sm_count) {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<int> cached[kMaxCachedDevices] = {};  // 0: not asked yet
  int device = 0;
  if (const cudaError_t error = cudaGetDevice(&device); error != cudaSuccess) return error;
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    if (const int known = cached[device].load(std::memory_order_relaxed); known > 0) {
      *sm_count = known;
      return cudaSuccess;
    }
  }
  int count = 0;
  if (const cudaError_t error =
          cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
      error != cudaSuccess) {
    return error;
  }
  if (cacheable) cached[device].store(count, std::memory_order_relaxed);
  *sm_count = count;
  return cudaSuccess;
}

// Launches `kernel` on `stream` like kernel<<<grid, block, shared_bytes, stream>>>(args...),
// with PDL when enabled; returns the launch's error (callers then also run
// KVTIER_RETURN_IF_LAUNCH_FAILED, as after <<<>>>).
template <typename... Params, typename... Args>
cudaError_t LaunchChained(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = ChainedLaunchesEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace kvtier::internal
