// Token pack on the GPU: a memory-bound scatter copy. Thread i of the launch moves 16-byte
// vector i of k and of v (so a warp's loads are 512 contiguous bytes of each) to the same
// place in the K and V pages: vector i is column i % V of row i / V = (token, KV head), and a
// row goes whole to one page, so a warp's stores are whole rows (>= 128 contiguous bytes).
// Each thread first issues the loads of kUnroll vectors of K and of V, then computes their
// destinations (one page pointer per vector, read through the read-only cache: the
// neighbouring threads of a row read the same entry) and stores: enough bytes in flight per
// SM to run near the HBM copy rate. The two runtime divisions per vector (by H, by P) are
// multiply-high with precomputed magic numbers.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/token_pack.h"

namespace kvtier {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr uint32_t kTile = kThreads * kUnroll;  // vectors of K (and of V) per block
// Kernel limits, so that every index below fits in 31 bits: runs are cut into launches of at
// most kMaxLaunchVectors vectors of K; first_row + token < 2^20 + 2^30.
constexpr int32_t kMaxKernelPageSize = 1 << 20;
constexpr int32_t kMaxKernelHeads = 1 << 20;
constexpr uint32_t kMaxLaunchVectors = 1u << 30;

// Unsigned division by a runtime divisor for dividends below 2^31 (Granlund-Montgomery):
// with l = ceil(log2 d), m = ceil(2^(31 + l) / d), n / d = (n * m) >> (31 + l).
struct FastDivisor {
  uint32_t divisor = 1;
  uint32_t multiplier = 0;  // 0: divisor 1
  uint32_t shift = 0;       // l - 1
};

FastDivisor MakeFastDivisor(uint32_t d) {
  FastDivisor f;
  f.divisor = d;
  if (d <= 1) return f;
  uint32_t l = 0;
  while ((uint64_t{1} << l) < d) ++l;
  f.multiplier = static_cast<uint32_t>(((uint64_t{1} << (31 + l)) + d - 1) / d);
  f.shift = l - 1;
  return f;
}

__device__ __forceinline__ uint32_t Divide(uint32_t n, const FastDivisor& f) {
  return f.multiplier == 0 ? n : __umulhi(n, f.multiplier) >> f.shift;
}

// One launch: tokens [0, vectors / (H * V)) of a (sub-)run.
struct PackLaunch {
  const uint4* k;
  const uint4* v;
  void* const* k_pages;  // entry 0: the launch's first page, KV head 0
  void* const* v_pages;
  FastDivisor heads;
  FastDivisor page_size;
  uint32_t first_row;  // row of token 0 in its page
  uint32_t vectors;    // of K (and of V)
};

__device__ __forceinline__ uint4* LoadPage(void* const* pages, uint64_t entry) {
  return reinterpret_cast<uint4*>(
      __ldg(reinterpret_cast<const unsigned long long*>(pages) + entry));
}

template <int kRowVectors>
__global__ void __launch_bounds__(kThreads) TokenPackKernel(const PackLaunch a) {
  internal::ChainedKernelStart();
  const uint32_t first = blockIdx.x * kTile + threadIdx.x;
  uint4 k[kUnroll], v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint32_t i = first + u * kThreads;
    if (i < a.vectors) {
      k[u] = __ldg(a.k + i);
      v[u] = __ldg(a.v + i);
    }
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint32_t i = first + u * kThreads;
    if (i < a.vectors) {
      const uint32_t row = i / kRowVectors;
      const uint32_t column = i % kRowVectors;
      const uint32_t token = Divide(row, a.heads);
      const uint32_t head = row - token * a.heads.divisor;
      const uint32_t position = a.first_row + token;
      const uint32_t page = Divide(position, a.page_size);
      const uint32_t page_row = position - page * a.page_size.divisor;
      const uint64_t entry = uint64_t{page} * a.heads.divisor + head;
      const uint32_t offset = page_row * kRowVectors + column;
      LoadPage(a.k_pages, entry)[offset] = k[u];
      LoadPage(a.v_pages, entry)[offset] = v[u];
    }
  }
}

template <int kRowVectors>
absl::Status LaunchTyped(const TokenPackParams& p, cudaStream_t stream) {
  const int64_t heads = p.num_kv_heads;
  const int64_t row_vectors = heads * kRowVectors;                    // per token
  const int64_t tokens_per_launch = kMaxLaunchVectors / row_vectors;  // >= 1 by the limits
  const int64_t first_page = p.first_position / p.page_size;
  const FastDivisor head_divisor = MakeFastDivisor(static_cast<uint32_t>(heads));
  const FastDivisor page_divisor = MakeFastDivisor(static_cast<uint32_t>(p.page_size));
  for (int64_t t0 = 0; t0 < p.num_tokens; t0 += tokens_per_launch) {
    const int64_t tokens = std::min<int64_t>(tokens_per_launch, p.num_tokens - t0);
    const int64_t position = p.first_position + t0;
    const int64_t entry = (position / p.page_size - first_page) * heads;
    PackLaunch a;
    a.k = static_cast<const uint4*>(p.k) + t0 * row_vectors;
    a.v = static_cast<const uint4*>(p.v) + t0 * row_vectors;
    a.k_pages = p.k_pages + entry;
    a.v_pages = p.v_pages + entry;
    a.heads = head_divisor;
    a.page_size = page_divisor;
    a.first_row = static_cast<uint32_t>(position % p.page_size);
    a.vectors = static_cast<uint32_t>(tokens * row_vectors);
    const uint32_t blocks = (a.vectors + kTile - 1) / kTile;
    KVTIER_CUDA_RETURN_IF_ERROR(
        internal::LaunchChained(TokenPackKernel<kRowVectors>, blocks, kThreads, 0, stream, a));
    KVTIER_RETURN_IF_LAUNCH_FAILED("TokenPackKernel", stream);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchTokenPack(const TokenPackParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateTokenPackShape(params));
  if (params.page_size > kMaxKernelPageSize || params.num_kv_heads > kMaxKernelHeads) {
    return absl::UnimplementedError(absl::StrCat(
        "token pack: page_size ", params.page_size, " and num_kv_heads ", params.num_kv_heads,
        " must each be at most ", kMaxKernelPageSize, " for the kernel"));
  }
  // Only the row size matters to a copy: bf16 and fp16 share one instantiation per head_dim.
  return DispatchKvDType(params.dtype, [&](auto element) {
    using T = typename decltype(element)::type;
    return DispatchInt<64, 128, 256>("token pack head_dim", params.head_dim, [&](auto head_dim) {
      constexpr int kRowVectors = decltype(head_dim)::value * static_cast<int>(sizeof(T)) / 16;
      if (params.num_tokens == 0) return absl::OkStatus();
      return LaunchTyped<kRowVectors>(params, stream);
    });
  });
}

}  // namespace kvtier
