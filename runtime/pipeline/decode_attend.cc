// Decode's attend phase (step 5 of ARCHITECTURE.md's decode step, before the merge): partial
// attention, each part with its own output and log-sum-exp, over the hot set (on the hot
// stream, beside selection, resolve and load), over the selected pages the page cache holds
// (while the misses load) and over the misses (once loaded). Order in decode.cc.
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {
namespace {

// The hot set's attention page list, written by the plan.
PageList HotSet(const LayerArrays& a) { return {a.hot_offsets, a.hot_k, a.hot_v, a.hot_last}; }

void SetPages(const PageList& pages, PagedDecodeParams& attend) {
  attend.k_pages = pages.k;
  attend.v_pages = pages.v;
  attend.page_offsets = pages.offsets;
  attend.last_page_tokens = pages.last;
}

}  // namespace

PagedDecodeParams KvCacheImpl::StepAttention(const DecodeStep& step) const {
  const ModelShape& shape = options_.shape;
  PagedDecodeParams attend;
  attend.dtype = shape.dtype;
  attend.head_dim = shape.head_dim;
  attend.page_size = plan_.page_size;
  attend.group_size = shape.group_size();
  attend.softmax_scale = scale_;
  attend.num_items = step.items;
  attend.q = step.q_in;
  attend.out_dtype = DType::kFP32;
  return attend;
}

SelectedPagesParams KvCacheImpl::SelectedPageList(const DecodeStep& step, const PageList& list,
                                                  const int32_t* slots,
                                                  const int32_t* count) const {
  const LayerArrays& a = *step.arrays;
  SelectedPagesParams l;
  l.num_items = step.items;
  l.max_selected = plan_.max_selected;
  l.page_size = plan_.page_size;
  l.page_bytes = plan_.page_bytes;
  l.slot_k_base = a.slot_k_base;
  l.slot_v_base = a.slot_v_base;
  l.selected_slots = slots;
  l.num_selected = count;
  l.page_offsets = list.offsets;
  l.k_pages = list.k;
  l.v_pages = list.v;
  l.last_page_tokens = list.last;
  return l;
}

// Caller stream: attention over the hot set straight into out (no other part to merge).
absl::Status KvCacheImpl::DecodeAttendAllHot(const DecodeStep& step) {
  PagedDecodeParams attend = StepAttention(step);
  SetPages(HotSet(*step.arrays), attend);
  attend.out_dtype = step.out_dtype;
  attend.out = step.out_target;
  attend.lse = scratch_.lse;
  return backend_->Attention(attend, step.max_hot_tokens, scratch_.attention_workspace,
                             scratch_.attention_workspace_bytes, kMaxAttentionSplits, step.stream);
}

// Hot stream: wait(appended) -> attention over the hot set into the hot part. It needs only
// the plan, so it overlaps selection, resolve and the miss load. After DecodeSelect.
absl::Status KvCacheImpl::DecodeAttendHotSet(const DecodeStep& step) {
  cudaStream_t hot_stream = backend_->hot_stream();
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(hot_stream, step.appended));
  PagedDecodeParams attend = StepAttention(step);
  SetPages(HotSet(*step.arrays), attend);
  attend.out = scratch_.hot_out;
  attend.lse = scratch_.hot_lse;
  attend.chunk_lse = nullptr;
  return backend_->Attention(attend, step.max_hot_tokens, scratch_.hot_attention_workspace,
                             scratch_.attention_workspace_bytes, kMaxAttentionSplits, hot_stream);
}

// Caller stream: page list of the hits (and the step's hit and miss counters) -> attention
// over the hits (overlapping the load) -> wait(loaded) -> attention over the misses. After
// DecodeLoad. With the score policy each part also writes its chunks' log-sum-exps, which
// DecodeMerge turns into the pages' attention mass.
absl::Status KvCacheImpl::DecodeAttendSelected(const DecodeStep& step) {
  LayerArrays& a = *step.arrays;
  SelectedPagesParams hits = SelectedPageList(step, a.hits, a.hit_slots, a.hit_count);
  hits.hit_count = a.hit_count;
  hits.miss_count = a.miss_count;
  hits.counters = a.counters;
  KVTIER_RETURN_IF_ERROR(backend_->BuildSelectedPages(hits, step.stream));

  const bool score_policy = page_cache_->scores_pages();
  const int64_t selected_tokens = int64_t{plan_.max_selected} * plan_.page_size;
  // Split-K pays when items are long. A locality policy leaves an item a few misses, where
  // every extra split is a wave of nearly idle blocks (about 4 us each on the H100) and a
  // split merge: the misses' attention takes one block per item. Cache off misses all.
  const int miss_splits = options_.cache_policy == CachePolicy::kNone ? kMaxAttentionSplits : 1;
  const struct {
    const PageList& list;
    float* out;
    float* lse;
    float* chunk_lse;
    int max_splits;
  } parts[2] = {
      {a.hits, scratch_.hit_out, scratch_.hit_lse, scratch_.hit_chunk_lse, kMaxAttentionSplits},
      {a.misses, scratch_.miss_out, scratch_.miss_lse, scratch_.miss_chunk_lse, miss_splits}};
  PagedDecodeParams attend = StepAttention(step);
  for (int part = 0; part < 2; ++part) {
    if (part == 1) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(step.stream, step.loaded));
    SetPages(parts[part].list, attend);
    attend.out = parts[part].out;
    attend.lse = parts[part].lse;
    attend.chunk_lse = score_policy ? parts[part].chunk_lse : nullptr;
    KVTIER_RETURN_IF_ERROR(backend_->Attention(
        attend, selected_tokens, scratch_.attention_workspace, scratch_.attention_workspace_bytes,
        parts[part].max_splits, step.stream));
  }
  return absl::OkStatus();
}

}  // namespace kvtier::internal
