// The decode step's arrays in backend memory: per layer (LayerArrays, written by one Decode of
// the layer and read by the next and by Inspect) and shared by every layer's Decode
// (DecodeScratch). One description, the Carve functions below, both sizes them for the memory
// plan (a counting Carver) and carves them out of the allocation, so the two never disagree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/backend/step_backend.h"
#include "kernels/base/carver.h"
#include "kernels/decode_plan.h"
#include "runtime/core/sequence_id.h"
#include "runtime/stats.h"

namespace kvtier::internal {

// The sizes the step arrays follow (from the memory plan and the index).
struct StepGeometry {
  int32_t max_batch = 0;     // sequences a Decode takes
  int32_t batch_items = 0;   // max_batch * Hk
  int32_t group_size = 0;    // G
  int32_t head_dim = 0;      // D
  int64_t dtype_bytes = 0;   // of q, k, v
  int32_t page_size = 0;     // P
  int32_t sink_pages = 0;    // S
  int32_t window_pages = 0;  // W
  int32_t max_selected = 0;  // the retrieval budget k
  int32_t zone_stride = 0;   // the estimation zone's list length (0: no zone lists)
  bool estimates = false;    // the index estimates (a zone, or the rest): estimate out / lse
  int32_t summary_arrays = 0;
  size_t attention_workspace_bytes = 0;
  size_t select_workspace_bytes = 0;
};

// A page list of paged attention (decode_attention.h), in backend memory.
struct PageList {
  int32_t* offsets = nullptr;  // [items + 1]
  const void** k = nullptr;    // [items * max_selected]
  const void** v = nullptr;
  int32_t* last = nullptr;  // [items]
};

// One layer's step arrays in backend memory, plus its events and host records.
struct LayerArrays {
  int32_t* seq_slot = nullptr;       // [max_batch], then tokens_before right after it
  int32_t* tokens_before = nullptr;  // [max_batch]
  void** append_k = nullptr;
  void** append_v = nullptr;
  int32_t* append_row = nullptr;
  void** writeback_k_dst = nullptr;
  void** writeback_v_dst = nullptr;
  int32_t* summary_tokens = nullptr;
  void** summary_dst[kMaxSummaryArrays] = {};
  int32_t* select_begin = nullptr;
  int32_t* select_end = nullptr;
  const void** select_summary[kMaxSummaryArrays] = {};
  int32_t* item_row = nullptr;
  int64_t* page_table_offset = nullptr;
  void** slot_k_base = nullptr;
  void** slot_v_base = nullptr;
  int32_t* hot_offsets = nullptr;
  const void** hot_k = nullptr;
  const void** hot_v = nullptr;
  int32_t* hot_last = nullptr;
  int32_t* selected = nullptr;
  int32_t* num_selected = nullptr;
  int32_t* zone = nullptr;        // [items, zone_stride]: the estimation zone (with retrieved)
  int32_t* zone_count = nullptr;  // [items]
  int32_t* selected_slots = nullptr;
  int32_t* miss_pages = nullptr;
  int32_t* miss_slots = nullptr;
  int32_t* hit_count = nullptr;
  int32_t* miss_count = nullptr;
  int32_t* hit_slots = nullptr;
  // Attention page lists: the hits (resident: attended while the misses load) and the misses
  // (attended after the load). The hot set is attended from the hot list above.
  PageList hits;
  PageList misses;
  unsigned long long* counters = nullptr;  // [3] hits listed, hits, misses

  int32_t* staging = nullptr;  // host: [2 * max_batch] seq_slot then tokens_before
  // The same for a Decode captured in a CUDA graph: the graph's copy reads it when it runs.
  int32_t* capture_staging = nullptr;

  EventHandle uploaded = nullptr;        // the staging upload has been consumed
  EventHandle appended = nullptr;        // append + summary done (write-back may start)
  EventHandle written_back = nullptr;    // this layer's latest write-back done
  EventHandle resolved = nullptr;        // resolve done (the load may start)
  EventHandle loaded = nullptr;          // miss load done
  EventHandle hot_attended = nullptr;    // the hot set's attention (hot stream) done
  EventHandle selected_event = nullptr;  // selection done (the estimation zone may start)
  EventHandle scored_event = nullptr;    // the selection's scoring pass done (estimate_rest)
  // Joins between streams inside a Decode captured in a CUDA graph (the events above keep
  // describing the uncaptured work, which later calls wait on).
  EventHandle cap_appended = nullptr, cap_written_back = nullptr, cap_resolved = nullptr,
              cap_loaded = nullptr, cap_hot_attended = nullptr, cap_selected = nullptr,
              cap_scored = nullptr;
  // Timing (collect_timings): start, after plan/append/summary, after select, after resolve,
  // load start and end, end.
  EventHandle t_start = nullptr, t_plan = nullptr, t_select = nullptr, t_resolve = nullptr,
              t_load_start = nullptr, t_load_end = nullptr, t_end = nullptr;
  bool timing_pending = false;
  bool selection_ran = false;  // the last Decode ran select/resolve (some item had candidates)

  std::vector<SeqId> last_batch;      // the last Decode's sequences
  std::vector<bool> last_batch_live;  // false once that sequence was removed
  int32_t step = 0;                   // resolve clock
  LayerStats stats;                   // host-side counters (device counters added on read)
};

// Partial attention results a Decode merges: the hits, the misses, the hot set and (indexes
// with an estimation zone) the estimate.
inline constexpr int kMaxDecodeParts = 4;

// Shared decode scratch (backend memory).
struct DecodeScratch {
  void* q = nullptr;
  void* k_new = nullptr;
  void* v_new = nullptr;
  void* out = nullptr;  // staging for host `out`
  float* hit_out = nullptr;
  float* hit_lse = nullptr;
  float* miss_out = nullptr;
  float* miss_lse = nullptr;
  float* hot_out = nullptr;
  float* hot_lse = nullptr;
  float* estimate_out = nullptr;  // with an estimation zone
  float* estimate_lse = nullptr;
  float* lse = nullptr;
  const float** part_out = nullptr;  // [kMaxDecodeParts]: hits, misses, hot set, estimate
  const float** part_lse = nullptr;  // [kMaxDecodeParts]
  // Split-K workspaces of the attention on the caller's stream (hits, then misses) and of the
  // hot set's on the hot stream (the two may run at once); each attention_workspace_bytes.
  void* attention_workspace = nullptr;
  void* hot_attention_workspace = nullptr;
  size_t attention_workspace_bytes = 0;
  void* select_workspace = nullptr;
  size_t select_workspace_bytes = 0;
  float* hit_chunk_lse = nullptr;
  float* miss_chunk_lse = nullptr;
};

// One prefill staging buffer (two alternate so that packing the next piece overlaps the
// write-back of the previous one). Backend memory, events aside.
struct PrefillBuffer {
  std::byte* pages = nullptr;   // [prefill_pages * Hk] K pages, then as many V pages
  std::byte* k_rows = nullptr;  // host inputs copied here: [chunk tokens, Hk, D]
  std::byte* v_rows = nullptr;
  // Indexes that order segments: the piece's rows in the index's order, and the order.
  std::byte* ordered_k_rows = nullptr;
  std::byte* ordered_v_rows = nullptr;
  int32_t* order = nullptr;  // [Hk, chunk tokens]
  void* segment_workspace = nullptr;
  size_t segment_workspace_bytes = 0;
  std::byte* pointers = nullptr;  // the piece's pointer arrays (see PrefillPiece)
  int64_t pointer_bytes = 0;
  EventHandle packed = nullptr;
  EventHandle written_back = nullptr;
};

// What a prefill buffer is carved by.
struct PrefillGeometry {
  int32_t num_kv_heads = 0;
  int32_t prefill_pages = 0;  // staged pages of one piece per KV head
  int32_t chunk_tokens = 0;   // max_prefill_chunk_tokens
  int64_t row_bytes = 0;      // one token's K (or V) row of all KV heads: Hk * D * dtype size
  int64_t page_bytes = 0;
  int32_t summary_arrays = 0;
  bool orders_segments = false;
  size_t segment_workspace_bytes = 0;
};

// Pointers and int32 entries of a piece's pointer arrays (PrefillPiece's layout).
int64_t PrefillPointerCount(const PrefillGeometry& g);
int64_t PrefillInt32Count(const PrefillGeometry& g);

// Carves one layer's backend arrays (events and host fields are left alone).
void CarveLayerArrays(Carver& c, const StepGeometry& g, LayerArrays& a);
// Carves the shared decode scratch.
void CarveDecodeScratch(Carver& c, const StepGeometry& g, DecodeScratch& x);
// Carves one prefill buffer.
void CarvePrefillBuffer(Carver& c, const PrefillGeometry& g, PrefillBuffer& b);

}  // namespace kvtier::internal
