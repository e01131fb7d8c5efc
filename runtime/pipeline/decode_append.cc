// Decode's append phase (step 1 of ARCHITECTURE.md's decode step): the device-side plan of the
// step, the new token's K and V into the window, the summary of the page they land in, and
// the write-back of the pages this token completes. Order in decode.cc.
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

// Caller stream: wait(previous write-back of the layer) -> plan -> append -> [page summary] ->
// [(record appended)]; copy stream: [wait(appended) -> write-back -> (record written_back)].
// `appended` is recorded when a later phase starts from it (the write-back, or the hot set's
// attention beside selection).
absl::Status KvCacheImpl::DecodeAppend(const DecodeStep& step) {
  const ModelShape& shape = options_.shape;
  LayerArrays& a = *step.arrays;
  cudaStream_t stream = step.stream;
  // The plan rewrites the write-back lists the layer's previous write-back reads.
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, a.written_back, step.capturing));
  DecodePlanParams plan;
  plan.storage = Storage();
  plan.num_layers = shape.num_layers;
  plan.num_kv_heads = shape.num_kv_heads;
  plan.layer = step.layer;
  plan.batch = step.batch;
  plan.seq_slot = a.seq_slot;
  plan.tokens_before = a.tokens_before;
  plan.append_k = a.append_k;
  plan.append_v = a.append_v;
  plan.append_row = a.append_row;
  plan.writeback_k_dst = a.writeback_k_dst;
  plan.writeback_v_dst = a.writeback_v_dst;
  plan.summary_tokens = a.summary_tokens;
  for (int i = 0; i < summary_layout_.arrays; ++i) {
    plan.summary_dst[i] = a.summary_dst[i];
    plan.select_summary[i] = a.select_summary[i];
  }
  plan.select_begin = a.select_begin;
  plan.select_end = a.select_end;
  plan.item_row = a.item_row;
  plan.page_table_offset = a.page_table_offset;
  plan.slot_k_base = a.slot_k_base;
  plan.slot_v_base = a.slot_v_base;
  plan.hot_page_offsets = a.hot_offsets;
  plan.hot_k_pages = a.hot_k;
  plan.hot_v_pages = a.hot_v;
  plan.hot_last_page_tokens = a.hot_last;
  KVTIER_RETURN_IF_ERROR(backend_->DecodePlan(plan, stream));

  AppendParams append;
  append.dtype = shape.dtype;
  append.batch = step.batch;
  append.num_kv_heads = shape.num_kv_heads;
  append.head_dim = shape.head_dim;
  append.page_size = plan_.page_size;
  append.k_new = step.k_in;
  append.v_new = step.v_in;
  append.k_pages = a.append_k;
  append.v_pages = a.append_v;
  append.rows = a.append_row;
  KVTIER_RETURN_IF_ERROR(backend_->Append(append, stream));

  // Only a page this token completes needs its summary: a page becomes a candidate when it
  // leaves the window (at least one page, Options), after it is complete, and its summary is
  // then over all of its tokens. Steps that complete no page summarise nothing.
  if (step.any_writeback) {
    PageBatch summary;
    summary.num_pages = step.items;
    summary.k_pages = reinterpret_cast<const void* const*>(a.append_k);
    summary.v_pages = reinterpret_cast<const void* const*>(a.append_v);
    summary.tokens = a.summary_tokens;
    for (int i = 0; i < summary_layout_.arrays; ++i) summary.dst[i] = a.summary_dst[i];
    KVTIER_RETURN_IF_ERROR(index_->Summarize(*backend_, summary, stream));
  }
  if (step.timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_plan, stream));
  // The write-back and the hot set's attention start from here.
  if (step.any_writeback || step.any_candidates) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(step.appended, stream));
  }
  if (!step.any_writeback) return absl::OkStatus();
  // Every item's append page is on the list; the plan left a null destination for the pages
  // that are not complete yet.
  TransferEngine::WriteBackBatch pages;
  pages.num_pages = step.items;
  pages.k_src = reinterpret_cast<const void* const*>(a.append_k);
  pages.v_src = reinterpret_cast<const void* const*>(a.append_v);
  pages.k_dst = a.writeback_k_dst;
  pages.v_dst = a.writeback_v_dst;
  return transfer_engine_->WriteBack(pages, step.appended, step.written_back);
}

}  // namespace kvtier::internal
