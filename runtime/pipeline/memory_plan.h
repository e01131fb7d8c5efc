// The sizes of everything a KvCache allocates, computed from its options before anything is
// allocated, so that Create can refuse a configuration that does not fit with an error that
// says where the bytes go.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "index/block_index.h"
#include "offload/page_cache.h"
#include "runtime/core/options.h"
#include "runtime/pipeline/step_arrays.h"

namespace kvtier::internal {

// The most splits one attention launch may use (sizes its workspace).
inline constexpr int kMaxAttentionSplits = 16;

struct MemoryPlan {
  // Geometry of one item, a (sequence slot, layer, KV head): see kernels/decode_plan.h.
  int32_t page_size = 0;            // P
  int32_t sink_pages = 0;           // S
  int32_t window_pages = 0;         // W
  int32_t ring_pages = 0;           // R = W + 1
  int32_t max_pages = 0;            // pages of a sequence of max_sequence_tokens
  int32_t cache_slots = 0;          // C
  int32_t max_selected = 0;         // budget.max_pages
  int64_t page_bytes = 0;           // one K or V page
  int64_t summary_page_bytes = 0;   // one page's share of an item's summary region (index)
  int64_t scan_page_bytes = 0;      // summary bytes the index reads to score one page
  int64_t estimate_page_bytes = 0;  // summary bytes the estimation reads for one zone page
  int64_t rows = 0;                 // items of all sequence slots: max_sequences * L * Hk
  int32_t batch_items = 0;          // max_batch_size * Hk
  int32_t prefill_pages = 0;        // staging pages of one prefill piece per KV head
  StepGeometry step;                // what the step arrays and the decode scratch are carved by
  PageCacheGeometry page_cache;     // what the page cache's directory is sized by
  PrefillGeometry prefill;          // what each of the two prefill buffers is carved by

  // Device bytes (backend memory) by purpose.
  int64_t hot_bytes = 0;        // sink and window pages
  int64_t cache_bytes = 0;      // page-cache slots
  int64_t summary_bytes = 0;    // index summaries
  int64_t directory_bytes = 0;  // slot -> page, last use, score (PageCache::DirectoryBytes)
  int64_t step_bytes = 0;       // per-layer step arrays (plan, selection, resolve, page lists)
  int64_t scratch_bytes = 0;    // shared decode scratch (inputs, partials, workspaces)
  int64_t prefill_bytes = 0;    // two prefill staging buffers
  int64_t per_layer_step_bytes = 0;
  int64_t device_bytes() const {
    return hot_bytes + cache_bytes + summary_bytes + directory_bytes + step_bytes + scratch_bytes +
           prefill_bytes;
  }
  // Bytes that grow with max_sequences (all of hot, cache, summaries, directory).
  int64_t per_sequence_device_bytes = 0;

  // Host: the store's frames and the page tables (pinned).
  int64_t host_frames = 0;
  int64_t page_table_bytes = 0;

  // "hot 1.2 GiB, cache 4.0 GiB, ..." for messages.
  std::string Describe() const;
};

// Plans `options` (already validated) with the index built from them. InvalidArgument when the
// options cannot run (a cache larger than the resolve supports, a host store below one page per KV
// head); ResourceExhausted when the device budget is too small, naming the breakdown and the number
// of sequences that would fit.
absl::StatusOr<MemoryPlan> PlanMemory(const Options& options, const BlockIndex& index);

// The index's configuration for `options`.
IndexConfig MakeIndexConfig(const Options& options);

}  // namespace kvtier::internal
