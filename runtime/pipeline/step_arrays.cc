#include "runtime/pipeline/step_arrays.h"

namespace kvtier::internal {

void CarveLayerArrays(Carver& c, const StepGeometry& g, LayerArrays& a) {
  const int64_t b = g.max_batch;
  const int64_t bi = g.batch_items;
  const int64_t k = g.max_selected;
  const int64_t hot_cap = int64_t{g.sink_pages} + g.window_pages;
  a.seq_slot = c.Take<int32_t>(2 * b);
  a.tokens_before = a.seq_slot != nullptr ? a.seq_slot + b : nullptr;
  a.append_k = c.Take<void*>(bi);
  a.append_v = c.Take<void*>(bi);
  a.writeback_k_dst = c.Take<void*>(bi);
  a.writeback_v_dst = c.Take<void*>(bi);
  a.append_row = c.Take<int32_t>(b);
  a.summary_tokens = c.Take<int32_t>(bi);
  a.select_begin = c.Take<int32_t>(bi);
  a.select_end = c.Take<int32_t>(bi);
  for (int s = 0; s < g.summary_arrays; ++s) {
    a.summary_dst[s] = c.Take<void*>(bi);
    a.select_summary[s] = c.Take<const void*>(bi);
  }
  a.item_row = c.Take<int32_t>(bi);
  a.page_table_offset = c.Take<int64_t>(bi);
  a.slot_k_base = c.Take<void*>(bi);
  a.slot_v_base = c.Take<void*>(bi);
  a.hot_offsets = c.Take<int32_t>(bi + 1);
  a.hot_k = c.Take<const void*>(bi * hot_cap);
  a.hot_v = c.Take<const void*>(bi * hot_cap);
  a.hot_last = c.Take<int32_t>(bi);
  a.selected = c.Take<int32_t>(bi * k);
  a.selected_slots = c.Take<int32_t>(bi * k);
  a.miss_pages = c.Take<int32_t>(bi * k);
  a.miss_slots = c.Take<int32_t>(bi * k);
  a.num_selected = c.Take<int32_t>(bi);
  a.hit_count = c.Take<int32_t>(bi);
  a.miss_count = c.Take<int32_t>(bi);
  a.hit_slots = c.Take<int32_t>(bi * k);
  if (g.zone_stride > 0) {
    a.zone = c.Take<int32_t>(bi * g.zone_stride);
    a.zone_count = c.Take<int32_t>(bi);
  }
  for (PageList* list : {&a.hits, &a.misses}) {
    list->offsets = c.Take<int32_t>(bi + 1);
    list->k = c.Take<const void*>(bi * k);
    list->v = c.Take<const void*>(bi * k);
    list->last = c.Take<int32_t>(bi);
  }
  a.counters = c.Take<unsigned long long>(3);
}

void CarveDecodeScratch(Carver& c, const StepGeometry& g, DecodeScratch& x) {
  const int64_t bi = g.batch_items;
  const int64_t k = g.max_selected;
  const int64_t rows = bi * g.group_size;  // query rows
  const int64_t d = g.head_dim;
  x.q = c.Bytes(rows * d * g.dtype_bytes);
  x.k_new = c.Bytes(bi * d * g.dtype_bytes);
  x.v_new = c.Bytes(bi * d * g.dtype_bytes);
  x.out = c.Bytes(rows * d * 4);
  x.hit_out = c.Take<float>(rows * d);
  x.hit_lse = c.Take<float>(rows);
  x.miss_out = c.Take<float>(rows * d);
  x.miss_lse = c.Take<float>(rows);
  x.hot_out = c.Take<float>(rows * d);
  x.hot_lse = c.Take<float>(rows);
  if (g.estimates) {
    x.estimate_out = c.Take<float>(rows * d);
    x.estimate_lse = c.Take<float>(rows);
  }
  x.lse = c.Take<float>(rows);
  // One 256-byte region holds both pointer arrays.
  x.part_out = c.Take<const float*>(2 * kMaxDecodeParts);
  x.part_lse = x.part_out != nullptr ? x.part_out + kMaxDecodeParts : nullptr;
  x.attention_workspace_bytes = g.attention_workspace_bytes;
  if (g.attention_workspace_bytes > 0) {
    x.attention_workspace = c.Bytes(static_cast<int64_t>(g.attention_workspace_bytes));
    x.hot_attention_workspace = c.Bytes(static_cast<int64_t>(g.attention_workspace_bytes));
  }
  x.select_workspace_bytes = g.select_workspace_bytes;
  x.select_workspace = c.Bytes(static_cast<int64_t>(g.select_workspace_bytes));
  x.hit_chunk_lse = c.Take<float>(bi * k * (g.page_size / 16) * g.group_size);
  x.miss_chunk_lse = c.Take<float>(bi * k * (g.page_size / 16) * g.group_size);
}

int64_t PrefillPointerCount(const PrefillGeometry& g) {
  const int64_t entries = int64_t{g.prefill_pages} * g.num_kv_heads;
  // pack k/v, write-back k/v sources and destinations, hot copy sources and destinations (K
  // and V each), summary destinations; partial-page copy sources and destinations (K and V),
  // segment keys, orders and positions.
  return entries * (2 + 4 + 4 + g.summary_arrays) + 4 * int64_t{g.num_kv_heads} +
         3 * int64_t{g.num_kv_heads};
}

int64_t PrefillInt32Count(const PrefillGeometry& g) {
  // Summary tokens a page, tokens a segment.
  return int64_t{g.prefill_pages} * g.num_kv_heads + g.num_kv_heads;
}

void CarvePrefillBuffer(Carver& c, const PrefillGeometry& g, PrefillBuffer& b) {
  const int64_t np_hk = int64_t{g.prefill_pages} * g.num_kv_heads;
  const int64_t rows_bytes = int64_t{g.chunk_tokens} * g.row_bytes;
  b.pages = c.Bytes(np_hk * 2 * g.page_bytes);
  b.k_rows = c.Bytes(rows_bytes);
  b.v_rows = c.Bytes(rows_bytes);
  if (g.orders_segments) {
    b.ordered_k_rows = c.Bytes(rows_bytes);
    b.ordered_v_rows = c.Bytes(rows_bytes);
    b.order = c.Take<int32_t>(int64_t{g.num_kv_heads} * g.chunk_tokens);
    b.segment_workspace_bytes = g.segment_workspace_bytes;
    b.segment_workspace = c.Bytes(static_cast<int64_t>(g.segment_workspace_bytes));
  }
  b.pointer_bytes = PrefillPointerCount(g) * 8 + PrefillInt32Count(g) * 4;
  b.pointers = c.Bytes(b.pointer_bytes);
}

}  // namespace kvtier::internal
