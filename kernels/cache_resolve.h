// Page-cache resolve: step 3 of ARCHITECTURE.md's decode step. For a batch of caches (one
// per (sequence, layer, KV head), a "work item"), look this step's selected pages up in the
// cache directory; hits keep their slot and are stamped with the step, misses take a slot
// chosen by the replacement policy, never one holding a page selected in this step. The
// outputs are the slot list attention reads and the miss list the page load fills.
//
// Directory representation (struct PageCacheDirectory). The directory is slot-major: per
// slot the page it holds, the step it was last used and its accumulated score. The resolve
// does not need a page -> slot table: each step it scans the item's slots once (it must
// read every slot's recency or score to pick victims anyway) and finds each resident page
// in the sorted selection by binary search, so its cost is O(slots * log(selected)) per item
// and its memory 12 bytes a slot, independent of how many pages a sequence has (64K pages
// cost nothing extra). A dense page -> slot map is optional (`page_slot`): when given it is
// kept in agreement with slot -> page, for consumers that look pages up directly, at
// 4 bytes x max_pages per item (256 KiB per item at 64K pages: 2 GiB for 32 sequences x
// 32 layers x 8 KV heads, which is why it is optional).
//
// Victims. A step with `n` selected pages and `h` hits has `m = n - h` misses. They take,
// in this order, empty slots (lowest slot index first), then the occupied slots not
// selected in this step that the policy ranks lowest (ties by slot index). The chosen `m`
// victims are assigned to the misses in ascending slot order: the i-th miss in selection
// order gets the i-th lowest victim slot. Because the selection capacity never exceeds the
// slot count (checked at validation), there are always enough victims.
//
// Policies (CachePolicy for the kernel; CacheEvictionPolicy for the host twin):
//   kLeastRecentlyUsed: lowest `last_use` first.
//   kLowestScore: lowest `score` first (IEEE total order: -0 < +0, NaN beyond +-Inf), ties
//     by lowest `last_use`. The score is query-agnostic, e.g. the attention mass a slot's
//     page received (LaunchCacheScoreUpdate adds it after attention); it resets to 0 when
//     a page is loaded into the slot.
//   kLastSelection: the cache holds exactly the previous step's selection (the
//     ShadowKV/NOSA baseline): every slot not selected in this step is free, and at the end
//     of the step every slot not holding a selected page is emptied.
//
// Time is injected: the step number is the caller's (`step`, or `*step_ptr` for CUDA graph
// replay), stamped into `last_use`; steps must not decrease from one resolve of a cache to
// the next.
//
// Directory rows. By default item i is directory row i. With `item_rows` a launch serves any
// subset of a larger directory (e.g. the caches of this step's sequences among all the
// sequences' caches): item i reads and writes directory row item_rows[i] only (its slots in
// slot_page / slot_last_use / slot_score, its pages in page_slot); every array indexed by item
// (selection, counts, outputs, mass) keeps item indexing, and the other rows are not touched.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/base/cache_policy.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

// Limits of one work item (the kernel keeps an item's selection in shared memory).
inline constexpr int32_t kMaxCacheSlots = 65536;
inline constexpr int32_t kMaxCacheSelected = 4096;

// The directory of the caches a launch resolves: `rows` below is num_items, or num_rows with
// item_rows (see "Directory rows" above). All arrays row-major with the row outermost; for
// the kernel in device memory, for the host twin in host memory.
struct PageCacheDirectory {
  // [rows, num_slots] page index held by each slot, -1 when the slot is empty. No page is
  // held by two slots of one row. Start with all -1.
  int32_t* slot_page = nullptr;
  // [rows, num_slots] step at which the slot's page was last selected (hit or loaded).
  // Meaningless for empty slots.
  int32_t* slot_last_use = nullptr;
  // [rows, num_slots] accumulated query-agnostic score of the slot's page.
  float* slot_score = nullptr;
  // Optional [rows, max_pages] slot of each resident page, -1 for pages not resident;
  // nullptr to not keep one. Start with all -1 when used.
  int32_t* page_slot = nullptr;
  int32_t num_items = 0;  // caches resolved by the launch
  int32_t num_slots = 0;  // slots per row, 1..kMaxCacheSlots
  int32_t max_pages = 0;  // pages per row: page indexes lie in [0, max_pages)
  // Rows of the arrays above. With CacheResolveParams::item_rows: >= 1 (and >= num_items).
  // Without: ignored unless non-zero, then it must equal num_items (rows are the items).
  int32_t num_rows = 0;
};

struct CacheResolveParams {
  PageCacheDirectory directory;
  // [num_items, max_selected] this step's selected page indexes per item: the first
  // num_selected[item] entries, strictly ascending, each in [0, max_pages).
  const int32_t* selected_pages = nullptr;
  const int32_t* num_selected = nullptr;  // [num_items], each in [0, max_selected]
  int32_t max_selected = 0;               // 0..min(num_slots, kMaxCacheSelected)
  int32_t step = 0;                       // stamped into last_use; non-decreasing per cache
  // Optional: when non-null the step is read from here (device memory for the kernel, host
  // memory for the twin) and `step` is ignored. A launch captured in a CUDA graph replays its
  // parameters, so a graph-replayed decode step takes its clock from memory that the step
  // (or the host, between replays) advances.
  const int32_t* step_ptr = nullptr;
  CachePolicy policy = CachePolicy::kLeastRecentlyUsed;
  // Optional [num_items] directory row of each item: distinct rows in [0, directory.num_rows)
  // (device memory for the kernel, host memory for the twin). nullptr: item i is row i.
  const int32_t* item_rows = nullptr;

  // Outputs, [num_items, max_selected] each; entries at or beyond the item's count are not
  // written.
  // Entry i: the slot that holds selected page i after the resolve (selection order).
  int32_t* selected_slots = nullptr;
  // The item's misses in ascending page order: entries [0, miss_count[item]) hold the page
  // index to load (the host-store page of that index) and the slot to load it into.
  int32_t* miss_pages = nullptr;
  int32_t* miss_slots = nullptr;
  int32_t* hit_count = nullptr;   // [num_items]
  int32_t* miss_count = nullptr;  // [num_items]; hit + miss = num_selected
  // Optional [num_items, max_selected]: the item's hits' slots in selection order, entries
  // [0, hit_count[item]) (with miss_slots, the two disjoint parts of selected_slots: a
  // consumer can start on the resident part while the misses load).
  int32_t* hit_slots = nullptr;
};

// The slot state a host-side policy ranks.
struct CacheSlotState {
  int32_t slot = 0;
  int32_t page = -1;
  int32_t last_use = 0;
  float score = 0;
};

// Replacement policy of the host twin (the host backend may add its own). Implementations
// are stateless or read-only, so one instance may serve concurrent resolves.
class CacheEvictionPolicy {
 public:
  virtual ~CacheEvictionPolicy() = default;
  virtual const char* name() const = 0;
  // A strict weak order over occupied slots not selected in this step: true when `a` goes
  // before `b`. Ties are broken by slot index by the caller.
  virtual bool EvictsBefore(const CacheSlotState& a, const CacheSlotState& b) const = 0;
  // True when every slot not selected in a step is free (and emptied after the step).
  virtual bool KeepsOnlyLastSelection() const = 0;
};

// The policies the kernel implements, as host interfaces (static lifetime).
const CacheEvictionPolicy& StandardCachePolicy(CachePolicy policy);

// The total order the score policy uses: a < b as floats in IEEE total order iff
// ScoreOrderKey(a) < ScoreOrderKey(b).
uint32_t ScoreOrderKey(float score);

// Adds attention mass to the slots used in a step (after attention), optionally decaying
// every slot's score first: score = score * decay for all slots of the item, then
// score += mass[i] for each selected entry i (two roundings, no fused multiply-add). With
// item_rows, item i updates score row item_rows[i]; selected_slots, num_selected and mass
// keep item indexing.
struct CacheScoreUpdateParams {
  float* slot_score = nullptr;  // [num_items, num_slots], or [num_rows, num_slots] with item_rows
  // [num_items, max_selected] from the resolve: distinct slots within an item.
  const int32_t* selected_slots = nullptr;
  const int32_t* num_selected = nullptr;  // [num_items]
  const float* mass = nullptr;            // [num_items, max_selected]
  int32_t num_items = 0;
  int32_t num_slots = 0;
  int32_t max_selected = 0;
  float decay = 1.0f;  // in (0, 1]; 1 skips the decay pass
  // Optional [num_items] score row of each item, as CacheResolveParams::item_rows (the same
  // array serves both): distinct rows >= 0. nullptr: item i is row i.
  const int32_t* item_rows = nullptr;
  // Optional with item_rows: the rows of slot_score. When > 0 the twin checks rows against it
  // (and the kernel skips an item whose row is outside it); 0 leaves rows unchecked above.
  int32_t num_rows = 0;
};

namespace internal {
// Checks shared by launchers and twins: sizes, limits, the policy and the presence of every
// required array. InvalidArgument names the field.
absl::Status ValidateCacheResolveShape(const CacheResolveParams& params);
absl::Status ValidateCacheScoreUpdateShape(const CacheScoreUpdateParams& params);
}  // namespace internal

// Host twins (host memory). They also check what lives in the arrays (counts in range,
// selections ascending and in range, slot entries in range and unique per item, item_rows in
// range and distinct) and return InvalidArgument, naming the item, before writing anything.
// Only the items' rows are read: other rows may hold anything. Items run in parallel.
absl::Status ReferenceCacheResolve(const CacheResolveParams& params);
// The same with any policy; params.policy is ignored.
absl::Status ReferenceCacheResolve(const CacheResolveParams& params,
                                   const CacheEvictionPolicy& policy);
absl::Status ReferenceCacheScoreUpdate(const CacheScoreUpdateParams& params);

#ifdef KVTIER_WITH_CUDA
// One thread block per item, no allocation, no host synchronisation (capturable in a CUDA
// graph). Array contents are the caller's contract and are not read on the host; the kernel
// only guards its own memory accesses (counts are clamped to [0, max_selected], out-of-range
// pages are not written to page_slot, an item whose row is outside [0, num_rows) writes
// nothing at all). Duplicate item_rows are a race, not detected. InvalidArgument for bad
// shapes.
absl::Status LaunchCacheResolve(const CacheResolveParams& params, cudaStream_t stream);
absl::Status LaunchCacheScoreUpdate(const CacheScoreUpdateParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
