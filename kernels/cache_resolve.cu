// Page-cache resolve and score update on the GPU. One thread block resolves one item with
// no host round trip:
//   1. the item's selection goes to shared memory; each thread scans a contiguous chunk of
//      slots and finds each resident page in the selection by binary search (hits);
//   2. victims: empty slots in slot order (a block scan numbers them); when they do not
//      cover the misses, a radix select over the policy's keys of the occupied, unselected
//      slots finds the key of the `need`-th lowest, so exactly `need` slots are taken (ties
//      at that key by slot order) without sorting;
//   3. a scan over victim flags lists the victims in slot order, a scan over the selection
//      numbers the misses, and the i-th miss takes the i-th victim.
// Every thread walks its own contiguous chunk, so block scans give slot order directly.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/status.h"
#include "kernels/cache_resolve.h"
#include "kernels/launch.cuh"
#include "kernels/score_row.cuh"

namespace kvtier {
namespace {

constexpr int kResolveThreads = 256;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
static_assert(kResolveThreads >= kRadixBins, "one thread clears each histogram bin");

__device__ __forceinline__ uint32_t OrderedStep(int32_t step) {
  return static_cast<uint32_t>(step) ^ 0x80000000u;
}

// Same mapping as ScoreOrderKey (cache_resolve.cc): IEEE total order as unsigned order.
__device__ __forceinline__ uint32_t OrderedScore(float score) {
  const uint32_t bits = __float_as_uint(score);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// Lowest key is evicted first; the slot index breaks ties outside the key.
__device__ __forceinline__ uint64_t EvictionKey(CachePolicy policy, int32_t last_use, float score) {
  if (policy == CachePolicy::kLowestScore) {
    return (static_cast<uint64_t>(OrderedScore(score)) << 32) | OrderedStep(last_use);
  }
  return OrderedStep(last_use);
}

__device__ __forceinline__ bool TestBit(const uint32_t* bits, int32_t i) {
  return (bits[i >> 5] >> (i & 31)) & 1u;
}

__global__ void __launch_bounds__(kResolveThreads) CacheResolveKernel(CacheResolveParams p) {
  internal::ChainedKernelStart();
  using Scan = cub::BlockScan<int, kResolveThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int histogram[kRadixBins];
  __shared__ int digit_and_rank[2];
  extern __shared__ int32_t shared[];

  const PageCacheDirectory& d = p.directory;
  const int32_t item = blockIdx.x;
  // The item's directory row; one outside the directory is a contract violation: the block
  // writes nothing (uniform across the block, so no barrier is skipped by part of it).
  int64_t row = item;
  if (p.item_rows != nullptr) {
    row = p.item_rows[item];
    if (row < 0 || row >= d.num_rows) return;
  }
  const int32_t num_slots = d.num_slots;
  const int32_t max_selected = p.max_selected;
  int32_t* selection = shared;               // [max_selected]
  int32_t* victims = shared + max_selected;  // [max_selected] victim slots, ascending
  auto* used = reinterpret_cast<uint32_t*>(shared + 2 * max_selected);  // slot bitmap

  const int64_t slot_base = row * num_slots;
  const int64_t sel_base = int64_t{item} * max_selected;
  int32_t* slot_page = d.slot_page + slot_base;
  int32_t* slot_last_use = d.slot_last_use + slot_base;
  float* slot_score = d.slot_score + slot_base;
  int32_t* page_slot = d.page_slot != nullptr ? d.page_slot + row * d.max_pages : nullptr;
  int32_t* selected_slots = p.selected_slots + sel_base;
  const int32_t n = min(max(p.num_selected[item], 0), max_selected);
  const CachePolicy policy = p.policy;
  const bool keep_only_last = policy == CachePolicy::kLastSelection;

  for (int32_t i = threadIdx.x; i < n; i += kResolveThreads) {
    selection[i] = p.selected_pages[sel_base + i];
    selected_slots[i] = -1;  // stays -1 for misses until step 3
  }
  const int32_t bitmap_words = (num_slots + 31) / 32;
  for (int32_t w = threadIdx.x; w < bitmap_words; w += kResolveThreads) used[w] = 0;
  __syncthreads();

  // 1. Hits, and the empty (or, last-selection, unselected) slots.
  const int32_t chunk = (num_slots + kResolveThreads - 1) / kResolveThreads;
  const int32_t begin = min(static_cast<int32_t>(threadIdx.x) * chunk, num_slots);
  const int32_t end = min(begin + chunk, num_slots);
  int my_hits = 0;
  int my_free = 0;
  for (int32_t s = begin; s < end; ++s) {
    const int32_t page = slot_page[s];
    bool hit = false;
    if (page >= 0) {
      int32_t lo = 0, hi = n;  // first entry >= page
      while (lo < hi) {
        const int32_t mid = (lo + hi) >> 1;
        if (selection[mid] < page) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      if (lo < n && selection[lo] == page) {
        hit = true;
        selected_slots[lo] = s;
        atomicOr(&used[s >> 5], 1u << (s & 31));
        ++my_hits;
      }
    }
    if (!hit && (page < 0 || keep_only_last)) ++my_free;
  }
  int free_before = 0, num_free = 0, hits_before = 0, num_hits = 0;
  Scan(scan_storage).ExclusiveSum(my_free, free_before, num_free);
  __syncthreads();
  Scan(scan_storage).ExclusiveSum(my_hits, hits_before, num_hits);
  __syncthreads();  // also publishes the hit bitmap and selected_slots of hits
  const int32_t misses = n - num_hits;

  // The hits' slots in selection order (selected_slots is still -1 for every miss).
  if (p.hit_slots != nullptr) {
    const int32_t hit_chunk = (n + kResolveThreads - 1) / kResolveThreads;
    const int32_t hit_begin = min(static_cast<int32_t>(threadIdx.x) * hit_chunk, n);
    const int32_t hit_end = min(hit_begin + hit_chunk, n);
    int my_entries = 0;
    for (int32_t i = hit_begin; i < hit_end; ++i) my_entries += selected_slots[i] >= 0;
    int entries_before = 0, total_entries = 0;
    Scan(scan_storage).ExclusiveSum(my_entries, entries_before, total_entries);
    __syncthreads();
    for (int32_t i = hit_begin; i < hit_end; ++i) {
      if (selected_slots[i] >= 0) p.hit_slots[sel_base + entries_before++] = selected_slots[i];
    }
  }

  if (misses > 0) {
    // 2. Victims beyond the free slots: the `need` lowest keys among occupied slots that are
    // not selected in this step (never any with keep_only_last: all of those are free).
    const int32_t need = max(misses - num_free, 0);
    uint64_t threshold = 0;
    int tie_take = 0;  // how many slots with key == threshold are victims (lowest first)
    if (need > 0) {
      const int key_bits = policy == CachePolicy::kLowestScore ? 64 : 32;
      uint64_t prefix = 0, prefix_mask = 0;
      int rank = need;  // 1-based rank of the wanted key among the remaining candidates
      for (int shift = key_bits - kRadixBits; shift >= 0; shift -= kRadixBits) {
        if (threadIdx.x < kRadixBins) histogram[threadIdx.x] = 0;
        __syncthreads();
        for (int32_t s = begin; s < end; ++s) {
          if (slot_page[s] < 0 || TestBit(used, s)) continue;
          const uint64_t key = EvictionKey(policy, slot_last_use[s], slot_score[s]);
          if ((key & prefix_mask) == prefix) {
            atomicAdd(&histogram[(key >> shift) & (kRadixBins - 1)], 1);
          }
        }
        __syncthreads();
        if (threadIdx.x < 32) {
          // Lane l owns bins [8l, 8l + 8): find the bin where the running count reaches rank.
          constexpr int kBinsPerLane = kRadixBins / 32;
          const int lane = threadIdx.x;
          int lane_sum = 0;
#pragma unroll
          for (int b = 0; b < kBinsPerLane; ++b) lane_sum += histogram[lane * kBinsPerLane + b];
          int inclusive = lane_sum;
#pragma unroll
          for (int offset = 1; offset < 32; offset <<= 1) {
            const int other = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
            if (lane >= offset) inclusive += other;
          }
          int below = inclusive - lane_sum;
          if (below < rank && inclusive >= rank) {
            for (int b = 0; b < kBinsPerLane; ++b) {
              const int count = histogram[lane * kBinsPerLane + b];
              if (below + count >= rank) {
                digit_and_rank[0] = lane * kBinsPerLane + b;
                digit_and_rank[1] = rank - below;
                break;
              }
              below += count;
            }
          }
        }
        __syncthreads();
        prefix |= static_cast<uint64_t>(digit_and_rank[0]) << shift;
        prefix_mask |= static_cast<uint64_t>(kRadixBins - 1) << shift;
        rank = digit_and_rank[1];
      }
      threshold = prefix;
      tie_take = rank;
    }

    // Ties at the threshold, numbered in slot order.
    int my_ties = 0, ties_before = 0, num_ties = 0;
    if (need > 0) {
      for (int32_t s = begin; s < end; ++s) {
        if (slot_page[s] < 0 || TestBit(used, s)) continue;
        my_ties += EvictionKey(policy, slot_last_use[s], slot_score[s]) == threshold;
      }
      Scan(scan_storage).ExclusiveSum(my_ties, ties_before, num_ties);
      __syncthreads();
    }

    // 3. Victim flags in slot order; the list of victim slots, ascending.
    auto is_victim = [&](int32_t s, int& free_ordinal, int& tie_ordinal) {
      if (TestBit(used, s)) return false;
      const int32_t page = slot_page[s];
      if (page < 0 || keep_only_last) return free_ordinal++ < misses;
      if (need == 0) return false;
      const uint64_t key = EvictionKey(policy, slot_last_use[s], slot_score[s]);
      if (key < threshold) return true;
      return key == threshold && tie_ordinal++ < tie_take;
    };
    int my_victims = 0;
    {
      int free_ordinal = free_before, tie_ordinal = ties_before;
      for (int32_t s = begin; s < end; ++s) my_victims += is_victim(s, free_ordinal, tie_ordinal);
    }
    int victims_before = 0, num_victims = 0;
    Scan(scan_storage).ExclusiveSum(my_victims, victims_before, num_victims);
    {
      int free_ordinal = free_before, tie_ordinal = ties_before;
      for (int32_t s = begin; s < end; ++s) {
        if (is_victim(s, free_ordinal, tie_ordinal)) victims[victims_before++] = s;
      }
    }
    __syncthreads();
    // Victims are marked used only now: is_victim above read the bitmap of hits alone.
    for (int32_t v = threadIdx.x; v < misses; v += kResolveThreads) {
      atomicOr(&used[victims[v] >> 5], 1u << (victims[v] & 31));
    }

    // Misses numbered in selection order take the victims in slot order.
    const int32_t sel_chunk = (n + kResolveThreads - 1) / kResolveThreads;
    const int32_t sel_begin = min(static_cast<int32_t>(threadIdx.x) * sel_chunk, n);
    const int32_t sel_end = min(sel_begin + sel_chunk, n);
    int my_misses = 0;
    for (int32_t i = sel_begin; i < sel_end; ++i) my_misses += selected_slots[i] < 0;
    int misses_before = 0, total_misses = 0;
    Scan(scan_storage).ExclusiveSum(my_misses, misses_before, total_misses);
    for (int32_t i = sel_begin; i < sel_end; ++i) {
      if (selected_slots[i] >= 0) continue;
      const int32_t r = misses_before++;
      const int32_t s = victims[r];
      const int32_t page = selection[i];
      const int32_t old_page = slot_page[s];
      // An evicted page is never selected in this step, so these writes never collide.
      if (page_slot != nullptr && old_page >= 0 && old_page < d.max_pages) page_slot[old_page] = -1;
      if (page_slot != nullptr && page >= 0 && page < d.max_pages) page_slot[page] = s;
      slot_page[s] = page;
      slot_score[s] = 0.0f;
      selected_slots[i] = s;
      p.miss_pages[sel_base + r] = page;
      p.miss_slots[sel_base + r] = s;
    }
  }
  // Every selected page's slot is stamped (hits and freshly loaded pages).
  const int32_t step = p.step_ptr != nullptr ? *p.step_ptr : p.step;
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kResolveThreads) {
    slot_last_use[selected_slots[i]] = step;
  }
  if (keep_only_last) {
    for (int32_t s = begin; s < end; ++s) {
      if (TestBit(used, s)) continue;
      const int32_t page = slot_page[s];
      if (page < 0) continue;
      if (page_slot != nullptr && page < d.max_pages) page_slot[page] = -1;
      slot_page[s] = -1;
    }
  }
  if (threadIdx.x == 0) {
    p.hit_count[item] = num_hits;
    p.miss_count[item] = misses;
  }
}

__global__ void __launch_bounds__(kResolveThreads)
    CacheScoreUpdateKernel(CacheScoreUpdateParams p) {
  internal::ChainedKernelStart();
  const int32_t item = blockIdx.x;
  float* score = internal::DecayedScoreRow(p.slot_score, p.item_rows, p.num_rows, item, p.num_slots,
                                           p.decay, kResolveThreads);
  if (score == nullptr) return;  // contract violation
  const int32_t n = min(max(p.num_selected[item], 0), p.max_selected);
  const int64_t base = int64_t{item} * p.max_selected;
  for (int32_t i = threadIdx.x; i < n; i += kResolveThreads) {
    const int32_t s = p.selected_slots[base + i];
    if (s >= 0 && s < p.num_slots) score[s] = __fadd_rn(score[s], p.mass[base + i]);
  }
}

}  // namespace

absl::Status LaunchCacheResolve(const CacheResolveParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateCacheResolveShape(params));
  if (params.directory.num_items == 0) return absl::OkStatus();
  // At the limits: 2 x 4096 x 4 B + 65536 / 8 B = 40 KiB, under the 48 KiB that needs no
  // opt-in (the static part is ~1.2 KiB).
  const size_t shared_bytes = sizeof(int32_t) * (2 * static_cast<size_t>(params.max_selected) +
                                                 (params.directory.num_slots + 31) / 32);
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(CacheResolveKernel,
                                                      params.directory.num_items, kResolveThreads,
                                                      shared_bytes, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("CacheResolveKernel", stream);
  return absl::OkStatus();
}

absl::Status LaunchCacheScoreUpdate(const CacheScoreUpdateParams& params, cudaStream_t stream) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateCacheScoreUpdateShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_CUDA_RETURN_IF_ERROR(internal::LaunchChained(CacheScoreUpdateKernel, params.num_items,
                                                      kResolveThreads, 0, stream, params));
  KVTIER_RETURN_IF_LAUNCH_FAILED("CacheScoreUpdateKernel", stream);
  return absl::OkStatus();
}

}  // namespace kvtier
