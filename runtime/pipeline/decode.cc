// KvCache::Decode (contract in runtime/kv_cache.h). Decode(layer, batch), after every check
// has passed and the host store has frames for any page that starts with this token:
//   caller stream:  [upload slots and token counts] -> wait(previous write-back of the layer)
//                   -> plan -> append -> page summary -> (record appended)
//   copy stream:    wait(appended) -> write-back of completed pages -> (record written_back)
//   caller stream:  select (the index) -> [(record selected)]
//   hot stream:     wait(appended) -> attention over the hot set (overlapping selection,
//                   resolve and load) -> [wait(selected) -> the estimation zone] -> (record
//                   hot_attended)
//   caller stream:  resolve -> (record resolved)
//   load stream:    wait(resolved) -> page list of the misses -> wait(written_back) -> miss
//                   load -> (record loaded)
//   caller stream:  page list of the hits -> attention over the hits (overlapping the load)
//                   -> wait(loaded) -> attention over the misses -> wait(hot_attended) ->
//                   merge of the parts (hits, misses, hot set[, estimate]) into out ->
//                   [score update from each page's attention mass]
// When no sequence has pages outside its hot set, attention over the hot set on the caller's
// stream is the whole step.
// Nothing waits on the host: the token counts travel in one upload from pinned staging, and
// everything else is derived on the device (kernels/decode_plan.h).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

// ---- Decode -------------------------------------------------------------------------------

absl::Status KvCacheImpl::Decode(int layer, absl::Span<const SeqId> seqs, const ConstTensor& q,
                                 const ConstTensor& k_new, const ConstTensor& v_new,
                                 const MutableTensor& out, cudaStream_t stream) {
  absl::MutexLock lock(&mu_);
  const ModelShape& shape = options_.shape;
  KVTIER_RETURN_IF_ERROR(CheckLayer(layer));
  const int64_t batch = static_cast<int64_t>(seqs.size());
  if (batch > options_.max_batch_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("Decode: batch of ", batch,
                     " sequences exceeds max_batch_size = ", options_.max_batch_size));
  }
  KVTIER_RETURN_IF_ERROR(
      CheckTensor("Decode q", q, {{batch, shape.num_query_heads, shape.head_dim}, shape.dtype}));
  KVTIER_RETURN_IF_ERROR(CheckTensor("Decode k_new", k_new,
                                     {{batch, shape.num_kv_heads, shape.head_dim}, shape.dtype}));
  KVTIER_RETURN_IF_ERROR(CheckTensor("Decode v_new", v_new,
                                     {{batch, shape.num_kv_heads, shape.head_dim}, shape.dtype}));
  if (out.dtype != DType::kFP32 && out.dtype != DType::kBF16 && out.dtype != DType::kFP16) {
    return absl::InvalidArgumentError(
        absl::StrCat("Decode out: dtype ", DTypeName(out.dtype), ": allowed fp32, bf16 or fp16"));
  }
  KVTIER_RETURN_IF_ERROR(
      CheckTensor("Decode out", out, {{batch, shape.num_query_heads, shape.head_dim}, out.dtype}));
  KVTIER_RETURN_IF_ERROR(CheckSpace("Decode q", q.space));
  KVTIER_RETURN_IF_ERROR(CheckSpace("Decode k_new", k_new.space));
  KVTIER_RETURN_IF_ERROR(CheckSpace("Decode v_new", v_new.space));
  KVTIER_RETURN_IF_ERROR(CheckSpace("Decode out", out.space));
  KVTIER_ASSIGN_OR_RETURN(const bool capturing, backend_->IsCapturing(stream));
  if (capturing && (q.space == MemorySpace::kHost || k_new.space == MemorySpace::kHost ||
                    v_new.space == MemorySpace::kHost || out.space == MemorySpace::kHost)) {
    return absl::InvalidArgumentError(
        "Decode: a Decode captured in a CUDA graph takes device-memory q, k_new, v_new and out");
  }
  if (batch == 0) return absl::OkStatus();

  // Sequences: known, distinct, prefilled, with room for one more token.
  const int32_t p = plan_.page_size;
  // Reused host scratch (sized at creation): no host allocation per step. A slot's stamp
  // equals this call's number once one of its sequences was seen: a repeat is a duplicate.
  std::vector<Sequence*>& entries = decode_entries_;
  std::vector<HostPageTable::Growth>& growths = decode_growths_;
  entries.clear();
  growths.clear();
  ++decode_calls_;
  for (const SeqId seq : seqs) {
    auto it = sequences_.find(seq);
    if (it == sequences_.end()) {
      return absl::NotFoundError(absl::StrCat("Decode: sequence ", seq, " is not stored"));
    }
    Sequence& sequence = it->second;
    if (slot_stamp_[sequence.slot] == decode_calls_) {
      return absl::InvalidArgumentError(
          absl::StrCat("Decode: sequence ", seq, " appears twice in the batch"));
    }
    slot_stamp_[sequence.slot] = decode_calls_;
    const int64_t t = sequence.tokens[layer];
    if (t == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Decode: sequence ", seq, " has no tokens in layer ", layer, ": Prefill it first"));
    }
    if (t + 1 > options_.max_sequence_tokens) {
      return absl::ResourceExhaustedError(
          absl::StrCat("Decode: sequence ", seq, " holds ", t, " tokens in layer ", layer,
                       ", max_sequence_tokens = ", options_.max_sequence_tokens));
    }
    if (t % p == 0) {
      HostPageTable::Growth g;
      g.row_begin = Row(sequence.slot, layer, 0);
      g.num_rows = shape.num_kv_heads;
      g.pages_before = static_cast<int32_t>(t / p);
      g.pages_after = g.pages_before + 1;
      growths.push_back(g);
    }
    entries.push_back(&sequence);
  }
  KVTIER_RETURN_IF_ERROR(page_table_->Grow(growths));

  // Committed. Host-side accounting of the step, from the token counts.
  LayerArrays& a = layers_[layer];
  const int hk = shape.num_kv_heads;
  const int g = shape.group_size();
  const int32_t items = static_cast<int32_t>(batch * hk);
  const int32_t s = plan_.sink_pages;
  const int32_t w = plan_.window_pages;
  const int64_t row_bytes_kv =
      2 * int64_t{shape.head_dim} * static_cast<int64_t>(DTypeSize(shape.dtype));
  bool any_candidates = false;
  bool any_writeback = false;
  int64_t max_hot_tokens = 0;
  for (const Sequence* sequence : entries) {
    const int64_t t = sequence->tokens[layer];
    const int64_t n = t / p + 1;
    const int64_t cold_end = std::max<int64_t>(s, n - w);
    const int64_t hot_pages = std::min<int64_t>(s, n) + std::max<int64_t>(0, n - cold_end);
    const int64_t hot_tokens = (hot_pages - 1) * p + (t + 1 - (n - 1) * p);
    max_hot_tokens = std::max(max_hot_tokens, hot_tokens);
    a.stats.hot_bytes_read += hot_tokens * hk * row_bytes_kv;
    a.stats.summary_bytes_read += (cold_end - s) * hk * plan_.scan_page_bytes;
    if (cold_end > s) any_candidates = true;
    if (t % p == p - 1) {
      any_writeback = true;
      a.stats.bytes_written_back += int64_t{hk} * 2 * plan_.page_bytes;
    }
  }
  a.stats.decode_steps += 1;
  a.stats.decode_items += items;
  // Inside a CUDA-graph capture: no host waits, waits on earlier work are external, the
  // joins between kvtier's streams use their own events, and no timing.
  const bool timed = options_.collect_timings && !capturing;
  EventHandle appended = capturing ? a.cap_appended : a.appended;
  EventHandle written_back = capturing ? a.cap_written_back : a.written_back;
  EventHandle resolved = capturing ? a.cap_resolved : a.resolved;
  EventHandle loaded = capturing ? a.cap_loaded : a.loaded;
  EventHandle hot_attended = capturing ? a.cap_hot_attended : a.hot_attended;
  EventHandle selected = capturing ? a.cap_selected : a.selected_event;
  const bool estimates = index_->estimates();
  if (timed) KVTIER_RETURN_IF_ERROR(HarvestTimings(a));
  if (timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_start, stream));
  // Calls may come on different streams: each starts after the previous one's work, as the
  // calls share scratch and staging buffers.
  if (any_call_) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, last_call_done_, capturing));

  // Upload the batch: slot and token count per sequence.
  int32_t* staging = !backend_->on_device() ? a.seq_slot
                     : capturing            ? a.capture_staging
                                            : a.staging;
  if (backend_->on_device() && !capturing) KVTIER_RETURN_IF_ERROR(backend_->HostWait(a.uploaded));
  const int64_t b_max = options_.max_batch_size;
  for (int64_t b = 0; b < batch; ++b) {
    staging[b] = entries[b]->slot;
    staging[b_max + b] = static_cast<int32_t>(entries[b]->tokens[layer]);
  }
  if (backend_->on_device()) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(a.seq_slot, staging, 2 * b_max * 4, stream));
    if (!capturing) KVTIER_RETURN_IF_ERROR(backend_->Record(a.uploaded, stream));
  }

  // Inputs into backend memory.
  const int64_t dsize = static_cast<int64_t>(DTypeSize(shape.dtype));
  const void* q_in = q.data;
  const void* k_in = k_new.data;
  const void* v_in = v_new.data;
  if (backend_->on_device() && q.space == MemorySpace::kHost) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(
        scratch_.q, q.data, batch * shape.num_query_heads * shape.head_dim * dsize, stream));
    q_in = scratch_.q;
  }
  if (backend_->on_device() && k_new.space == MemorySpace::kHost) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(scratch_.k_new, k_new.data,
                                                   batch * hk * shape.head_dim * dsize, stream));
    k_in = scratch_.k_new;
  }
  if (backend_->on_device() && v_new.space == MemorySpace::kHost) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(scratch_.v_new, v_new.data,
                                                   batch * hk * shape.head_dim * dsize, stream));
    v_in = scratch_.v_new;
  }
  const bool out_staged = backend_->on_device() && out.space == MemorySpace::kHost;
  void* out_target = out_staged ? scratch_.out : out.data;

  // 1. Plan, append, summary.
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, a.written_back, capturing));
  DecodePlanParams plan;
  plan.storage = Storage();
  plan.num_layers = shape.num_layers;
  plan.num_kv_heads = hk;
  plan.layer = layer;
  plan.batch = static_cast<int32_t>(batch);
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
  append.batch = static_cast<int32_t>(batch);
  append.num_kv_heads = hk;
  append.head_dim = shape.head_dim;
  append.page_size = p;
  append.k_new = k_in;
  append.v_new = v_in;
  append.k_pages = a.append_k;
  append.v_pages = a.append_v;
  append.rows = a.append_row;
  KVTIER_RETURN_IF_ERROR(backend_->Append(append, stream));

  PageBatch summary;
  summary.num_pages = items;
  summary.k_pages = reinterpret_cast<const void* const*>(a.append_k);
  summary.v_pages = reinterpret_cast<const void* const*>(a.append_v);
  summary.tokens = a.summary_tokens;
  for (int i = 0; i < summary_layout_.arrays; ++i) summary.dst[i] = a.summary_dst[i];
  KVTIER_RETURN_IF_ERROR(index_->Summarize(*backend_, summary, stream));
  if (timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_plan, stream));
  // The write-back and the hot set's attention start from here.
  if (any_writeback || any_candidates) KVTIER_RETURN_IF_ERROR(backend_->Record(appended, stream));

  if (any_writeback) {
    cudaStream_t copy_stream = backend_->copy_stream();
    KVTIER_RETURN_IF_ERROR(backend_->StreamWait(copy_stream, appended));
    WriteBackParams wb;
    wb.num_pages = items;
    wb.page_bytes = plan_.page_bytes;
    wb.k_src = reinterpret_cast<const void* const*>(a.append_k);
    wb.v_src = reinterpret_cast<const void* const*>(a.append_v);
    wb.k_dst = a.writeback_k_dst;
    wb.v_dst = a.writeback_v_dst;
    KVTIER_RETURN_IF_ERROR(backend_->WriteBack(wb, copy_stream));
    KVTIER_RETURN_IF_ERROR(backend_->Record(written_back, copy_stream));
  }

  // Attention parameters shared by the hot and the selected part.
  PagedDecodeParams attend;
  attend.dtype = shape.dtype;
  attend.head_dim = shape.head_dim;
  attend.page_size = p;
  attend.group_size = g;
  attend.softmax_scale = scale_;
  attend.num_items = items;
  attend.q = q_in;
  attend.out_dtype = DType::kFP32;

  a.selection_ran = any_candidates;
  a.last_batch.assign(seqs.begin(), seqs.end());
  a.last_batch_live.assign(seqs.size(), true);
  if (!any_candidates) {
    // Every sequence is all hot: attention over the hot set is the whole answer.
    attend.k_pages = a.hot_k;
    attend.v_pages = a.hot_v;
    attend.page_offsets = a.hot_offsets;
    attend.last_page_tokens = a.hot_last;
    attend.out_dtype = out.dtype;
    attend.out = out_target;
    attend.lse = scratch_.lse;
    KVTIER_RETURN_IF_ERROR(backend_->Attention(attend, max_hot_tokens, scratch_.attention_workspace,
                                               scratch_.attention_workspace_bytes,
                                               kMaxAttentionSplits, stream));
    if (timed) {
      for (EventHandle e : {a.t_select, a.t_resolve, a.t_load_start, a.t_load_end}) {
        KVTIER_RETURN_IF_ERROR(backend_->Record(e, stream));
      }
    }
  } else {
    // 2. Select.
    SelectBatch select;
    select.num_items = items;
    select.q = q_in;
    select.block_begin = a.select_begin;
    select.block_end = a.select_end;
    for (int i = 0; i < summary_layout_.arrays; ++i) select.summaries[i] = a.select_summary[i];
    select.selected = a.selected;
    select.num_selected = a.num_selected;
    select.zone = a.zone;
    select.zone_count = a.zone_count;
    select.workspace = scratch_.select_workspace;
    select.workspace_bytes = scratch_.select_workspace_bytes;
    KVTIER_RETURN_IF_ERROR(index_->Select(*backend_, select, stream));
    if (estimates) KVTIER_RETURN_IF_ERROR(backend_->Record(selected, stream));
    if (timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_select, stream));

    // The hot set's attention needs only the plan: on the hot stream it overlaps selection,
    // resolve and the miss load. Issued after selection so that the scoring kernel, which the
    // step waits on, takes the GPU first and the hot set fills what it leaves.
    cudaStream_t hot_stream = backend_->hot_stream();
    KVTIER_RETURN_IF_ERROR(backend_->StreamWait(hot_stream, appended));
    attend.k_pages = a.hot_k;
    attend.v_pages = a.hot_v;
    attend.page_offsets = a.hot_offsets;
    attend.last_page_tokens = a.hot_last;
    attend.out = scratch_.hot_out;
    attend.lse = scratch_.hot_lse;
    attend.chunk_lse = nullptr;
    KVTIER_RETURN_IF_ERROR(
        backend_->Attention(attend, max_hot_tokens, scratch_.hot_attention_workspace,
                            scratch_.attention_workspace_bytes, kMaxAttentionSplits, hot_stream));
    if (estimates) {
      // The estimation zone, from the selection's lists, beside resolve and the load.
      KVTIER_RETURN_IF_ERROR(backend_->StreamWait(hot_stream, selected));
      EstimateBatch estimate;
      estimate.num_items = items;
      estimate.q = q_in;
      for (int i = 0; i < summary_layout_.arrays; ++i) {
        estimate.summaries[i] = a.select_summary[i];
      }
      estimate.selected = a.selected;
      estimate.num_selected = a.num_selected;
      estimate.zone = a.zone;
      estimate.zone_count = a.zone_count;
      estimate.out = scratch_.estimate_out;
      estimate.lse = scratch_.estimate_lse;
      KVTIER_RETURN_IF_ERROR(index_->Estimate(*backend_, estimate, hot_stream));
    }
    KVTIER_RETURN_IF_ERROR(backend_->Record(hot_attended, hot_stream));

    // 3. Resolve.
    CacheResolveParams resolve;
    resolve.directory.slot_page = dir_page_;
    resolve.directory.slot_last_use = dir_last_use_;
    resolve.directory.slot_score = dir_score_;
    resolve.directory.num_items = items;
    resolve.directory.num_slots = plan_.cache_slots;
    resolve.directory.max_pages = plan_.max_pages;
    resolve.directory.num_rows = static_cast<int32_t>(plan_.rows);
    resolve.item_rows = a.item_row;
    resolve.selected_pages = a.selected;
    resolve.num_selected = a.num_selected;
    resolve.max_selected = plan_.max_selected;
    resolve.step = ++a.step;
    resolve.policy = options_.cache_policy;
    if (options_.cache_policy == CachePolicy::kNone) {
      KVTIER_RETURN_IF_ERROR(backend_->Fill(scratch_.empty_page, 0xFF,
                                            int64_t{items} * plan_.cache_slots * 4, stream));
      resolve.directory.slot_page = scratch_.empty_page;
      resolve.directory.slot_last_use = scratch_.empty_last_use;
      resolve.directory.slot_score = scratch_.empty_score;
      resolve.directory.num_rows = 0;
      resolve.item_rows = nullptr;
      resolve.policy = CachePolicy::kLeastRecentlyUsed;
    }
    resolve.selected_slots = a.selected_slots;
    resolve.miss_pages = a.miss_pages;
    resolve.miss_slots = a.miss_slots;
    resolve.hit_count = a.hit_count;
    resolve.miss_count = a.miss_count;
    resolve.hit_slots = a.hit_slots;
    KVTIER_RETURN_IF_ERROR(backend_->CacheResolve(resolve, stream));
    if (timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_resolve, stream));

    // 4. The attention page lists: the misses' on the load stream (their attention waits for
    // the load anyway), then the miss load there; the hits' on the caller's stream.
    auto list_of = [&](const PageList& list, const int32_t* slots, const int32_t* count) {
      SelectedPagesParams l;
      l.num_items = items;
      l.max_selected = plan_.max_selected;
      l.page_size = p;
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
    };
    const SelectedPagesParams misses = list_of(a.misses, a.miss_slots, a.miss_count);
    SelectedPagesParams hits = list_of(a.hits, a.hit_slots, a.hit_count);
    hits.hit_count = a.hit_count;
    hits.miss_count = a.miss_count;
    hits.counters = a.counters;

    cudaStream_t load_stream = backend_->load_stream();
    KVTIER_RETURN_IF_ERROR(backend_->Record(resolved, stream));
    KVTIER_RETURN_IF_ERROR(backend_->StreamWait(load_stream, resolved));
    KVTIER_RETURN_IF_ERROR(backend_->BuildSelectedPages(misses, load_stream));
    // Pages that left the window are in the host store once the latest write-back is done.
    KVTIER_RETURN_IF_ERROR(backend_->StreamWait(
        load_stream, any_writeback ? written_back : a.written_back, capturing && !any_writeback));
    if (timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_load_start, load_stream));
    MissLoadParams load;
    load.num_items = items;
    load.max_misses = plan_.max_selected;
    load.page_bytes = plan_.page_bytes;
    load.miss_pages = a.miss_pages;
    load.miss_slots = a.miss_slots;
    load.miss_count = a.miss_count;
    load.host_k_pages = page_table_->k_table();
    load.host_v_pages = page_table_->v_table();
    load.page_table_offset = a.page_table_offset;
    load.slot_k_base = a.slot_k_base;
    load.slot_v_base = a.slot_v_base;
    KVTIER_RETURN_IF_ERROR(backend_->MissLoad(load, load_stream));
    if (timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_load_end, load_stream));
    KVTIER_RETURN_IF_ERROR(backend_->Record(loaded, load_stream));
    KVTIER_RETURN_IF_ERROR(backend_->BuildSelectedPages(hits, stream));

    // 5. Attend: the hits while the misses load, then the misses, then merge with the hot set.
    const bool score_policy = options_.cache_policy == CachePolicy::kLowestScore;
    const int64_t selected_tokens = int64_t{plan_.max_selected} * p;
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
    } selected_parts[2] = {
        {a.hits, scratch_.hit_out, scratch_.hit_lse, scratch_.hit_chunk_lse, kMaxAttentionSplits},
        {a.misses, scratch_.miss_out, scratch_.miss_lse, scratch_.miss_chunk_lse, miss_splits}};
    for (int part = 0; part < 2; ++part) {
      if (part == 1) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, loaded));
      attend.k_pages = selected_parts[part].list.k;
      attend.v_pages = selected_parts[part].list.v;
      attend.page_offsets = selected_parts[part].list.offsets;
      attend.last_page_tokens = selected_parts[part].list.last;
      attend.out = selected_parts[part].out;
      attend.lse = selected_parts[part].lse;
      attend.chunk_lse = score_policy ? selected_parts[part].chunk_lse : nullptr;
      KVTIER_RETURN_IF_ERROR(backend_->Attention(
          attend, selected_tokens, scratch_.attention_workspace, scratch_.attention_workspace_bytes,
          selected_parts[part].max_splits, stream));
    }

    KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, hot_attended));
    MergeParams merge;
    merge.num_parts = estimates ? kMaxDecodeParts : kMaxDecodeParts - 1;
    merge.num_rows = items * g;
    merge.head_dim = shape.head_dim;
    merge.part_out = scratch_.part_out;
    merge.part_lse = scratch_.part_lse;
    merge.out_dtype = out.dtype;
    merge.out = out_target;
    merge.lse = scratch_.lse;
    KVTIER_RETURN_IF_ERROR(backend_->Merge(merge, stream));

    if (score_policy) {
      // Each page's share of the final attention, added to its slot's score after every score
      // of the item decays.
      PageScoreUpdateParams update;
      update.num_items = items;
      update.group_size = g;
      update.max_selected = plan_.max_selected;
      update.page_size = p;
      update.num_slots = plan_.cache_slots;
      update.lse = scratch_.lse;
      update.num_lists = 2;
      update.lists[0] = {a.hits.offsets, a.hit_count, a.hit_slots, scratch_.hit_chunk_lse};
      update.lists[1] = {a.misses.offsets, a.miss_count, a.miss_slots, scratch_.miss_chunk_lse};
      update.slot_score = dir_score_;
      update.item_rows = a.item_row;
      update.num_rows = static_cast<int32_t>(plan_.rows);
      update.decay = options_.score_decay;
      KVTIER_RETURN_IF_ERROR(backend_->UpdatePageScores(update, stream));
    }
  }
  // The write-back rejoins the caller's stream (it finishes long before attention does), so
  // that a captured step is one closed graph.
  if (any_writeback) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, written_back));
  if (timed) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_end, stream));
    a.timing_pending = true;
  }
  if (out_staged) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(
        out.data, scratch_.out,
        batch * shape.num_query_heads * shape.head_dim * static_cast<int64_t>(DTypeSize(out.dtype)),
        stream));
  }
  if (!capturing) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(last_call_done_, stream));
    any_call_ = true;
  }
  if (out_staged) KVTIER_RETURN_IF_ERROR(backend_->HostWait(last_call_done_));
  for (Sequence* sequence : entries) sequence->tokens[layer] += 1;
  return absl::OkStatus();
}

}  // namespace kvtier::internal
