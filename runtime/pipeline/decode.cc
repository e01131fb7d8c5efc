// KvCache::Decode (contract in runtime/kv_cache.h). Decode(layer, batch), after every check
// has passed and the host store has frames for any page that starts with this token, calls
// the phases below in this order ([x]: only when it applies; (record e) and wait(e): events).
//   StartDecodeStep       caller: [upload slots and token counts]
//   DecodeAppend          caller: wait(previous write-back of the layer) -> plan -> append ->
//                                 page summary -> (record appended)
//                         copy:   wait(appended) -> write-back of completed pages -> (record
//                                 written_back)                  [TransferEngine::WriteBack]
//   DecodeSelect          caller: select (the index) -> [(record selected)]
//   DecodeAttendHotSet    hot:    wait(appended) -> attention over the hot set (overlapping
//                                 selection, resolve and load)
//   DecodeEstimate        hot:    [wait(selected) -> the zone's selection -> its
//                                 estimate] -> (record hot_attended)
//   DecodeResolve         caller: resolve                              [PageCache::Resolve]
//   DecodeLoad            caller: (record resolved)
//                         load:   wait(resolved) -> page list of the misses ->
//                                 wait(written_back) -> miss load -> (record loaded)
//                                                                [TransferEngine::LoadMisses]
//   DecodeAttendSelected  caller: page list of the hits -> attention over the hits
//                                 (overlapping the load) -> wait(loaded) -> attention over
//                                 the misses
//   DecodeMerge           caller: wait(hot_attended) -> merge of the parts (hits, misses, hot
//                                 set[, estimate]) into out -> [score update from each page's
//                                 attention mass]                [PageCache::UpdateScores]
//   FinishDecodeStep      caller: [wait(written_back)] -> [copy of out to the host]
// Streams: the caller's, and the backend's copy, hot and load streams. When no sequence has
// pages outside its hot set, DecodeAppend and DecodeAttendAllHot (attention over the hot set
// on the caller's stream, into out) are the whole step between start and finish.
// Nothing waits on the host: the token counts travel in one upload from pinned staging, and
// everything else is derived on the device (kernels/decode_plan.h).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

absl::Status KvCacheImpl::Decode(int layer, absl::Span<const SeqId> seqs, const ConstTensor& q,
                                 const ConstTensor& k_new, const ConstTensor& v_new,
                                 const MutableTensor& out, cudaStream_t stream) {
  absl::MutexLock lock(&mu_);
  KVTIER_RETURN_IF_ERROR(CheckLayer(layer));
  KVTIER_RETURN_IF_ERROR(
      CheckDecodeInputs(static_cast<int64_t>(seqs.size()), q, k_new, v_new, out));
  KVTIER_ASSIGN_OR_RETURN(const bool capturing, backend_->IsCapturing(stream));
  if (capturing && (q.space == MemorySpace::kHost || k_new.space == MemorySpace::kHost ||
                    v_new.space == MemorySpace::kHost || out.space == MemorySpace::kHost)) {
    return absl::InvalidArgumentError(
        "Decode: a Decode captured in a CUDA graph takes device-memory q, k_new, v_new and out");
  }
  if (seqs.empty()) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(AdmitDecodeBatch(layer, seqs));

  // Committed.
  KVTIER_ASSIGN_OR_RETURN(const DecodeStep step,
                          StartDecodeStep(layer, q, k_new, v_new, out, capturing, stream));
  KVTIER_RETURN_IF_ERROR(DecodeAppend(step));
  // What Inspect reports of the layer's last step.
  LayerArrays& a = *step.arrays;
  a.selection_ran = step.any_candidates;
  a.last_batch.assign(seqs.begin(), seqs.end());
  a.last_batch_live.assign(seqs.size(), true);
  if (!step.any_candidates) {
    // Every sequence is all hot: attention over the hot set is the whole answer, and the
    // phases that did not run take no time.
    KVTIER_RETURN_IF_ERROR(DecodeAttendAllHot(step));
    if (step.timed) {
      for (EventHandle e : {a.t_select, a.t_resolve, a.t_load_start, a.t_load_end}) {
        KVTIER_RETURN_IF_ERROR(backend_->Record(e, stream));
      }
    }
  } else {
    KVTIER_RETURN_IF_ERROR(DecodeSelect(step));
    // Issued after selection so that the scoring kernel, which the step waits on, takes the
    // GPU first and the hot set fills what it leaves.
    KVTIER_RETURN_IF_ERROR(DecodeAttendHotSet(step));
    KVTIER_RETURN_IF_ERROR(DecodeEstimate(step));
    KVTIER_RETURN_IF_ERROR(DecodeResolve(step));
    KVTIER_RETURN_IF_ERROR(DecodeLoad(step));
    KVTIER_RETURN_IF_ERROR(DecodeAttendSelected(step));
    KVTIER_RETURN_IF_ERROR(DecodeMerge(step));
  }
  return FinishDecodeStep(step, out);
}

// ---- Checks and the batch -------------------------------------------------------------------

absl::Status KvCacheImpl::CheckDecodeInputs(int64_t batch, const ConstTensor& q,
                                            const ConstTensor& k_new, const ConstTensor& v_new,
                                            const MutableTensor& out) const {
  const ModelShape& shape = options_.shape;
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
  return absl::OkStatus();
}

absl::Status KvCacheImpl::AdmitDecodeBatch(int layer, absl::Span<const SeqId> seqs) {
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
      g.num_rows = options_.shape.num_kv_heads;
      g.pages_before = static_cast<int32_t>(t / p);
      g.pages_after = g.pages_before + 1;
      growths.push_back(g);
    }
    entries.push_back(&sequence);
  }
  return page_table_->Grow(growths);
}

// ---- The step's start and end ---------------------------------------------------------------

absl::StatusOr<DecodeStep> KvCacheImpl::StartDecodeStep(int layer, const ConstTensor& q,
                                                        const ConstTensor& k_new,
                                                        const ConstTensor& v_new,
                                                        const MutableTensor& out, bool capturing,
                                                        cudaStream_t stream) {
  const ModelShape& shape = options_.shape;
  const std::vector<Sequence*>& entries = decode_entries_;
  const int64_t batch = static_cast<int64_t>(entries.size());
  LayerArrays& a = layers_[layer];
  const int hk = shape.num_kv_heads;
  const int32_t p = plan_.page_size;
  const int32_t s = plan_.sink_pages;
  const int32_t w = plan_.window_pages;
  DecodeStep step;
  step.layer = layer;
  step.batch = static_cast<int32_t>(batch);
  step.items = static_cast<int32_t>(batch * hk);
  step.arrays = &a;
  step.stream = stream;
  step.capturing = capturing;

  // Host-side accounting of the step, from the token counts.
  const int64_t row_bytes_kv =
      2 * int64_t{shape.head_dim} * static_cast<int64_t>(DTypeSize(shape.dtype));
  for (const Sequence* sequence : entries) {
    const int64_t t = sequence->tokens[layer];
    const int64_t n = t / p + 1;
    const int64_t cold_end = std::max<int64_t>(s, n - w);
    const int64_t hot_pages = std::min<int64_t>(s, n) + std::max<int64_t>(0, n - cold_end);
    const int64_t hot_tokens = (hot_pages - 1) * p + (t + 1 - (n - 1) * p);
    step.max_hot_tokens = std::max(step.max_hot_tokens, hot_tokens);
    a.stats.hot_bytes_read += hot_tokens * hk * row_bytes_kv;
    a.stats.summary_bytes_read += (cold_end - s) * hk * plan_.scan_page_bytes;
    // The zone: the candidates ranked after the retrieved ones, up to the zone's length; the
    // rest's estimate reads every candidate, then the retrieved ones again (taken out).
    if (index_->estimates()) {
      const int64_t candidates = cold_end - s;
      const int64_t retrieved = std::min<int64_t>(candidates, plan_.max_selected);
      const int64_t pages = index_->estimates_rest()
                                ? candidates + retrieved
                                : std::min<int64_t>(candidates, index_->zone_stride()) - retrieved;
      a.stats.estimate_bytes_read +=
          pages * hk * plan_.estimate_page_bytes + hk * index_->estimate_bytes_per_item();
    }
    if (cold_end > s) step.any_candidates = true;
    if (t % p == p - 1) {
      step.any_writeback = true;
      a.stats.bytes_written_back += int64_t{hk} * 2 * plan_.page_bytes;
    }
  }
  a.stats.decode_steps += 1;
  a.stats.decode_items += step.items;
  // Inside a CUDA-graph capture: no host waits, waits on earlier work are external, the
  // joins between kvtier's streams use their own events, and no timing.
  step.timed = options_.collect_timings && !capturing;
  step.appended = capturing ? a.cap_appended : a.appended;
  step.written_back = capturing ? a.cap_written_back : a.written_back;
  step.resolved = capturing ? a.cap_resolved : a.resolved;
  step.loaded = capturing ? a.cap_loaded : a.loaded;
  step.hot_attended = capturing ? a.cap_hot_attended : a.hot_attended;
  step.selected = capturing ? a.cap_selected : a.selected_event;
  step.scored = capturing ? a.cap_scored : a.scored_event;
  step.estimates = index_->estimates();
  if (step.timed) KVTIER_RETURN_IF_ERROR(HarvestTimings(a));
  if (step.timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_start, stream));
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
  step.q_in = q.data;
  step.k_in = k_new.data;
  step.v_in = v_new.data;
  if (backend_->on_device() && q.space == MemorySpace::kHost) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(
        scratch_.q, q.data, batch * shape.num_query_heads * shape.head_dim * dsize, stream));
    step.q_in = scratch_.q;
  }
  if (backend_->on_device() && k_new.space == MemorySpace::kHost) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(scratch_.k_new, k_new.data,
                                                   batch * hk * shape.head_dim * dsize, stream));
    step.k_in = scratch_.k_new;
  }
  if (backend_->on_device() && v_new.space == MemorySpace::kHost) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(scratch_.v_new, v_new.data,
                                                   batch * hk * shape.head_dim * dsize, stream));
    step.v_in = scratch_.v_new;
  }
  step.out_staged = backend_->on_device() && out.space == MemorySpace::kHost;
  step.out_target = step.out_staged ? scratch_.out : out.data;
  step.out_dtype = out.dtype;
  return step;
}

absl::Status KvCacheImpl::FinishDecodeStep(const DecodeStep& step, const MutableTensor& out) {
  LayerArrays& a = *step.arrays;
  cudaStream_t stream = step.stream;
  // The write-back rejoins the caller's stream (it finishes long before attention does), so
  // that a captured step is one closed graph.
  if (step.any_writeback) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, step.written_back));
  if (step.timed) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_end, stream));
    a.timing_pending = true;
  }
  if (step.out_staged) {
    const ModelShape& shape = options_.shape;
    KVTIER_RETURN_IF_ERROR(
        backend_->CopyToHost(out.data, scratch_.out,
                             int64_t{step.batch} * shape.num_query_heads * shape.head_dim *
                                 static_cast<int64_t>(DTypeSize(out.dtype)),
                             stream));
  }
  if (!step.capturing) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(last_call_done_, stream));
    any_call_ = true;
  }
  if (step.out_staged) KVTIER_RETURN_IF_ERROR(backend_->HostWait(last_call_done_));
  for (Sequence* sequence : decode_entries_) sequence->tokens[step.layer] += 1;
  return absl::OkStatus();
}

}  // namespace kvtier::internal
