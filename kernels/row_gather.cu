// Row gather on the GPU (contract in row_gather.h): a memory-bound copy, one warp per
// (row, head), each lane moving 16-byte vectors of the row; the positions are written by the
// warps of the segment's rows.
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/launch.cuh"
#include "kernels/row_gather.h"

namespace kvtier {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__global__ void __launch_bounds__(kThreads) RowGatherKernel(RowGatherParams p) {
  internal::ChainedKernelStart();
  const int64_t warp = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = int64_t{p.num_tokens} * p.num_heads;
  if (warp >= rows) return;
  const int64_t t = warp / p.num_heads;
  const int h = static_cast<int>(warp - t * p.num_heads);
  int64_t from = t;
  const int64_t local = t - p.segment_begin;
  const bool permuted = local >= 0 && local < p.segment_tokens;
  if (permuted) {
    int32_t o = p.order[h][local];
    o = o < 0 ? 0 : (o >= p.segment_tokens ? p.segment_tokens - 1 : o);
    from = p.segment_begin + o;
    if (p.positions != nullptr && lane == 0) {
      p.positions[h][local] = static_cast<int32_t>(p.position_base + o + 1);
    }
  }
  const int vectors = p.row_bytes / 16;
#pragma unroll
  for (int a = 0; a < 2; ++a) {
    if (p.src[a] == nullptr) continue;
    const uint4* src = static_cast<const uint4*>(p.src[a]) + (from * p.num_heads + h) * vectors;
    uint4* dst = static_cast<uint4*>(p.dst[a]) + (t * p.num_heads + h) * vectors;
    for (int v = lane; v < vectors; v += 32) dst[v] = src[v];
  }
}

}  // namespace

absl::Status LaunchRowGather(const RowGatherParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateRowGatherShape(params));
  if (params.num_tokens == 0) return absl::OkStatus();
  const int64_t rows = int64_t{params.num_tokens} * params.num_heads;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("RowGatherParams: ", rows, " rows exceed a grid"));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(RowGatherKernel, static_cast<int>(blocks),
                                                      kThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("RowGatherKernel", stream);
  return absl::OkStatus();
}

}  // namespace kvtier
