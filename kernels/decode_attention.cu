// Paged decode attention on tensor cores, flash-decoding style.
//
// One thread block per (item, split). The G query heads of an item fill the 16 rows of an
// m16n8k16 tile (rows >= G are zero and never written), so one kernel serves G = 1..16 with
// no per-G instantiation. Each warp of the block streams its own 16-token chunks (every
// kWarps-th chunk of the block's run) through a private cp.async pipeline into shared
// memory: S = Q K^T and O += P V run on tensor cores with fp32 accumulation and an online
// softmax in registers. Decode reads every K/V byte once, so the kernel is a memory stream;
// the pipeline keeps (kStages - 1) chunks per warp in flight to cover HBM latency. At the end
// the warps' partial results are combined through shared memory, and a block writes either
// the final output (one split) or an fp32 partial that the split-K merge reduces.
//
// Page size is a runtime value (16, 32 or 64): a 16-token chunk never straddles a page, so
// only the chunk's page pointer and row offset depend on it. dtype x head_dim are template
// parameters, and whether per-chunk log-sum-exps are written (chunk_lse): 12 instantiations,
// so the kernel without chunk_lse is the same code as before the option existed.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/cp_async.cuh"
#include "kernels/decode_attention.h"
#include "kernels/dispatch.cuh"
#include "kernels/launch.cuh"
#include "kernels/mma.cuh"

namespace kvtier {
namespace {

using internal::LdMatrixX4;
using internal::LdMatrixX4Trans;
using internal::Mma;
using internal::PackPair;

using internal::CpAsync16;
using internal::CpAsyncCommit;
using internal::CpAsyncWait;
using internal::SharedAddress;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 16;            // tokens per warp step: the k extent of one P.V mma
constexpr int kRows = 16;             // query rows of the mma tile: G <= 16
constexpr int kMinSplitTokens = 256;  // ChoosePagedDecodeSplits keeps splits at least this long
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int kHeadDim>
struct Config {
  // Chunks each warp keeps in flight is kStages - 1.
  static constexpr int kStages = kHeadDim <= 64 ? 4 : (kHeadDim <= 128 ? 3 : 2);
  static constexpr int kRowBytes = kHeadDim * 2;  // one token of K or V
  static constexpr int kVectorsPerRow = kRowBytes / 16;
  static constexpr int kTileBytes = kChunk * kRowBytes;  // K or V of one chunk
  static constexpr int kStageBytes = 2 * kTileBytes;
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static constexpr int kQBytes = kRows * kRowBytes;
  // The warps' partial outputs for the final combine, rows padded by 8 floats so the
  // float2 stores of one half-warp hit distinct banks; then m and l per warp and row.
  static constexpr int kCombineStride = kHeadDim + 8;
  static constexpr int kCombineBytes = kWarps * kRows * (kCombineStride + 2) * 4;
  static constexpr int kPipeBytes = kWarps * kWarpBytes;
  static constexpr int kSmemBytes =
      kQBytes + (kPipeBytes > kCombineBytes ? kPipeBytes : kCombineBytes);
  static constexpr int kMinBlocksPerSm = kHeadDim <= 64 ? 3 : (kHeadDim <= 128 ? 2 : 1);
  static_assert(kVectorsPerRow >= 8, "the XOR swizzle needs 8 vectors a row");
};

// What the kernel reads from PagedDecodeParams, plus the split-K outputs.
struct KernelParams {
  const void* q;
  const void* const* k_pages;
  const void* const* v_pages;
  const int32_t* page_offsets;
  const int32_t* last_page_tokens;
  int num_items;
  int group_size;
  int page_size;
  int chunk_shift;   // log2(page_size / kChunk)
  float scale_log2;  // softmax_scale * log2(e): logits in base 2
  int num_splits;
  // One split: the final output.
  DType out_dtype;
  void* out;
  float* lse;
  // Several splits: [num_splits, num_items * G, D] and [num_splits, num_items * G].
  float* partial_out;
  float* partial_lse;
  // [page_offsets[num_items] << chunk_shift, G], or null (the kernel then never reads it).
  float* chunk_lse;
};

__device__ __forceinline__ void StoreOutput(DType dtype, void* out, int64_t index, float value) {
  switch (dtype) {
    case DType::kBF16:
      static_cast<__nv_bfloat16*>(out)[index] = __float2bfloat16_rn(value);
      break;
    case DType::kFP16:
      static_cast<__half*>(out)[index] = __float2half_rn(value);
      break;
    case DType::kFP32:
      static_cast<float*>(out)[index] = value;
      break;
  }
}

template <typename T>
__device__ __forceinline__ const T* LoadPointer(const void* const* array, int64_t i) {
  return reinterpret_cast<const T*>(__ldg(reinterpret_cast<const unsigned long long*>(array) + i));
}

// Byte offset of 16-byte vector `v` of row `row` in a swizzled tile: vector v of a row is
// stored at v ^ (row % 8), so the 8 rows an ldmatrix reads at one logical vector fall in 8
// different bank groups.
template <int kHeadDim>
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int v) {
  return static_cast<uint32_t>(row * Config<kHeadDim>::kRowBytes + ((v ^ (row & 7)) << 4));
}

// ---- The attention kernel ----------------------------------------------------------------

template <typename T, int kHeadDim, bool kChunkLse>
__global__ void __launch_bounds__(kThreads, Config<kHeadDim>::kMinBlocksPerSm)
    PagedDecodeKernel(const KernelParams p) {
  internal::ChainedKernelStart();
  using C = Config<kHeadDim>;
  extern __shared__ __align__(128) unsigned char smem[];
  const int item = blockIdx.x;
  const int split = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int group = p.group_size;

  // Q of the item: rows < G from q, the rest zero, swizzled like the K/V tiles.
  {
    const auto* q =
        static_cast<const uint16_t*>(p.q) + static_cast<int64_t>(item) * group * kHeadDim;
    for (int idx = threadIdx.x; idx < kRows * C::kVectorsPerRow; idx += kThreads) {
      const int row = idx / C::kVectorsPerRow;
      const int v = idx % C::kVectorsPerRow;
      uint16_t e[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (row < group) {
#pragma unroll
        for (int k = 0; k < 8; ++k) e[k] = q[row * kHeadDim + v * 8 + k];
      }
      uint4 packed;
      packed.x = e[0] | (static_cast<uint32_t>(e[1]) << 16);
      packed.y = e[2] | (static_cast<uint32_t>(e[3]) << 16);
      packed.z = e[4] | (static_cast<uint32_t>(e[5]) << 16);
      packed.w = e[6] | (static_cast<uint32_t>(e[7]) << 16);
      *reinterpret_cast<uint4*>(smem + SwizzledOffset<kHeadDim>(row, v)) = packed;
    }
  }

  // This block's run of chunks. The contract keeps last_page_tokens in [1, P]; clamping it
  // keeps a broken caller from reading outside its pages.
  const int32_t page_begin = p.page_offsets[item];
  const int32_t num_pages = p.page_offsets[item + 1] - page_begin;
  int64_t tokens = 0;
  if (num_pages > 0) {
    const int last = min(max(p.last_page_tokens[item], 1), p.page_size);
    tokens = static_cast<int64_t>(num_pages - 1) * p.page_size + last;
  }
  const int chunks = static_cast<int>((tokens + kChunk - 1) / kChunk);
  const int per_split = (chunks + p.num_splits - 1) / p.num_splits;
  const int chunk_begin = min(split * per_split, chunks);
  const int chunk_end = min(chunk_begin + per_split, chunks);
  // Warp w takes chunks chunk_begin + w, + w + kWarps, ...
  const int my_chunks =
      chunk_end - chunk_begin > warp ? (chunk_end - chunk_begin - warp + kWarps - 1) / kWarps : 0;
  const int chunks_per_page_mask = (1 << p.chunk_shift) - 1;
  // chunk_lse row of the item's chunk 0: chunks never straddle pages, so the item's chunk c
  // is chunk c % (P / 16) of its page c / (P / 16).
  [[maybe_unused]] const int64_t chunk_lse_base = static_cast<int64_t>(page_begin) << p.chunk_shift;
  if constexpr (kChunkLse) {
    // The chunks of the last page past the last token are in no split's run: split 0 marks
    // them empty.
    if (split == 0) {
      const int empty = (num_pages << p.chunk_shift) - chunks;
      for (int idx = threadIdx.x; idx < empty * group; idx += kThreads) {
        p.chunk_lse[(chunk_lse_base + chunks) * group + idx] = -INFINITY;
      }
    }
  }

  unsigned char* const pipe = smem + C::kQBytes + warp * C::kWarpBytes;
  const uint32_t pipe_address = SharedAddress(pipe);
  const uint32_t q_address = SharedAddress(smem);

  // Page pointers of the next chunk to issue, loaded one issue ahead so their latency hides
  // behind a chunk of compute.
  const T* next_k = nullptr;
  const T* next_v = nullptr;
  auto fetch_pointers = [&](int i) {
    if (i < my_chunks) {
      const int chunk = chunk_begin + warp + i * kWarps;
      const int64_t page = page_begin + (chunk >> p.chunk_shift);
      next_k = LoadPointer<T>(p.k_pages, page);
      next_v = LoadPointer<T>(p.v_pages, page);
    }
  };
  // Copies chunk i of this warp into stage i % kStages; rows past the last token are
  // zero-filled without being read (zero V rows keep P.V finite; their logits are masked).
  auto issue = [&](int i) {
    const int chunk = chunk_begin + warp + i * kWarps;
    const int row0 = (chunk & chunks_per_page_mask) * kChunk;
    const int valid = static_cast<int>(
        min(static_cast<int64_t>(kChunk), tokens - static_cast<int64_t>(chunk) * kChunk));
    const auto* k_src = reinterpret_cast<const unsigned char*>(next_k + row0 * kHeadDim);
    const auto* v_src = reinterpret_cast<const unsigned char*>(next_v + row0 * kHeadDim);
    fetch_pointers(i + 1);
    const uint32_t stage = pipe_address + (i % C::kStages) * C::kStageBytes;
#pragma unroll
    for (int k = 0; k < kChunk * C::kVectorsPerRow / 32; ++k) {
      const int idx = k * 32 + lane;
      const int row = idx / C::kVectorsPerRow;
      const int v = idx % C::kVectorsPerRow;
      const int bytes = row < valid ? 16 : 0;
      const int src = row * C::kRowBytes + v * 16;
      const uint32_t dst = SwizzledOffset<kHeadDim>(row, v);
      CpAsync16(stage + dst, bytes ? k_src + src : k_src, bytes);
      CpAsync16(stage + C::kTileBytes + dst, bytes ? v_src + src : v_src, bytes);
    }
  };

  // Per thread: rows g and g + 8 of the tile (g = lane / 4); m in base-2 logits, l the
  // thread's share of the row's exponential sum, acc[n][e] the unnormalised output at
  // row g + 8 * (e / 2), dim 8 n + 2 (lane % 4) + e % 2.
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};
  float acc[kHeadDim / 8][4];
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

  __syncthreads();  // Q is in shared memory

  fetch_pointers(0);
#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < my_chunks) issue(s);
    CpAsyncCommit();
  }

  const int quad = lane % 4;
  for (int i = 0; i < my_chunks; ++i) {
    if (i + C::kStages - 1 < my_chunks) issue(i + C::kStages - 1);
    CpAsyncCommit();
    CpAsyncWait<C::kStages - 1>();
    __syncwarp();

    const int chunk = chunk_begin + warp + i * kWarps;
    const int valid = static_cast<int>(
        min(static_cast<int64_t>(kChunk), tokens - static_cast<int64_t>(chunk) * kChunk));
    const uint32_t k_tile = pipe_address + (i % C::kStages) * C::kStageBytes;
    const uint32_t v_tile = k_tile + C::kTileBytes;

    // S = Q K^T: s[t] covers tokens 8t .. 8t + 7 of the chunk.
    float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
    for (int j = 0; j < kHeadDim / 16; ++j) {
      uint32_t a[4];
      {
        const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
        LdMatrixX4(a, q_address + SwizzledOffset<kHeadDim>(row, 2 * j + (lane >> 4)));
      }
      uint32_t b[4];
      {
        const int token = (lane & 7) + (lane >> 4) * 8;
        LdMatrixX4(b, k_tile + SwizzledOffset<kHeadDim>(token, 2 * j + ((lane >> 3) & 1)));
      }
      Mma<T>(s[0], a, b[0], b[1]);
      Mma<T>(s[1], a, b[2], b[3]);
    }

    // Online softmax over the chunk, base 2. With chunk_lse the chunk's own maximum is kept
    // too (the reduction starts from -inf, m joins after it): its log-sum-exp is formed
    // relative to it, so it stays exact however far below the running maximum it lies.
    float chunk_max[2] = {m[0], m[1]};
    if constexpr (kChunkLse) chunk_max[0] = chunk_max[1] = -INFINITY;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int token = 8 * t + 2 * quad + (e & 1);
        const float x = token < valid ? s[t][e] * p.scale_log2 : -INFINITY;
        s[t][e] = x;
        chunk_max[e >> 1] = fmaxf(chunk_max[e >> 1], x);
      }
    }
    float alpha[2];
    [[maybe_unused]] float own_max[2];  // kChunkLse: the chunk's maximum logit per row
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      chunk_max[r] = fmaxf(chunk_max[r], __shfl_xor_sync(0xffffffffu, chunk_max[r], 1));
      chunk_max[r] = fmaxf(chunk_max[r], __shfl_xor_sync(0xffffffffu, chunk_max[r], 2));
      if constexpr (kChunkLse) {
        own_max[r] = chunk_max[r];
        chunk_max[r] = fmaxf(chunk_max[r], m[r]);
      }
      alpha[r] = exp2f(m[r] - chunk_max[r]);
      m[r] = chunk_max[r];
    }
    if constexpr (kChunkLse) {
      // p = 2^(x - own) 2^(own - m): the chunk's sum of 2^(x - own) (>= 1: its largest term is
      // 1) gives its log-sum-exp, the same exponentials scaled give the softmax numerators.
      float rescale[2];
      float own_sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) rescale[r] = exp2f(own_max[r] - m[r]);
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = exp2f(s[t][e] - own_max[e >> 1]);
          own_sum[e >> 1] += x;
          s[t][e] = x * rescale[e >> 1];
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        own_sum[r] += __shfl_xor_sync(0xffffffffu, own_sum[r], 1);
        own_sum[r] += __shfl_xor_sync(0xffffffffu, own_sum[r], 2);
        const int row = lane / 4 + 8 * r;
        if (quad == 0 && row < group) {
          p.chunk_lse[(chunk_lse_base + chunk) * group + row] =
              (own_max[r] + log2f(own_sum[r])) * kLn2;
        }
      }
    } else {
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[t][e] = exp2f(s[t][e] - m[e >> 1]);
      }
    }
    l[0] = l[0] * alpha[0] + (s[0][0] + s[0][1]) + (s[1][0] + s[1][1]);
    l[1] = l[1] * alpha[1] + (s[0][2] + s[0][3]) + (s[1][2] + s[1][3]);
    // Once the running maximum settles, alpha is 1 for every row: skip the rescale.
    if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        acc[n][0] *= alpha[0];
        acc[n][1] *= alpha[0];
        acc[n][2] *= alpha[1];
        acc[n][3] *= alpha[1];
      }
    }

    // O += P V: the S accumulators of the two token tiles are exactly the A fragment of a
    // 16 x 16 (rows x tokens) operand.
    const uint32_t pa[4] = {PackPair<T>(s[0][0], s[0][1]), PackPair<T>(s[0][2], s[0][3]),
                            PackPair<T>(s[1][0], s[1][1]), PackPair<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int j = 0; j < kHeadDim / 16; ++j) {
      uint32_t b[4];
      const int token = (lane & 7) + ((lane >> 3) & 1) * 8;
      LdMatrixX4Trans(b, v_tile + SwizzledOffset<kHeadDim>(token, 2 * j + (lane >> 4)));
      Mma<T>(acc[2 * j], pa, b[0], b[1]);
      Mma<T>(acc[2 * j + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  CpAsyncWait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }

  // Combine the warps through shared memory (the pipeline buffers are free now).
  __syncthreads();
  float* const combine = reinterpret_cast<float*>(smem + C::kQBytes);
  float* const combine_m = combine + kWarps * kRows * C::kCombineStride;
  float* const combine_l = combine_m + kWarps * kRows;
  const int g = lane / 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = g + 8 * r;
    if (row < group) {
      float* dst = combine + (warp * kRows + row) * C::kCombineStride + 2 * quad;
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        *reinterpret_cast<float2*>(dst + 8 * n) = make_float2(acc[n][2 * r], acc[n][2 * r + 1]);
      }
      if (quad == 0) {
        combine_m[warp * kRows + row] = m[r];
        combine_l[warp * kRows + row] = l[r];
      }
    }
  }
  __syncthreads();

  const int64_t row_base = static_cast<int64_t>(item) * group;
  const int64_t total_rows = static_cast<int64_t>(p.num_items) * group;
  for (int idx = threadIdx.x; idx < group * kHeadDim; idx += kThreads) {
    const int row = idx / kHeadDim;
    const int d = idx % kHeadDim;
    float max_m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) max_m = fmaxf(max_m, combine_m[w * kRows + row]);
    float value = 0.0f;
    float lse = -INFINITY;
    if (max_m != -INFINITY) {
      float sum = 0.0f;
      float weighted = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = combine_m[w * kRows + row];
        if (mw == -INFINITY) continue;  // a warp without tokens
        const float scale = exp2f(mw - max_m);
        sum += combine_l[w * kRows + row] * scale;
        weighted += combine[(w * kRows + row) * C::kCombineStride + d] * scale;
      }
      value = weighted / sum;
      lse = (max_m + log2f(sum)) * kLn2;
    }
    const int64_t out_row = row_base + row;
    if (p.num_splits == 1) {
      StoreOutput(p.out_dtype, p.out, out_row * kHeadDim + d, value);
      if (d == 0) p.lse[out_row] = lse;
    } else {
      const int64_t part_row = static_cast<int64_t>(split) * total_rows + out_row;
      p.partial_out[part_row * kHeadDim + d] = value;
      if (d == 0) p.partial_lse[part_row] = lse;
    }
  }
}

// Resident blocks per SM of the kernel for head_dim / dtype, and the SM count; cached per
// device and instantiation (neither changes during a process).
struct Occupancy {
  int sm_count = 0;
  int blocks_per_sm = 0;
};

// Allows the kernel its shared memory on the current device; done once per device and
// instantiation (the attribute stays set for the process).
template <typename T, int kHeadDim, bool kChunkLse>
absl::Status PrepareKernel() {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<bool> prepared[kMaxCachedDevices] = {};
  int device = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable && prepared[device].load(std::memory_order_acquire)) return absl::OkStatus();
  KVTIER_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(PagedDecodeKernel<T, kHeadDim, kChunkLse>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   Config<kHeadDim>::kSmemBytes));
  if (cacheable) prepared[device].store(true, std::memory_order_release);
  return absl::OkStatus();
}

template <typename T, int kHeadDim>
absl::StatusOr<Occupancy> QueryOccupancy() {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<int> cached_sms[kMaxCachedDevices] = {};
  static std::atomic<int> cached_blocks[kMaxCachedDevices] = {};
  int device = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable && cached_blocks[device].load(std::memory_order_relaxed) > 0) {
    return Occupancy{cached_sms[device].load(std::memory_order_relaxed),
                     cached_blocks[device].load(std::memory_order_relaxed)};
  }
  Occupancy o;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&o.sm_count, cudaDevAttrMultiProcessorCount, device));
  KVTIER_RETURN_IF_ERROR((PrepareKernel<T, kHeadDim, false>()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &o.blocks_per_sm, PagedDecodeKernel<T, kHeadDim, false>, kThreads,
      Config<kHeadDim>::kSmemBytes));
  o.sm_count = std::max(1, o.sm_count);
  o.blocks_per_sm = std::max(1, o.blocks_per_sm);
  if (cacheable) {
    cached_sms[device].store(o.sm_count, std::memory_order_relaxed);
    cached_blocks[device].store(o.blocks_per_sm, std::memory_order_relaxed);
  }
  return o;
}

// Turns head_dim and dtype into the kernel's template parameters.
template <typename F>
absl::Status DispatchAttention(const PagedDecodeParams& params, F&& f) {
  return DispatchInt<64, 128, 256>("head_dim", params.head_dim, [&](auto head_dim) {
    return DispatchKvDType(params.dtype, [&](auto element) {
      using T = typename decltype(element)::type;
      return f(ElementTag<T>{}, head_dim);
    });
  });
}

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("PagedDecodeParams: ", message));
}

// The checks that need no device data.
absl::Status ValidateLaunch(const PagedDecodeParams& p, int num_splits, const void* workspace,
                            size_t workspace_bytes) {
  if (p.num_items < 0) {
    return Invalid(absl::StrCat("num_items is ", p.num_items, "; expected >= 0"));
  }
  if (p.group_size < 1) {
    return Invalid(absl::StrCat("group_size is ", p.group_size, "; expected >= 1"));
  }
  if (p.group_size > kRows) {
    return absl::UnimplementedError(
        absl::StrCat("group_size = ", p.group_size, " is not supported; supported: 1 to ", kRows));
  }
  if (!std::isfinite(p.softmax_scale)) {
    return Invalid(absl::StrCat("softmax_scale is ", p.softmax_scale, "; expected finite"));
  }
  KVTIER_RETURN_IF_ERROR(
      (DispatchInt<16, 32, 64>("page_size", p.page_size, [](auto) { return absl::OkStatus(); })));
  KVTIER_RETURN_IF_ERROR(DispatchOutputDType(p.out_dtype, [](auto) { return absl::OkStatus(); }));
  if (num_splits < 1 || num_splits > kMaxPagedDecodeSplits) {
    return Invalid(absl::StrCat("num_splits is ", num_splits, "; expected in [1, ",
                                kMaxPagedDecodeSplits, "]"));
  }
  if (p.num_items == 0) return absl::OkStatus();
  const std::pair<const void*, const char*> required[] = {{p.q, "q"},
                                                          {p.k_pages, "k_pages"},
                                                          {p.v_pages, "v_pages"},
                                                          {p.page_offsets, "page_offsets"},
                                                          {p.last_page_tokens, "last_page_tokens"},
                                                          {p.out, "out"},
                                                          {p.lse, "lse"}};
  for (const auto& [pointer, name] : required) {
    if (pointer == nullptr) return Invalid(absl::StrCat(name, " is null"));
  }
  const size_t needed =
      PagedDecodeWorkspaceBytes(p.num_items, p.group_size, p.head_dim, num_splits);
  if (workspace_bytes < needed || (needed > 0 && workspace == nullptr)) {
    return Invalid(absl::StrCat("workspace of ", workspace == nullptr ? 0 : workspace_bytes,
                                " bytes for ", num_splits, " splits; expected at least ", needed,
                                " (PagedDecodeWorkspaceBytes)"));
  }
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return Invalid("workspace is not 16-byte aligned");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int> ChoosePagedDecodeSplits(const PagedDecodeParams& params,
                                            int64_t max_tokens_per_item, int max_splits) {
  if (params.num_items < 0 || max_tokens_per_item < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ChoosePagedDecodeSplits: num_items ",
                                                   params.num_items, " and max_tokens_per_item ",
                                                   max_tokens_per_item, " must be >= 0"));
  }
  Occupancy occupancy;
  KVTIER_RETURN_IF_ERROR(DispatchAttention(params, [&](auto element, auto head_dim) {
    using T = typename decltype(element)::type;
    auto o = QueryOccupancy<T, decltype(head_dim)::value>();
    if (!o.ok()) return o.status();
    occupancy = *o;
    return absl::OkStatus();
  }));
  max_splits = std::clamp(max_splits, 1, kMaxPagedDecodeSplits);
  if (params.num_items == 0) return 1;
  const int64_t slots = static_cast<int64_t>(occupancy.sm_count) * occupancy.blocks_per_sm;
  // Share of the device's block slots that `blocks` keep busy, over whole waves.
  auto efficiency = [&](int64_t blocks) {
    const int64_t waves = (blocks + slots - 1) / slots;
    return static_cast<double>(blocks) / static_cast<double>(waves * slots);
  };
  int best = 1;
  double best_efficiency = efficiency(params.num_items);
  for (int s = 2; s <= max_splits; ++s) {
    if ((max_tokens_per_item + s - 1) / s < kMinSplitTokens) break;
    const double e = efficiency(static_cast<int64_t>(params.num_items) * s);
    // Another split costs a partial write and a longer merge: take it only for a clear gain.
    if (e > best_efficiency * 1.05) {
      best = s;
      best_efficiency = e;
    }
  }
  return best;
}

absl::Status LaunchPagedDecodeAttention(const PagedDecodeParams& params, int num_splits,
                                        void* workspace, size_t workspace_bytes,
                                        cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(ValidateLaunch(params, num_splits, workspace, workspace_bytes));
  return DispatchAttention(params, [&](auto element, auto head_dim) -> absl::Status {
    using T = typename decltype(element)::type;
    constexpr int kHeadDim = decltype(head_dim)::value;
    if (params.num_items == 0) return absl::OkStatus();
    KernelParams k;
    k.q = params.q;
    k.k_pages = params.k_pages;
    k.v_pages = params.v_pages;
    k.page_offsets = params.page_offsets;
    k.last_page_tokens = params.last_page_tokens;
    k.num_items = params.num_items;
    k.group_size = params.group_size;
    k.page_size = params.page_size;
    k.chunk_shift = params.page_size == 16 ? 0 : (params.page_size == 32 ? 1 : 2);
    k.scale_log2 = params.softmax_scale * kLog2e;
    k.num_splits = num_splits;
    k.out_dtype = params.out_dtype;
    k.out = params.out;
    k.lse = params.lse;
    const int64_t rows = static_cast<int64_t>(params.num_items) * params.group_size;
    k.partial_out = static_cast<float*>(workspace);
    k.partial_lse = nullptr;
    if (num_splits > 1) {
      const size_t out_bytes =
          (static_cast<size_t>(rows) * num_splits * kHeadDim * 4 + 255) / 256 * 256;
      k.partial_lse = reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) + out_bytes);
    }
    k.chunk_lse = params.chunk_lse;
    const dim3 grid(params.num_items, num_splits);
    if (params.chunk_lse != nullptr) {
      KVTIER_RETURN_IF_ERROR((PrepareKernel<T, kHeadDim, true>()));
      KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(PagedDecodeKernel<T, kHeadDim, true>,
                                                          grid, kThreads,
                                                          Config<kHeadDim>::kSmemBytes, stream, k));
    } else {
      KVTIER_RETURN_IF_ERROR((PrepareKernel<T, kHeadDim, false>()));
      KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(PagedDecodeKernel<T, kHeadDim, false>,
                                                          grid, kThreads,
                                                          Config<kHeadDim>::kSmemBytes, stream, k));
    }
    KVTIER_RETURN_IF_LAUNCH_FAILED("PagedDecodeKernel", stream);
    if (num_splits == 1) return absl::OkStatus();
    return internal::LaunchMergeStridedPartials(k.partial_out, k.partial_lse, num_splits,
                                                static_cast<int>(rows), kHeadDim, params.out_dtype,
                                                params.out, params.lse, stream);
  });
}

}  // namespace kvtier
