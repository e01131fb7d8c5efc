// Decode-step planning on the GPU.
//
// The two list builders (DecodePlan's hot page list, BuildSelectedPages' selected page list)
// need an exclusive prefix sum over items, and the lists are too long to write from one block
// (16K items x ~20 pages x 2 pointers is ~5 MB). Each block takes a tile of 32 consecutive
// items and computes the sum of everything before its tile itself, by a block reduction over
// the counts of the earlier items: DecodePlan's counts are a function of one batch entry's
// token count, so that is a pass over at most `batch` entries; BuildSelectedPages reads the
// earlier num_selected (16-byte loads: at 16K items, 16 a thread). That repeats O(items)
// L2 reads per block but needs no workspace, no inter-block ordering and one launch. Within
// the tile a block scan gives each item's offset; the tile's pointers are then written by all
// 256 threads in output order (a binary search over the tile's 33 offsets in shared memory
// maps an output entry to its item), so the stores are coalesced and a long item does not
// serialise one warp. Small tiles with many threads keep the dependent chain of each thread
// short: at 64 x 8 items that is 16 blocks of ~2 list entries a thread. Measured on the H100
// (per launch, 200 launches in one graph, gaps included): DecodePlan 3.9 us, BuildSelectedPages
// 3.6 us at 64 x 8; 5.7 us each at 1024 x 16. 128-item tiles of 128 threads (4 blocks of ~17
// dependent entries a thread) took 11.6 and 10.7 us.
//
// Entries that break the contract are not checked on the host (device data). DecodePlan
// writes such an entry (seq_slot < 0, tokens_before < 1 or > max_pages * P - 1) as an empty
// item so that no later kernel reads or writes through it: no hot pages, append_row -1 and
// null append pages (append skips it), null write-back destinations (skipped), summary
// tokens 0 and null summary pointers, an empty select range [0, 0), item_row -1,
// page_table_offset 0, null slot bases, hot_last_page_tokens 0. BuildSelectedPages and
// ComputePageMass clamp counts to [0, max_selected].
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/decode_plan.h"
#include "kernels/launch.cuh"
#include "kernels/score_row.cuh"

namespace kvtier {
namespace {

constexpr int kTile = 32;  // items per block of the list builders
constexpr int kListThreads = 256;
constexpr int kMassThreads = 256;
static_assert(kListThreads >= kTile, "one thread per item of a tile");

// The t in [0, kTile) with begin[t] <= k < begin[t + 1], for 0 <= k < begin[kTile]: the item
// of a tile's output entry k (items without entries share their successor's begin).
__device__ __forceinline__ int TileItemOf(const int32_t* begin, int32_t k) {
  int lo = 0, hi = kTile - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (begin[mid + 1] <= k) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__device__ __forceinline__ bool ValidEntry(int32_t slot, int32_t tokens, int64_t max_tokens) {
  return slot >= 0 && tokens >= 1 && tokens + int64_t{1} <= max_tokens;
}

// Hot pages of a sequence of `tokens` + 1 tokens: sinks [0, min(S, n)), window
// [max(S, n - W), n) with n = tokens / P + 1.
__device__ __forceinline__ int32_t HotPageCount(int32_t tokens, int32_t page_size, int32_t sinks,
                                                int32_t window) {
  const int32_t n = tokens / page_size + 1;
  return min(sinks, n) + max(n - max(sinks, n - window), 0);
}

__device__ __forceinline__ int32_t ClampCount(int32_t n, int32_t max_selected) {
  return min(max(n, 0), max_selected);
}

// This thread's share of sum_{j < end} ClampCount(counts[j]) over a block of kListThreads:
// 16-byte loads between a scalar head (to 16-byte alignment) and tail.
__device__ __forceinline__ int32_t PartialCountSum(const int32_t* counts, int32_t end,
                                                   int32_t max_selected) {
  const int32_t tid = threadIdx.x;
  const auto misalignment = static_cast<int32_t>(reinterpret_cast<uintptr_t>(counts) % 16);
  const int32_t head = min(end, (16 - misalignment) % 16 / 4);
  int32_t sum = 0;
  if (tid < head) sum += ClampCount(counts[tid], max_selected);
  const auto* vectors = reinterpret_cast<const int4*>(counts + head);
  const int32_t num_vectors = (end - head) / 4;
#pragma unroll 4
  for (int32_t v = tid; v < num_vectors; v += kListThreads) {
    const int4 x = vectors[v];
    sum += ClampCount(x.x, max_selected) + ClampCount(x.y, max_selected) +
           ClampCount(x.z, max_selected) + ClampCount(x.w, max_selected);
  }
  const int32_t tail = head + num_vectors * 4;
  if (tail + tid < end) sum += ClampCount(counts[tail + tid], max_selected);
  return sum;
}

__global__ void __launch_bounds__(kListThreads) DecodePlanKernel(DecodePlanParams p) {
  internal::ChainedKernelStart();
  using Reduce = cub::BlockReduce<int32_t, kListThreads>;
  using Scan = cub::BlockScan<int32_t, kListThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ int32_t tile_begin[kTile + 1];  // item's first hot entry in the tile
  __shared__ int32_t sinks_end[kTile];       // min(S, n)
  __shared__ int32_t window_ring[kTile];     // ring position of the first window page
  __shared__ int64_t hot_row[kTile];         // first hot page of the item's row
  __shared__ int32_t tile_base;              // hot entries of all earlier tiles

  const ItemStorage& s = p.storage;
  const int32_t P = s.page_size;
  const int32_t S = s.sink_pages;
  const int32_t W = s.window_pages;
  const int32_t R = s.ring_pages;
  const int32_t hk = p.num_kv_heads;
  const int32_t items = p.batch * hk;
  const int64_t max_tokens = int64_t{s.max_pages} * P;
  const int32_t first = blockIdx.x * kTile;
  const int32_t tid = threadIdx.x;
  auto count_of = [&](int32_t b) {
    const int32_t tokens = p.tokens_before[b];
    return ValidEntry(p.seq_slot[b], tokens, max_tokens) ? HotPageCount(tokens, P, S, W) : 0;
  };

  // Hot entries before this tile: Hk per earlier batch entry, plus the tile's first entry's
  // heads before the tile.
  const int32_t first_entry = first / hk;
  int32_t before = 0;
#pragma unroll 4
  for (int32_t b = tid; b < first_entry; b += kListThreads) before += count_of(b);
  before = Reduce(temp.reduce).Sum(before);
  if (tid == 0) tile_base = before * hk + (first - first_entry * hk) * count_of(first_entry);
  __syncthreads();

  const int32_t i = first + tid;
  // Every block of a tile (blockIdx.y) plans the tile's items; the first writes their
  // per-item outputs, and all share the tile's hot page list.
  const bool writes_items = blockIdx.y == 0;
  int32_t count = 0;
  if (tid < kTile && i < items) {
    const int32_t b = i / hk;
    const int32_t h = i - b * hk;
    const int32_t slot = p.seq_slot[b];
    const int32_t tokens = p.tokens_before[b];
    if (ValidEntry(slot, tokens, max_tokens)) {
      const int32_t append_page = tokens / P;
      const int32_t row = tokens - append_page * P;
      const int32_t n = append_page + 1;
      const int32_t window_begin = max(S, n - W);
      const int64_t r = (int64_t{slot} * p.num_layers + p.layer) * hk + h;
      const int64_t row_pages = r * (int64_t{S} + R);
      const int32_t append_hot = append_page < S ? append_page : S + (append_page - S) % R;
      const int64_t append_offset = (row_pages + append_hot) * s.page_bytes;
      const int64_t table_row = r * s.max_pages;
      const bool completes = row == P - 1;
      count = HotPageCount(tokens, P, S, W);
      sinks_end[tid] = min(S, n);
      window_ring[tid] = (window_begin - S) % R;
      hot_row[tid] = row_pages;
      if (writes_items) {
        p.append_k[i] = s.hot_k + append_offset;
        p.append_v[i] = s.hot_v + append_offset;
        if (h == 0) p.append_row[b] = row;
        p.writeback_k_dst[i] =
            completes ? const_cast<void*>(s.host_k_table[table_row + append_page]) : nullptr;
        p.writeback_v_dst[i] =
            completes ? const_cast<void*>(s.host_v_table[table_row + append_page]) : nullptr;
        p.summary_tokens[i] = row + 1;
        std::byte* region = s.summaries + r * s.max_pages * s.summary_bytes;
        for (int a = 0; a < s.summary_arrays; ++a) {
          p.summary_dst[a][i] = region + s.summary_offset[a] + append_page * s.summary_stride[a];
          p.select_summary[a][i] = region + s.summary_offset[a];
        }
        p.select_begin[i] = S;
        p.select_end[i] = window_begin;
        p.item_row[i] = static_cast<int32_t>(r);
        p.page_table_offset[i] = table_row;
        p.slot_k_base[i] = s.slot_k + r * s.cache_slots * s.page_bytes;
        p.slot_v_base[i] = s.slot_v + r * s.cache_slots * s.page_bytes;
        p.hot_last_page_tokens[i] = row + 1;
      }
    } else if (writes_items) {
      // Contract violation: an empty item (see the top of this file).
      p.append_k[i] = nullptr;
      p.append_v[i] = nullptr;
      if (h == 0) p.append_row[b] = -1;
      p.writeback_k_dst[i] = nullptr;
      p.writeback_v_dst[i] = nullptr;
      p.summary_tokens[i] = 0;
      for (int a = 0; a < s.summary_arrays; ++a) {
        p.summary_dst[a][i] = nullptr;
        p.select_summary[a][i] = nullptr;
      }
      p.select_begin[i] = 0;
      p.select_end[i] = 0;
      p.item_row[i] = -1;
      p.page_table_offset[i] = 0;
      p.slot_k_base[i] = nullptr;
      p.slot_v_base[i] = nullptr;
      p.hot_last_page_tokens[i] = 0;
    }
  }

  int32_t local = 0, tile_total = 0;
  Scan(temp.scan).ExclusiveSum(count, local, tile_total);
  if (tid <= kTile) tile_begin[tid] = local;  // threads past the tile hold 0: local = total
  if (writes_items && tid < kTile && i < items) {
    p.hot_page_offsets[i + 1] = tile_base + local + count;
  }
  if (writes_items && i == 0) p.hot_page_offsets[0] = 0;
  __syncthreads();

  // The tile's hot page list, in output order: sinks in place, the window in the ring. The
  // tile's blocks take interleaved runs of kListThreads entries.
  for (int32_t k = blockIdx.y * kListThreads + tid; k < tile_total; k += gridDim.y * kListThreads) {
    const int t = TileItemOf(tile_begin, k);
    const int32_t q = k - tile_begin[t];
    int32_t hot = q;
    if (q >= sinks_end[t]) {
      int32_t ring = window_ring[t] + (q - sinks_end[t]);  // < 2R: the window is shorter than R
      if (ring >= R) ring -= R;
      hot = S + ring;
    }
    const int64_t offset = (hot_row[t] + hot) * s.page_bytes;
    p.hot_k_pages[tile_base + k] = s.hot_k + offset;
    p.hot_v_pages[tile_base + k] = s.hot_v + offset;
  }
}

__global__ void __launch_bounds__(kListThreads) SelectedPagesKernel(SelectedPagesParams p) {
  internal::ChainedKernelStart();
  using Reduce = cub::BlockReduce<int32_t, kListThreads>;
  using Reduce64 = cub::BlockReduce<unsigned long long, kListThreads>;
  using Scan = cub::BlockScan<int32_t, kListThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Reduce64::TempStorage reduce64;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ int32_t tile_begin[kTile + 1];
  __shared__ const std::byte* k_base[kTile];
  __shared__ const std::byte* v_base[kTile];
  __shared__ int32_t selected_count[kTile];
  __shared__ int32_t append_begin[kTile];
  __shared__ int32_t tile_base;

  const int32_t items = p.num_items;
  const int32_t max_selected = p.max_selected;
  const int32_t first = blockIdx.x * kTile;
  const int32_t tid = threadIdx.x;
  const bool appends = p.append_offsets != nullptr;  // uniform

  const int32_t before =
      Reduce(temp.reduce).Sum(PartialCountSum(p.num_selected, first, max_selected));
  // The appended lists of earlier items are a prefix sum already.
  if (tid == 0) tile_base = before + (appends ? p.append_offsets[first] : 0);
  __syncthreads();

  const int32_t i = first + tid;
  const bool owns_item = tid < kTile && i < items;
  // Every block of a tile (blockIdx.y) reads the tile's counts; the first writes the per-item
  // outputs and the counters, and all share the tile's page list.
  const bool writes_items = blockIdx.y == 0;
  int32_t count = 0;
  if (owns_item) {
    const int32_t selected = ClampCount(p.num_selected[i], max_selected);
    count = selected;
    selected_count[tid] = selected;
    k_base[tid] = static_cast<const std::byte*>(p.slot_k_base[i]);
    v_base[tid] = static_cast<const std::byte*>(p.slot_v_base[i]);
    int32_t last = p.page_size;
    if (appends) {
      const int32_t begin = p.append_offsets[i];
      const int32_t appended = max(p.append_offsets[i + 1] - begin, 0);
      append_begin[tid] = begin;
      count += appended;
      if (appended > 0) last = p.append_last[i];
    }
    if (writes_items) p.last_page_tokens[i] = last;
  }
  int32_t local = 0, tile_total = 0;
  Scan(temp.scan).ExclusiveSum(count, local, tile_total);
  if (tid <= kTile) tile_begin[tid] = local;
  if (writes_items && owns_item) p.page_offsets[i + 1] = tile_base + local + count;
  if (writes_items && i == 0) p.page_offsets[0] = 0;
  __syncthreads();

  for (int32_t k = blockIdx.y * kListThreads + tid; k < tile_total; k += gridDim.y * kListThreads) {
    const int t = TileItemOf(tile_begin, k);
    const int32_t e = k - tile_begin[t];
    if (e < selected_count[t]) {
      const int64_t slot = p.selected_slots[int64_t{first + t} * max_selected + e];
      const int64_t offset = slot * p.page_bytes;
      p.k_pages[tile_base + k] = k_base[t] + offset;
      p.v_pages[tile_base + k] = v_base[t] + offset;
    } else {
      const int32_t a = append_begin[t] + (e - selected_count[t]);
      p.k_pages[tile_base + k] = p.append_k[a];
      p.v_pages[tile_base + k] = p.append_v[a];
    }
  }

  if (p.counters != nullptr && writes_items) {  // uniform across each block
    unsigned long long hits = 0, misses = 0;
    if (owns_item) {
      hits = static_cast<unsigned long long>(max(p.hit_count[i], 0));
      misses = static_cast<unsigned long long>(max(p.miss_count[i], 0));
    }
    // The scan's storage is free again after the __syncthreads above.
    const unsigned long long tile_hits = Reduce64(temp.reduce64).Sum(hits);
    __syncthreads();
    const unsigned long long tile_misses = Reduce64(temp.reduce64).Sum(misses);
    if (tid == 0) {
      if (tile_total > 0) atomicAdd(&p.counters[0], static_cast<unsigned long long>(tile_total));
      if (tile_hits > 0) atomicAdd(&p.counters[1], tile_hits);
      if (tile_misses > 0) atomicAdd(&p.counters[2], tile_misses);
    }
  }
}

// The attention mass of entry e of `item` of a page list (ComputePageMass's formula).
__device__ __forceinline__ float PageMassOf(const float* chunk_lse, const float* lse,
                                            int32_t page_offset, int32_t e, int32_t item, int32_t g,
                                            int32_t page_size) {
  const float neg_inf = -__int_as_float(0x7f800000);
  const int32_t chunks_per_page = page_size / 16;
  // The page's chunks x G heads are contiguous in chunk_lse.
  const float* chunk = chunk_lse + (int64_t{page_offset} + e) * chunks_per_page * g;
  const float* total = lse + int64_t{item} * g;
  float mass = 0.0f;
  for (int32_t h = 0; h < g; ++h) {
    const float item_lse = total[h];
    if (item_lse == neg_inf) continue;  // no tokens: no share
    for (int32_t c = 0; c < chunks_per_page; ++c) {
      const float value = chunk[c * g + h];
      if (value != neg_inf) mass += expf(value - item_lse);
    }
  }
  return mass;
}

// One thread per (item, selection entry).
__global__ void __launch_bounds__(kMassThreads) PageMassKernel(PageMassParams p) {
  internal::ChainedKernelStart();
  const int64_t index = int64_t{blockIdx.x} * kMassThreads + threadIdx.x;
  if (index >= int64_t{p.num_items} * p.max_selected) return;
  const int32_t item = static_cast<int32_t>(index / p.max_selected);
  const int32_t e = static_cast<int32_t>(index - int64_t{item} * p.max_selected);
  const int32_t n = min(max(p.num_selected[item], 0), p.max_selected);
  if (e >= n) return;
  p.mass[index] =
      PageMassOf(p.chunk_lse, p.lse, p.page_offsets[item], e, item, p.group_size, p.page_size);
}

// One block per item: the decay pass over the item's slots, then one thread per list entry.
__global__ void __launch_bounds__(kMassThreads) PageScoreUpdateKernel(PageScoreUpdateParams p) {
  internal::ChainedKernelStart();
  const int32_t item = blockIdx.x;
  float* score = internal::DecayedScoreRow(p.slot_score, p.item_rows, p.num_rows, item, p.num_slots,
                                           p.decay, kMassThreads);
  if (score == nullptr) return;  // contract violation
  const int64_t base = int64_t{item} * p.max_selected;
  for (int l = 0; l < p.num_lists; ++l) {
    const ScoredPageList& list = p.lists[l];
    const int32_t n = min(max(list.num_selected[item], 0), p.max_selected);
    const int32_t page_offset = list.page_offsets[item];
    for (int32_t e = threadIdx.x; e < n; e += kMassThreads) {
      const int32_t slot = list.slots[base + e];
      if (slot < 0 || slot >= p.num_slots) continue;  // contract violation
      const float mass =
          PageMassOf(list.chunk_lse, p.lse, page_offset, e, item, p.group_size, p.page_size);
      score[slot] = __fadd_rn(score[slot], mass);
    }
  }
}

// Blocks per tile of the list builders: with few tiles (a small batch of long lists) one block
// a tile would write ~200 entries a thread in a dependent chain (26 us at 192 items on the
// H100); the tile's blocks split its entries so that the grid covers about two blocks per
// SM. Each extra block repeats the tile's prefix sum and scan, which read a few KB from L2.
absl::StatusOr<int> TileParts(int32_t tiles) {
  int sm_count = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(internal::CurrentSmCount(&sm_count));
  constexpr int kMaxParts = 32;
  const int64_t wanted = (int64_t{2} * sm_count + tiles - 1) / std::max<int32_t>(tiles, 1);
  return static_cast<int>(std::clamp<int64_t>(wanted, 1, kMaxParts));
}

}  // namespace

absl::Status LaunchDecodePlan(const DecodePlanParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateDecodePlanShape(params));
  const int32_t items = params.batch * params.num_kv_heads;  // validated to fit
  if (items == 0) return absl::OkStatus();
  const int32_t tiles = (items + kTile - 1) / kTile;
  KVTIER_ASSIGN_OR_RETURN(const int parts, TileParts(tiles));
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(DecodePlanKernel, dim3(tiles, parts),
                                                      kListThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("DecodePlanKernel", stream);
  return absl::OkStatus();
}

absl::Status LaunchBuildSelectedPages(const SelectedPagesParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateSelectedPagesShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  const int32_t tiles = (params.num_items + kTile - 1) / kTile;
  KVTIER_ASSIGN_OR_RETURN(const int parts, TileParts(tiles));
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(SelectedPagesKernel, dim3(tiles, parts),
                                                      kListThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("SelectedPagesKernel", stream);
  return absl::OkStatus();
}

absl::Status LaunchComputePageMass(const PageMassParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageMassShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  const int64_t threads = int64_t{params.num_items} * params.max_selected;  // <= INT32_MAX
  const int64_t blocks = (threads + kMassThreads - 1) / kMassThreads;
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(PageMassKernel, static_cast<unsigned>(blocks),
                                                      kMassThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("PageMassKernel", stream);
  return absl::OkStatus();
}

absl::Status LaunchUpdatePageScores(const PageScoreUpdateParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageScoreUpdateShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(PageScoreUpdateKernel, params.num_items,
                                                      kMassThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("PageScoreUpdateKernel", stream);
  return absl::OkStatus();
}

}  // namespace kvtier
