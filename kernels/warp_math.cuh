// Device helpers that many kernels share: KV elements as float, and a warp's sum. Internal to
// kernels/.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace kvtier::internal {

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }

// The sum over the warp's 32 lanes, on every lane (an xor butterfly: offsets 16, 8, .. 1).
__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset >= 1; offset /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, offset);
  return x;
}

}  // namespace kvtier::internal
