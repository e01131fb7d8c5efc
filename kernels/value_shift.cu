// The value-shift kernels on the GPU (contracts in value_shift.h).
//
// ValueKeyCovariance: a block per run of pages (kRunTokens tokens' worth, at least one page)
// (entries h, h + S, h + 2S, ... of the batch, S = item_stride, usually one item's) and 128 x 128
// tile of the D x D sum. Per page, 16 tokens at a time: a half-warp a token finds its part (the
// nearer part mean key) and writes its deviations from the part's means to shared memory in fp32;
// then each thread adds its 8 x 8 (4 x 4 at D 64) outputs dv dk^T over the 16 tokens with fp32
// FMAs. Outputs go to the item's statistics by atomics when the run ends or moves to another item.
// ValueShift: a block per item, a warp per row of the sum at a time, the G query rows in
// shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/value_shift.h"
#include "kernels/warp_math.cuh"

namespace kvtier {
namespace {

using internal::ToFloat;
using internal::WarpSum;

constexpr int kThreads = 256;
constexpr int kRunTokens = 512;  // a block adds up pages of this many tokens before it writes
constexpr int kTokenTile = 16;   // tokens staged at a time: a half-warp each
constexpr int kMaxTile = 128;    // a block's tile of the sum: at most 128 x 128

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads)
    ValueKeyCovarianceKernel(ValueKeyCovarianceParams p, int64_t columns, int run_pages) {
  constexpr int kTile = kDim < kMaxTile ? kDim : kMaxTile;
  constexpr int kTiles = kDim / kTile;
  constexpr int kPer = kTile / 16;  // outputs a thread along each side
  __shared__ float key_mean[2][kDim], value_mean[2][kDim];
  __shared__ float dk[kTokenTile][kDim], dv[kTokenTile][kDim];

  const int64_t column = blockIdx.x % columns;  // entries column, column + S, ...
  const int64_t chunk = blockIdx.x / columns;
  const int tile_row = static_cast<int>(blockIdx.y) / kTiles;  // value channels
  const int tile_col = static_cast<int>(blockIdx.y) % kTiles;  // key channels
  const int row0 = tile_row * kTile, col0 = tile_col * kTile;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int lane = threadIdx.x % 32;
  const bool first_tile = blockIdx.y == 0;  // adds the key squares and the token count

  float acc[kPer][kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = 0.0f;
  }
  float key_square = 0.0f;  // this thread's share of sum |dk|^2
  int tokens = 0;           // counted since the last write
  float* target = nullptr;  // the statistics the sums go to

  auto flush = [&]() {
    if (target == nullptr) return;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        atomicAdd(target + int64_t{row0 + ty + 16 * i} * kDim + col0 + tx + 16 * j, acc[i][j]);
        acc[i][j] = 0.0f;
      }
    }
    if (first_tile) {
      const float square = WarpSum(key_square);
      if (lane == 0) atomicAdd(target + int64_t{kDim} * kDim, square);
      if (threadIdx.x == 0)
        atomicAdd(target + int64_t{kDim} * kDim + 1, static_cast<float>(tokens));
    }
    key_square = 0.0f;
    tokens = 0;
  };

  const int parts = p.centroid_parts == 2 ? 2 : 1;
  for (int r = 0; r < run_pages; ++r) {
    const int64_t j = (chunk * run_pages + r) * columns + column;
    if (j >= p.num_pages) break;
    float* stats = p.stats[j];
    if (p.tokens[j] != p.page_size || stats == nullptr) continue;  // block-uniform
    if (stats != target) {
      flush();
      target = stats;
    }
    __syncthreads();  // the previous page's means and tiles are no longer read
    const T* km = static_cast<const T*>(p.key_mean[j]);
    const T* vm = static_cast<const T*>(p.value_mean[j]);
    for (int i = threadIdx.x; i < parts * kDim; i += kThreads) {
      key_mean[i / kDim][i % kDim] = ToFloat(km[i]);
      value_mean[i / kDim][i % kDim] = ToFloat(vm[i]);
    }
    const bool two = parts == 2 && p.count[j][1] > 0;
    const T* keys = static_cast<const T*>(p.k_pages[j]);
    const T* values = static_cast<const T*>(p.v_pages[j]);
    __syncthreads();
    for (int t0 = 0; t0 < p.page_size; t0 += kTokenTile) {
      const int t = t0 + ty;
      const bool in = t < p.page_size;
      // The token's part: 16 strided partial distances, then the half-warp's butterfly.
      float d0 = 0.0f, d1 = 0.0f;
      for (int d = tx; d < kDim; d += 16) {
        const float k = in ? ToFloat(keys[int64_t{t} * kDim + d]) : 0.0f;
        dk[ty][d] = k;
        const float e0 = __fsub_rn(k, key_mean[0][d]);
        d0 = __fadd_rn(d0, __fmul_rn(e0, e0));
        if (two) {
          const float e1 = __fsub_rn(k, key_mean[1][d]);
          d1 = __fadd_rn(d1, __fmul_rn(e1, e1));
        }
      }
#pragma unroll
      for (int offset = 8; offset >= 1; offset /= 2) {
        d0 = __fadd_rn(d0, __shfl_xor_sync(0xFFFFFFFFu, d0, offset));
        d1 = __fadd_rn(d1, __shfl_xor_sync(0xFFFFFFFFu, d1, offset));
      }
      const int part = two && d1 < d0 ? 1 : 0;
      for (int d = tx; d < kDim; d += 16) {
        if (in) {
          const float k = __fsub_rn(dk[ty][d], key_mean[part][d]);
          dk[ty][d] = k;
          dv[ty][d] = __fsub_rn(ToFloat(values[int64_t{t} * kDim + d]), value_mean[part][d]);
          key_square = fmaf(k, k, key_square);
        } else {
          dk[ty][d] = 0.0f;
          dv[ty][d] = 0.0f;
        }
      }
      __syncthreads();
#pragma unroll 4
      for (int s = 0; s < kTokenTile; ++s) {
        float a[kPer], b[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          a[i] = dv[s][row0 + ty + 16 * i];
          b[i] = dk[s][col0 + tx + 16 * i];
        }
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
#pragma unroll
          for (int c = 0; c < kPer; ++c) acc[i][c] = fmaf(a[i], b[c], acc[i][c]);
        }
      }
      __syncthreads();  // the tile is read before the next one is staged
    }
    tokens += p.page_size;
  }
  flush();
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads) ValueShiftKernel(ValueShiftParams p) {
  extern __shared__ float q_s[];  // [G][kDim]
  constexpr int kPerLane = kDim / 32;
  const int item = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g_count = p.group_size;
  float* shift = p.shift + int64_t{item} * g_count * kDim;
  const float* stats = p.stats[item];
  const float key_square = stats != nullptr ? stats[int64_t{kDim} * kDim] : 0.0f;
  if (!(key_square > 0.0f) && !isnan(key_square)) {
    for (int i = threadIdx.x; i < g_count * kDim; i += kThreads) shift[i] = 0.0f;
    return;
  }
  const T* q = static_cast<const T*>(p.q) + int64_t{item} * g_count * kDim;
  for (int i = threadIdx.x; i < g_count * kDim; i += kThreads) q_s[i] = ToFloat(q[i]);
  __syncthreads();
  const float factor = p.softmax_scale * static_cast<float>(kDim) / key_square;
  for (int r = warp; r < kDim; r += kThreads / 32) {
    float row[kPerLane];
#pragma unroll
    for (int m = 0; m < kPerLane; ++m) row[m] = stats[int64_t{r} * kDim + lane + 32 * m];
    for (int g = 0; g < g_count; ++g) {
      float dot = 0.0f;
#pragma unroll
      for (int m = 0; m < kPerLane; ++m) dot = fmaf(row[m], q_s[g * kDim + lane + 32 * m], dot);
      dot = WarpSum(dot);
      if (lane == 0) shift[int64_t{g} * kDim + r] = factor * dot;
    }
  }
}

}  // namespace

absl::Status LaunchValueKeyCovariance(const ValueKeyCovarianceParams& p, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateValueKeyCovarianceShape(p));
  if (p.num_pages == 0) return absl::OkStatus();
  const int64_t columns = std::min<int64_t>(p.item_stride, p.num_pages);
  const int64_t rows = (p.num_pages + columns - 1) / columns;
  const int run_pages = std::max(1, kRunTokens / p.page_size);
  const int64_t blocks = columns * ((rows + run_pages - 1) / run_pages);
  if (blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ValueKeyCovarianceParams: ", p.num_pages, " pages exceed one grid"));
  }
  return DispatchInt<64, 128, 256>("head_dim", p.head_dim, [&](auto dim) {
    return DispatchKvDType(p.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      constexpr int kDim = decltype(dim)::value;
      constexpr int kTiles = kDim < kMaxTile ? 1 : kDim / kMaxTile;
      ValueKeyCovarianceKernel<T, kDim>
          <<<dim3(static_cast<unsigned>(blocks), kTiles * kTiles), kThreads, 0, stream>>>(
              p, columns, run_pages);
      KVTIER_RETURN_IF_LAUNCH_FAILED("ValueKeyCovarianceKernel", stream);
      return absl::OkStatus();
    });
  });
}

absl::Status LaunchValueShift(const ValueShiftParams& p, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateValueShiftShape(p));
  if (p.num_items == 0) return absl::OkStatus();
  const size_t smem = sizeof(float) * p.group_size * p.head_dim;
  if (smem > 48 * 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("ValueShiftParams: group_size ", p.group_size, " x head_dim ", p.head_dim,
                     " query rows exceed the kernel's 48 KiB of shared memory"));
  }
  return DispatchInt<64, 128, 256>("head_dim", p.head_dim, [&](auto dim) {
    return DispatchKvDType(p.dtype, [&](auto element) -> absl::Status {
      using T = typename decltype(element)::type;
      constexpr int kDim = decltype(dim)::value;
      ValueShiftKernel<T, kDim><<<p.num_items, kThreads, smem, stream>>>(p);
      KVTIER_RETURN_IF_LAUNCH_FAILED("ValueShiftKernel", stream);
      return absl::OkStatus();
    });
  });
}

}  // namespace kvtier
