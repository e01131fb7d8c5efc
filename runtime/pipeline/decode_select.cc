// Decode's select phase (step 2 of ARCHITECTURE.md's decode step): the index scores every
// cold block of every item against the query and keeps the top blocks by budget; indexes with
// an estimation zone also list the next-best blocks, which the hot stream turns into an
// estimate of their attention without moving their pages. Order in decode.cc.
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

// Caller stream: select -> [(record selected)]. After DecodeAppend.
absl::Status KvCacheImpl::DecodeSelect(const DecodeStep& step) {
  LayerArrays& a = *step.arrays;
  SelectBatch select;
  select.num_items = step.items;
  select.q = step.q_in;
  select.block_begin = a.select_begin;
  select.block_end = a.select_end;
  for (int i = 0; i < summary_layout_.arrays; ++i) select.summaries[i] = a.select_summary[i];
  select.selected = a.selected;
  select.num_selected = a.num_selected;
  select.workspace = scratch_.select_workspace;
  select.workspace_bytes = scratch_.select_workspace_bytes;
  select.scored = step.scored;
  KVTIER_RETURN_IF_ERROR(index_->Select(*backend_, select, step.stream));
  if (step.estimates) KVTIER_RETURN_IF_ERROR(backend_->Record(step.selected, step.stream));
  if (step.timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_select, step.stream));
  return absl::OkStatus();
}

// Hot stream: [the estimate, waiting for the selection's scores or for the selection itself as
// the index needs (a zone is selected from the selection's scores, then estimated; the rest is
// estimated over every candidate once the scores are in, less the retrieved ones), beside the
// selection, resolve and the load] -> (record hot_attended): the hot stream's last work of the
// step, after DecodeAttendHotSet.
absl::Status KvCacheImpl::DecodeEstimate(const DecodeStep& step) {
  LayerArrays& a = *step.arrays;
  cudaStream_t hot_stream = backend_->hot_stream();
  if (step.estimates) {
    EstimateBatch estimate;
    estimate.scored_event = step.scored;
    estimate.selected_event = step.selected;
    estimate.num_items = step.items;
    estimate.q = step.q_in;
    estimate.block_begin = a.select_begin;
    estimate.block_end = a.select_end;
    for (int i = 0; i < summary_layout_.arrays; ++i) estimate.summaries[i] = a.select_summary[i];
    estimate.selected = a.selected;
    estimate.num_selected = a.num_selected;
    estimate.zone = a.zone;
    estimate.zone_count = a.zone_count;
    estimate.out = scratch_.estimate_out;
    estimate.lse = scratch_.estimate_lse;
    estimate.workspace = scratch_.select_workspace;
    estimate.workspace_bytes = scratch_.select_workspace_bytes;
    KVTIER_RETURN_IF_ERROR(index_->Estimate(*backend_, estimate, hot_stream));
  }
  return backend_->Record(step.hot_attended, hot_stream);
}

}  // namespace kvtier::internal
