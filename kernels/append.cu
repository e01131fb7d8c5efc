// Append and write-back on the GPU.
//
// Write-back design: a kernel that stores straight into mapped pinned host memory
// (zero-copy writes), one launch for every page of a step, rather than copy-engine copies
// on a copy stream:
//   - the pages of a step are scattered on both sides (window pages in HBM, frames in the
//     host arena), and a copy per page costs ~2.8 us of issue time (../shared/GPU.md): 512
//     pages (K and V of 32 sequences x 8 KV heads) would take ~1.4 ms of host time per
//     step and defeat graph capture of a step whose page list changes;
//   - the kernel reads its list from device memory, so a fixed-capacity list whose unused
//     entries are null keeps one launch shape for every step (graph replay), and no host
//     thread issues anything per page;
//   - stores to host memory are posted PCIe writes: a thread does not wait for them, so a
//     few blocks keep the link busy and the kernel leaves the SMs to attention, with which
//     it overlaps on its own stream (ordered by events, append.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/append.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"

namespace kvtier {
namespace {

constexpr int kAppendThreads = 256;
constexpr int kWriteBackThreads = 128;
constexpr int kWriteBackUnroll = 4;

// One thread per 16-byte vector of a row; blockIdx.y selects K (0) or V (1).
template <int kRowVectors>
__global__ void __launch_bounds__(kAppendThreads) AppendKernel(AppendParams p) {
  internal::ChainedKernelStart();
  const int64_t vector = int64_t{blockIdx.x} * kAppendThreads + threadIdx.x;
  const int64_t entries = int64_t{p.batch} * p.num_kv_heads;
  if (vector >= entries * kRowVectors) return;
  const int64_t entry = vector / kRowVectors;
  const int32_t column = static_cast<int32_t>(vector - entry * kRowVectors);
  const int32_t row = p.rows[entry / p.num_kv_heads];
  if (row < 0 || row >= p.page_size) return;  // contract violation: write nothing
  const bool is_v = blockIdx.y != 0;
  const auto* src = static_cast<const uint4*>(is_v ? p.v_new : p.k_new);
  auto* page = static_cast<uint4*>((is_v ? p.v_pages : p.k_pages)[entry]);
  page[int64_t{row} * kRowVectors + column] = src[vector];
}

// Block (i, 0) copies entry i's K page, block (i, 1) its V page.
__global__ void __launch_bounds__(kWriteBackThreads) WriteBackKernel(WriteBackParams p) {
  internal::ChainedKernelStart();
  const int32_t entry = blockIdx.x;
  if (p.k_dst[entry] == nullptr) return;  // nothing to write back for this entry
  const bool is_v = blockIdx.y != 0;
  const auto* src = static_cast<const uint4*>(is_v ? p.v_src[entry] : p.k_src[entry]);
  auto* dst = static_cast<uint4*>(is_v ? p.v_dst[entry] : p.k_dst[entry]);
  const int64_t vectors = p.page_bytes / 16;
  constexpr int64_t kTile = int64_t{kWriteBackThreads} * kWriteBackUnroll;
  for (int64_t base = threadIdx.x; base < vectors; base += kTile) {
    uint4 value[kWriteBackUnroll];
#pragma unroll
    for (int k = 0; k < kWriteBackUnroll; ++k) {
      const int64_t v = base + k * kWriteBackThreads;
      if (v < vectors) value[k] = src[v];
    }
#pragma unroll
    for (int k = 0; k < kWriteBackUnroll; ++k) {
      const int64_t v = base + k * kWriteBackThreads;
      if (v < vectors) dst[v] = value[k];
    }
  }
}

template <int kRowVectors>
absl::Status LaunchAppendTyped(const AppendParams& params, cudaStream_t stream) {
  const int64_t vectors = int64_t{params.batch} * params.num_kv_heads * kRowVectors;
  const int64_t blocks = (vectors + kAppendThreads - 1) / kAppendThreads;
  if (blocks > 0x7FFFFFFF) return absl::InvalidArgumentError("append: batch too large");
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(AppendKernel<kRowVectors>,
                                                      dim3(static_cast<unsigned>(blocks), 2),
                                                      kAppendThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("AppendKernel", stream);
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchAppend(const AppendParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateAppendShape(params));
  // Only the row size matters to a copy: bf16 and fp16 share one instantiation per head_dim.
  return DispatchKvDType(params.dtype, [&](auto element) {
    using T = typename decltype(element)::type;
    return DispatchInt<64, 128, 256>("append head_dim", params.head_dim, [&](auto head_dim) {
      constexpr int kRowVectors = decltype(head_dim)::value * static_cast<int>(sizeof(T)) / 16;
      if (params.batch == 0) return absl::OkStatus();
      return LaunchAppendTyped<kRowVectors>(params, stream);
    });
  });
}

absl::Status LaunchWriteBack(const WriteBackParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateWriteBackShape(params));
  if (params.num_pages == 0) return absl::OkStatus();
  KVTIER_CUDA_RETURN_IF_ERROR(
      internal::LaunchChained(WriteBackKernel, dim3(static_cast<unsigned>(params.num_pages), 2),
                              kWriteBackThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("WriteBackKernel", stream);
  return absl::OkStatus();
}

}  // namespace kvtier
