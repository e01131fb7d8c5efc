// Kernel launches chained by Programmatic Dependent Launch (PDL, compute capability 9.0+).
//
// A decode step is a chain of a dozen small dependent kernels per layer. Launched the plain
// way, each starts only after its predecessor has finished and the launch has gone through
// the front end: about 2.4 us between kernels on the H100 (a 2-layer replay, 32K x 24: 352 us
// a layer, 316 us of it inside kernels). With PDL a kernel is launched while its predecessor
// on the stream still runs; its blocks then wait in ChainedKernelStart until the predecessor
// has completed and its memory is visible, so the launch latency overlaps the predecessor's
// tail.
//
// Contract: every kernel launched with LaunchChained calls ChainedKernelStart() as its first
// statement, so nothing it reads or writes is touched before its predecessor is done: the
// ordering is the stream's, as with a plain launch. On devices below 9.0 both are plain
// launches. KVTIER_DISABLE_PDL=1 in the environment turns PDL off (for A/B measurements and
// as a fallback); it is read once per process.
#pragma once

#include <cuda_runtime.h>

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

// True unless KVTIER_DISABLE_PDL is set to something other than "0".
inline bool ChainedLaunchesEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("KVTIER_DISABLE_PDL");
    return value == nullptr || std::strcmp(value, "0") == 0 || value[0] == '\0';
  }();
  return enabled;
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
