// Decode-step planning on the device: from each batch entry's sequence slot and token count,
// the per-item arrays that the step's kernels (append, write-back, page summary, block select,
// cache resolve, miss load, paged attention) take. Planning on the device keeps the host out
// of the step: the host uploads two integers per sequence, and everything else is derived
// where it is used. After the resolve, BuildSelectedPages turns the resolved slots into the
// attention page list of the selected pages; after attention, ComputePageMass turns the
// attention's per-chunk log-sum-exps into the attention mass each selected page received
// (the query-agnostic score the cache policy accumulates).
//
// Storage of one item (one (sequence slot, layer, KV head)), "item row" r =
// (seq_slot * num_layers + layer) * num_kv_heads + kv_head, page size P, head_dim D:
//  - hot pages: S sink pages and R >= W + 1 ring pages (W window pages, one spare so that the
//    page leaving the window is not the page being written). Page j of the sequence lives at
//    hot index j when j < S, else at hot index S + (j - S) % R.
//  - cache slots: C page slots (the page cache, cache_resolve.h).
//  - index summaries: one region of max_pages * summary_bytes bytes, holding up to
//    kMaxSummaryArrays arrays indexed by page (e.g. page bounds: one array of 2D elements a
//    page; centroids: key means, mean values, counts; block_summary.h). Array a starts
//    summary_offset[a] bytes into the region and holds summary_stride[a] bytes a page.
//  - host page table: max_pages device-readable addresses of the host-store K and V pages;
//    page j's at [r * max_pages + j].
// After the step's append a sequence of T + 1 tokens has n = T / P + 1 pages. Its hot pages
// are the sink pages [0, min(S, n)) and the window pages [max(S, n - W), n); its cold pages,
// the index's candidates, are [S, max(S, n - W)). The last page holds T + 1 - (n - 1) P
// tokens; every other page is full.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

// The most per-page arrays an index keeps in an item's summary region.
inline constexpr int kMaxSummaryArrays = 6;

// Where the items' storage lives: pools indexed by item row. Device memory for the kernels,
// host memory for the twins.
struct ItemStorage {
  int32_t page_size = 0;     // P: 16, 32 or 64
  int32_t sink_pages = 0;    // S >= 0
  int32_t window_pages = 0;  // W >= 1
  int32_t ring_pages = 0;    // R >= W + 1
  int32_t max_pages = 0;     // pages per item, >= 1
  int32_t cache_slots = 0;   // C >= 1
  int64_t page_bytes = 0;    // of one K or one V page: P * D * dtype size (multiple of 16)
  // Summary bytes a page: an item's region is max_pages * summary_bytes bytes, > 0.
  int64_t summary_bytes = 0;
  // The region's arrays: summary_arrays in [1, kMaxSummaryArrays]; array a at byte offset
  // summary_offset[a] (>= 0), summary_stride[a] (>= 0; 0: one entry for the item, which every
  // page shares) bytes a page, inside the region.
  int32_t summary_arrays = 1;
  int64_t summary_offset[kMaxSummaryArrays] = {};
  int64_t summary_stride[kMaxSummaryArrays] = {};
  std::byte* hot_k = nullptr;      // [rows, S + R] pages
  std::byte* hot_v = nullptr;      // [rows, S + R] pages
  std::byte* slot_k = nullptr;     // [rows, C] pages
  std::byte* slot_v = nullptr;     // [rows, C] pages
  std::byte* summaries = nullptr;  // [rows] regions of max_pages * summary_bytes
  // [rows, max_pages] host-store page addresses readable by the executing side (for the
  // kernels: PinnedBuffer::device_data() addresses); entries of pages not yet allocated are
  // null and never read.
  const void* const* host_k_table = nullptr;
  const void* const* host_v_table = nullptr;
};

// Inputs and outputs of DecodePlan. Items are (batch entry b, KV head h) at index
// i = b * num_kv_heads + h; every output array below has one entry per item unless stated.
struct DecodePlanParams {
  ItemStorage storage;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t layer = 0;  // in [0, num_layers)
  int32_t batch = 0;  // >= 0; 0 writes nothing

  // [batch] inputs: the sequence slot of entry b and its token count before this step's
  // append (T >= 1: the sequence was prefilled; T + 1 <= max_pages * P).
  const int32_t* seq_slot = nullptr;
  const int32_t* tokens_before = nullptr;

  // Append (append.h): the page receiving token T (the hot page of page T / P) and its row.
  void** append_k = nullptr;
  void** append_v = nullptr;
  int32_t* append_row = nullptr;  // [batch]: T % P

  // Write-back (append.h): source = the append page; destinations = the host page of page
  // T / P when this token completes it (T % P == P - 1), else null (the entry is skipped).
  void** writeback_k_dst = nullptr;
  void** writeback_v_dst = nullptr;

  // Page summary (block_summary.h) of the append page, over its tokens after the append:
  // k_pages = append_k, tokens = T % P + 1, summary_dst[a] = page T / P's entry of summary
  // array a (for a < storage.summary_arrays; the other entries of summary_dst are unused).
  int32_t* summary_tokens = nullptr;  // T % P + 1
  void** summary_dst[kMaxSummaryArrays] = {};

  // Block select (block_select.h): the cold pages [S, max(S, n - W)) and the start of each
  // of the item's summary arrays (page 0's entry).
  int32_t* select_begin = nullptr;
  int32_t* select_end = nullptr;
  const void** select_summary[kMaxSummaryArrays] = {};

  // Cache resolve and miss load: the item's row (its directory row and page-table row), the
  // page-table offset row * max_pages, and its slot pools.
  int32_t* item_row = nullptr;
  int64_t* page_table_offset = nullptr;
  void** slot_k_base = nullptr;
  void** slot_v_base = nullptr;

  // Hot-set attention (decode_attention.h): [batch * num_kv_heads + 1] page offsets, page
  // pointer arrays of capacity batch * num_kv_heads * (S + W) (item i's pages from
  // hot_page_offsets[i], ascending page order: sinks, then window), and the tokens in each
  // item's last hot page (every hot page but the sequence's last page is full): T % P + 1.
  // Entries from hot_page_offsets[batch * num_kv_heads] on are not written.
  int32_t* hot_page_offsets = nullptr;
  const void** hot_k_pages = nullptr;
  const void** hot_v_pages = nullptr;
  int32_t* hot_last_page_tokens = nullptr;
};

// Inputs and outputs of BuildSelectedPages: the attention page list of the selected pages,
// and counters of the step.
struct SelectedPagesParams {
  int32_t num_items = 0;     // >= 0; 0 writes nothing
  int32_t max_selected = 0;  // row stride of selected_slots, >= 1
  int32_t page_size = 0;     // P: every selected page is full
  int64_t page_bytes = 0;
  // From DecodePlan and the resolve.
  void* const* slot_k_base = nullptr;       // [num_items]
  void* const* slot_v_base = nullptr;       // [num_items]
  const int32_t* selected_slots = nullptr;  // [num_items, max_selected]
  const int32_t* num_selected = nullptr;    // [num_items], each in [0, max_selected]
  const int32_t* hit_count = nullptr;       // [num_items] (may be null with counters null)
  const int32_t* miss_count = nullptr;      // [num_items] (may be null with counters null)
  // Outputs: [num_items + 1] offsets, [num_items * max_selected] page pointers (item i's
  // from page_offsets[i], in selection order: slot_base + selected_slots[e] * page_bytes;
  // entries from page_offsets[num_items] on are not written), [num_items] last-page tokens
  // (P for every item; attention ignores it for an item without pages).
  int32_t* page_offsets = nullptr;
  const void** k_pages = nullptr;
  const void** v_pages = nullptr;
  int32_t* last_page_tokens = nullptr;
  // Optional [3]: adds the step's listed pages (selected and appended), hits and misses
  // (64-bit, atomic on the device) to counters[0], [1], [2].
  unsigned long long* counters = nullptr;
  // Optional list appended to each item's selected pages (e.g. DecodePlan's hot pages, so one
  // attention launch covers both): item i's entries continue with pages
  // [append_offsets[i], append_offsets[i + 1]) of append_k / append_v, and its last-page
  // tokens are append_last[i] when it has appended pages. All four set, or all null; the
  // output arrays then hold num_items * max_selected + append_offsets[num_items] entries.
  const int32_t* append_offsets = nullptr;  // [num_items + 1], append_offsets[0] == 0
  const void* const* append_k = nullptr;
  const void* const* append_v = nullptr;
  const int32_t* append_last = nullptr;  // [num_items]
};

// Inputs and outputs of ComputePageMass: the share of the final attention of each selected
// page, summed over the item's G query heads:
//   mass[i * max_selected + e] = sum_h sum_{chunks c of page e} exp(chunk_lse[c, h] - lse[i, h])
// where page e of item i is entry page_offsets[i] + e of the selected attention's page list
// and its chunks are entries (page_offsets[i] + e) * (P / 16) + [0, P / 16) of chunk_lse
// (PagedDecodeParams::chunk_lse). A -inf chunk lse adds 0; a -inf total lse (no tokens) gives
// mass 0. Entries at or beyond num_selected[i] are not written.
struct PageMassParams {
  int32_t num_items = 0;
  int32_t group_size = 0;                 // G
  int32_t max_selected = 0;               // row stride of mass
  int32_t page_size = 0;                  // P: 16, 32 or 64
  const int32_t* page_offsets = nullptr;  // [num_items + 1] of the selected attention
  const int32_t* num_selected = nullptr;  // [num_items]
  const float* chunk_lse = nullptr;       // [page_offsets[num_items] * P / 16, G]
  const float* lse = nullptr;             // [num_items, G] the final (merged) log-sum-exp
  float* mass = nullptr;                  // [num_items, max_selected]
};

// One page list of a step whose attention mass the score policy adds to the cache slots'
// scores: the list's attention (page_offsets, chunk_lse as for ComputePageMass) and the cache
// slot of each of its first num_selected[i] entries.
struct ScoredPageList {
  const int32_t* page_offsets = nullptr;  // [num_items + 1] of the list's attention
  const int32_t* num_selected = nullptr;  // [num_items]
  const int32_t* slots = nullptr;         // [num_items, max_selected]: slot of entry e
  const float* chunk_lse = nullptr;       // [page_offsets[num_items] * P / 16, G]
};

// Inputs and outputs of UpdatePageScores, the score policy's update after a step's attention
// (ComputePageMass and CacheScoreUpdate in one pass): for each item, every slot's score is
// multiplied by `decay` (skipped when decay == 1), then for each list and each entry
// e < num_selected[i], score[slots[i * max_selected + e]] += mass(i, e), where mass(i, e) is
// what ComputePageMass computes for that list. One rounding per multiply and per add (no fused
// multiply-add), as CacheScoreUpdate. A slot appears at most once per item across the lists
// (a page is a hit or a miss, never both).
struct PageScoreUpdateParams {
  int32_t num_items = 0;
  int32_t group_size = 0;      // G
  int32_t max_selected = 0;    // row stride of the lists' slots
  int32_t page_size = 0;       // P: 16, 32 or 64
  int32_t num_slots = 0;       // slots per score row
  const float* lse = nullptr;  // [num_items, G] the final (merged) log-sum-exp
  int32_t num_lists = 0;       // 1 or 2
  ScoredPageList lists[2];
  // [num_rows, num_slots] rows item_rows[i] (distinct, >= 0); item_rows nullptr: row i.
  float* slot_score = nullptr;
  const int32_t* item_rows = nullptr;
  int32_t num_rows = 0;  // > 0: the twin checks rows against it and the kernel skips others
  float decay = 1.0f;    // in (0, 1]
};

namespace internal {
// Sizes, limits and the presence of every array; InvalidArgument naming the field.
absl::Status ValidateDecodePlanShape(const DecodePlanParams& params);
absl::Status ValidateSelectedPagesShape(const SelectedPagesParams& params);
absl::Status ValidatePageMassShape(const PageMassParams& params);
absl::Status ValidatePageScoreUpdateShape(const PageScoreUpdateParams& params);
}  // namespace internal

// Host twins (host memory). They also check the per-entry inputs and write nothing when one is
// bad (InvalidArgument): DecodePlan: seq_slot >= 0 with item rows that fit int32, 1 <= T <=
// max_pages * P - 1, and a non-null host page table entry (K and V) for a page this step
// completes; BuildSelectedPages: num_selected in [0, max_selected], selected slots >= 0,
// non-null slot bases for items with pages, hit and miss counts >= 0 (with counters);
// ComputePageMass: num_selected in [0, max_selected] and within the item's pages
// (page_offsets[0] >= 0, num_selected[i] <= page_offsets[i + 1] - page_offsets[i]).
absl::Status ReferenceDecodePlan(const DecodePlanParams& params);
absl::Status ReferenceBuildSelectedPages(const SelectedPagesParams& params);
absl::Status ReferenceComputePageMass(const PageMassParams& params);
// Also checks, before writing anything: rows in range (with num_rows > 0) and distinct, each
// list's counts in [0, max_selected] and within the item's pages, slots in [0, num_slots) and
// distinct within an item across the lists.
absl::Status ReferenceUpdatePageScores(const PageScoreUpdateParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch each, no allocation, no host synchronisation (CUDA-graph capturable). Entries are
// device data and not read on the host. A DecodePlan batch entry that breaks the contract
// (seq_slot < 0, T outside [1, max_pages * P - 1]) is written as an empty item that later
// kernels skip: no hot pages, append_row -1, null append, write-back, summary and slot
// pointers, summary tokens 0, select range [0, 0), item_row -1, page_table_offset 0, last
// page tokens 0. The other two clamp counts to [0, max_selected].
absl::Status LaunchDecodePlan(const DecodePlanParams& params, cudaStream_t stream);
absl::Status LaunchBuildSelectedPages(const SelectedPagesParams& params, cudaStream_t stream);
absl::Status LaunchComputePageMass(const PageMassParams& params, cudaStream_t stream);
// One block per item; an item whose row is outside [0, num_rows) (num_rows > 0) is skipped,
// and so is an entry whose slot is outside [0, num_slots).
absl::Status LaunchUpdatePageScores(const PageScoreUpdateParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
