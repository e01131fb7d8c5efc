// The KvCache pipeline.
//
// Decode(layer, batch), after every check has passed and the host store has frames for any
// page that starts with this token:
//   caller stream:  [upload slots and token counts] -> wait(previous write-back of the layer)
//                   -> plan -> append -> page summary -> (record appended)
//   copy stream:    wait(appended) -> write-back of completed pages -> (record written_back)
//   caller stream:  select
//   hot stream:     wait(appended) -> attention over the hot set (overlapping selection,
//                   resolve and load) -> (record hot_attended)
//   caller stream:  resolve -> (record resolved)
//   load stream:    wait(resolved) -> page list of the misses -> wait(written_back) -> miss
//                   load -> (record loaded)
//   caller stream:  page list of the hits -> attention over the hits (overlapping the load)
//                   -> wait(loaded) -> attention over the misses -> wait(hot_attended) ->
//                   merge of the three parts into out -> [score update from each page's
//                   attention mass]
// When no sequence has pages outside its hot set, attention over the hot set on the caller's
// stream is the whole step.
// Nothing waits on the host: the token counts travel in one upload from pinned staging, and
// everything else is derived on the device (kernels/decode_plan.h).
//
// Prefill(seq, layer, k, v), in pieces of at most max_prefill_chunk_tokens:
//   caller stream:  wait(previous write-back from this staging buffer) -> [copy the partial
//                   last page from the hot set into staging] -> pack the tokens into staged
//                   pages -> summaries -> copy hot pages (sinks, the last ring pages) into the
//                   hot set -> (record packed)
//   copy stream:    wait(packed) -> write-back of the completed pages to the host store.
#include "runtime/pipeline/kv_cache_impl.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace kvtier::internal {
namespace {

// Carves aligned arrays out of one block of backend memory.
class Carver {
 public:
  explicit Carver(std::byte* base) : next_(base) {}
  template <typename T>
  T* Take(int64_t count) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += AlignUp(count * static_cast<int64_t>(sizeof(T)));
    return p;
  }
  std::byte* Bytes(int64_t bytes) { return Take<std::byte>(bytes); }

 private:
  std::byte* next_;
};

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// ---- Creation ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<KvCache>> KvCacheImpl::Create(const Options& options) {
  KVTIER_RETURN_IF_ERROR(ValidateOptions(options));
  KVTIER_ASSIGN_OR_RETURN(const MemoryPlan plan, PlanMemory(options));
  std::unique_ptr<StepBackend> backend;
  if (options.backend == Backend::kCuda) {
    KVTIER_ASSIGN_OR_RETURN(backend, CreateCudaBackend(options.device_id));
  } else {
    backend = CreateHostBackend();
  }
  std::unique_ptr<KvCacheImpl> cache(new KvCacheImpl(options, plan, std::move(backend)));
  KVTIER_RETURN_IF_ERROR(cache->Initialize());
  return std::unique_ptr<KvCache>(std::move(cache));
}

KvCacheImpl::KvCacheImpl(const Options& options, const MemoryPlan& plan,
                         std::unique_ptr<StepBackend> backend)
    : options_(options),
      plan_(plan),
      scale_(options.EffectiveSoftmaxScale()),
      backend_(std::move(backend)),
      layers_(static_cast<size_t>(options.shape.num_layers)) {}

KvCacheImpl::~KvCacheImpl() {
  absl::MutexLock lock(&mu_);
  (void)WaitForDevice();
}

absl::Status KvCacheImpl::Initialize() {
  const ModelShape& shape = options_.shape;
  const bool device = backend_->on_device();
  const int device_id = device ? options_.device_id : -1;

  // Host store and its page tables.
  KVTIER_ASSIGN_OR_RETURN(arena_,
                          PageArena::Create({plan_.page_bytes, plan_.host_frames, device_id}));
  KVTIER_ASSIGN_OR_RETURN(page_table_, HostPageTable::Create(arena_.get(), plan_.rows,
                                                             plan_.max_pages, device, device_id));
  const int64_t b = options_.max_batch_size;
  KVTIER_ASSIGN_OR_RETURN(
      staging_, PinnedBuffer::Allocate(
                    {static_cast<size_t>(2 * AlignUp(2 * b * 4) * shape.num_layers), device_id}));

  // Pools.
  const int64_t rows = plan_.rows;
  const int64_t hot_pages = int64_t{plan_.sink_pages} + plan_.ring_pages;
  KVTIER_ASSIGN_OR_RETURN(std::byte * pools,
                          backend_->Allocate(plan_.hot_bytes + plan_.cache_bytes +
                                             plan_.summary_bytes + plan_.directory_bytes + 1024));
  {
    Carver c(pools);
    hot_k_ = c.Bytes(rows * hot_pages * plan_.page_bytes);
    hot_v_ = c.Bytes(rows * hot_pages * plan_.page_bytes);
    slot_k_ = c.Bytes(rows * plan_.cache_slots * plan_.page_bytes);
    slot_v_ = c.Bytes(rows * plan_.cache_slots * plan_.page_bytes);
    bounds_ = c.Bytes(rows * plan_.max_pages * plan_.bounds_bytes);
    dir_page_ = c.Take<int32_t>(rows * plan_.cache_slots);
    dir_last_use_ = c.Take<int32_t>(rows * plan_.cache_slots);
    dir_score_ = c.Take<float>(rows * plan_.cache_slots);
  }
  KVTIER_RETURN_IF_ERROR(
      backend_->Fill(dir_page_, 0xFF, rows * plan_.cache_slots * 4, backend_->copy_stream()));

  // Per-layer step arrays.
  const int64_t bi = plan_.batch_items;
  const int64_t k = plan_.max_selected;
  const int64_t hot_cap = int64_t{plan_.sink_pages} + plan_.window_pages;
  KVTIER_ASSIGN_OR_RETURN(std::byte * steps,
                          backend_->Allocate(plan_.step_bytes + 1024 * shape.num_layers));
  Carver c(steps);
  for (int l = 0; l < shape.num_layers; ++l) {
    LayerArrays& a = layers_[l];
    a.seq_slot = c.Take<int32_t>(2 * b);
    a.tokens_before = a.seq_slot + b;
    a.append_k = c.Take<void*>(bi);
    a.append_v = c.Take<void*>(bi);
    a.writeback_k_dst = c.Take<void*>(bi);
    a.writeback_v_dst = c.Take<void*>(bi);
    a.append_row = c.Take<int32_t>(b);
    a.summary_tokens = c.Take<int32_t>(bi);
    a.select_begin = c.Take<int32_t>(bi);
    a.summary_bounds = c.Take<void*>(bi);
    a.select_end = c.Take<int32_t>(bi);
    a.item_row = c.Take<int32_t>(bi);
    a.select_bounds = c.Take<const void*>(bi);
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
    for (PageList* list : {&a.hits, &a.misses}) {
      list->offsets = c.Take<int32_t>(bi + 1);
      list->k = c.Take<const void*>(bi * k);
      list->v = c.Take<const void*>(bi * k);
      list->last = c.Take<int32_t>(bi);
    }
    a.counters = c.Take<unsigned long long>(3);
    a.staging = reinterpret_cast<int32_t*>(staging_.data() + AlignUp(2 * b * 4) * 2 * l);
    a.capture_staging =
        reinterpret_cast<int32_t*>(staging_.data() + AlignUp(2 * b * 4) * (2 * l + 1));
    for (EventHandle* e : {&a.uploaded, &a.appended, &a.written_back, &a.resolved, &a.loaded,
                           &a.hot_attended, &a.cap_appended, &a.cap_written_back, &a.cap_resolved,
                           &a.cap_loaded, &a.cap_hot_attended}) {
      KVTIER_ASSIGN_OR_RETURN(*e, backend_->CreateEvent(false));
    }
    if (options_.collect_timings) {
      for (EventHandle* e : {&a.t_start, &a.t_plan, &a.t_select, &a.t_resolve, &a.t_load_start,
                             &a.t_load_end, &a.t_end}) {
        KVTIER_ASSIGN_OR_RETURN(*e, backend_->CreateEvent(true));
      }
    }
  }

  // Decode scratch.
  const int64_t g = shape.group_size();
  const int64_t d = shape.head_dim;
  const int64_t dsize = static_cast<int64_t>(DTypeSize(shape.dtype));
  KVTIER_ASSIGN_OR_RETURN(std::byte * scratch, backend_->Allocate(plan_.scratch_bytes + 4096));
  {
    Carver s(scratch);
    DecodeScratch& x = scratch_;
    x.q = s.Bytes(bi * g * d * dsize);
    x.k_new = s.Bytes(bi * d * dsize);
    x.v_new = s.Bytes(bi * d * dsize);
    x.out = s.Bytes(bi * g * d * 4);
    x.hit_out = s.Take<float>(bi * g * d);
    x.hit_lse = s.Take<float>(bi * g);
    x.miss_out = s.Take<float>(bi * g * d);
    x.miss_lse = s.Take<float>(bi * g);
    x.hot_out = s.Take<float>(bi * g * d);
    x.hot_lse = s.Take<float>(bi * g);
    x.lse = s.Take<float>(bi * g);
    x.part_out = s.Take<const float*>(kDecodeParts);
    x.part_lse = x.part_out + kDecodeParts;  // the same 256-byte region holds all six pointers
    x.attention_workspace_bytes = PagedDecodeWorkspaceBytes(
        plan_.batch_items, static_cast<int>(g), static_cast<int>(d), kMaxAttentionSplits);
    if (x.attention_workspace_bytes > 0) {
      x.attention_workspace = s.Bytes(static_cast<int64_t>(x.attention_workspace_bytes));
      x.hot_attention_workspace = s.Bytes(static_cast<int64_t>(x.attention_workspace_bytes));
    }
    BlockSelectParams p;
    p.kind = BlockScoreKind::kPageBounds;
    p.group_size = static_cast<int>(g);
    p.num_items = plan_.batch_items;
    p.max_blocks = plan_.max_pages;
    x.select_workspace_bytes = BlockSelectWorkspaceBytes(p);
    x.select_workspace = s.Bytes(static_cast<int64_t>(x.select_workspace_bytes));
    x.hit_chunk_lse = s.Take<float>(bi * k * (plan_.page_size / 16) * g);
    x.miss_chunk_lse = s.Take<float>(bi * k * (plan_.page_size / 16) * g);
    if (options_.cache_policy == CachePolicy::kNone) {
      x.empty_page = s.Take<int32_t>(bi * plan_.cache_slots);
      x.empty_last_use = s.Take<int32_t>(bi * plan_.cache_slots);
      x.empty_score = s.Take<float>(bi * plan_.cache_slots);
    }
    const float* parts[2 * kDecodeParts] = {x.hit_out, x.miss_out, x.hot_out,
                                            x.hit_lse, x.miss_lse, x.hot_lse};
    KVTIER_RETURN_IF_ERROR(
        backend_->CopyToBackend(x.part_out, parts, sizeof(parts), backend_->copy_stream()));
  }

  // Prefill staging.
  const int64_t np_hk = int64_t{plan_.prefill_pages} * shape.num_kv_heads;
  for (PrefillBuffer& buffer : prefill_) {
    buffer.pointer_bytes = np_hk * 8 * 16 + np_hk * 4;
    const int64_t rows_bytes =
        int64_t{options_.max_prefill_chunk_tokens} * shape.num_kv_heads * d * dsize;
    KVTIER_ASSIGN_OR_RETURN(std::byte * block, backend_->Allocate(plan_.prefill_bytes / 2 + 4096));
    Carver p(block);
    buffer.pages = p.Bytes(np_hk * 2 * plan_.page_bytes);
    buffer.k_rows = p.Bytes(rows_bytes);
    buffer.v_rows = p.Bytes(rows_bytes);
    buffer.pointers = p.Bytes(buffer.pointer_bytes);
    KVTIER_ASSIGN_OR_RETURN(buffer.packed, backend_->CreateEvent(false));
    KVTIER_ASSIGN_OR_RETURN(buffer.written_back, backend_->CreateEvent(false));
  }
  KVTIER_ASSIGN_OR_RETURN(last_call_done_, backend_->CreateEvent(false));
  KVTIER_RETURN_IF_ERROR(backend_->Synchronize(backend_->copy_stream()));

  absl::MutexLock lock(&mu_);
  for (int32_t slot = options_.max_sequences - 1; slot >= 0; --slot) free_slots_.push_back(slot);
  decode_entries_.reserve(static_cast<size_t>(options_.max_batch_size));
  decode_growths_.reserve(static_cast<size_t>(options_.max_batch_size));
  slot_stamp_.assign(static_cast<size_t>(options_.max_sequences), 0);
  return absl::OkStatus();
}

ItemStorage KvCacheImpl::Storage() const {
  ItemStorage s;
  s.page_size = plan_.page_size;
  s.sink_pages = plan_.sink_pages;
  s.window_pages = plan_.window_pages;
  s.ring_pages = plan_.ring_pages;
  s.max_pages = plan_.max_pages;
  s.cache_slots = plan_.cache_slots;
  s.page_bytes = plan_.page_bytes;
  s.bounds_bytes = plan_.bounds_bytes;
  s.hot_k = hot_k_;
  s.hot_v = hot_v_;
  s.slot_k = slot_k_;
  s.slot_v = slot_v_;
  s.bounds = bounds_;
  s.host_k_table = page_table_->k_table();
  s.host_v_table = page_table_->v_table();
  return s;
}

// ---- Checks -------------------------------------------------------------------------------

absl::Status KvCacheImpl::CheckLayer(int layer) const {
  if (layer < 0 || layer >= options_.shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer = ", layer, ": must be in [0, ", options_.shape.num_layers, ")"));
  }
  return absl::OkStatus();
}

absl::Status KvCacheImpl::CheckSpace(const char* name, MemorySpace space) const {
  if (space == MemorySpace::kDevice && !backend_->on_device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": device memory given to a KvCache on the host backend; pass host memory"));
  }
  return absl::OkStatus();
}

absl::Status KvCacheImpl::WaitForDevice() const {
  if (!backend_->on_device()) return absl::OkStatus();
  if (any_call_) KVTIER_RETURN_IF_ERROR(backend_->HostWait(last_call_done_));
  KVTIER_RETURN_IF_ERROR(backend_->Synchronize(backend_->copy_stream()));
  KVTIER_RETURN_IF_ERROR(backend_->Synchronize(backend_->load_stream()));
  KVTIER_RETURN_IF_ERROR(backend_->Synchronize(backend_->hot_stream()));
  return absl::OkStatus();
}

// ---- Sequences ----------------------------------------------------------------------------

absl::Status KvCacheImpl::AddSequence(SeqId seq) {
  absl::MutexLock lock(&mu_);
  if (sequences_.contains(seq)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq, " is already stored"));
  }
  if (free_slots_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot add sequence ", seq, ": max_sequences = ", options_.max_sequences,
                     " sequences are stored; remove one or raise max_sequences"));
  }
  const int32_t slot = free_slots_.back();
  // Empty the slot's page caches (a previous sequence may have used them).
  const int64_t row0 = Row(slot, 0, 0);
  const int64_t rows = int64_t{options_.shape.num_layers} * options_.shape.num_kv_heads;
  const int64_t entries = rows * plan_.cache_slots;
  cudaStream_t s = backend_->copy_stream();
  KVTIER_RETURN_IF_ERROR(
      backend_->Fill(dir_page_ + row0 * plan_.cache_slots, 0xFF, entries * 4, s));
  KVTIER_RETURN_IF_ERROR(
      backend_->Fill(dir_last_use_ + row0 * plan_.cache_slots, 0, entries * 4, s));
  KVTIER_RETURN_IF_ERROR(backend_->Fill(dir_score_ + row0 * plan_.cache_slots, 0, entries * 4, s));
  KVTIER_RETURN_IF_ERROR(backend_->Synchronize(s));
  free_slots_.pop_back();
  Sequence& sequence = sequences_[seq];
  sequence.slot = slot;
  sequence.tokens.assign(static_cast<size_t>(options_.shape.num_layers), 0);
  return absl::OkStatus();
}

absl::Status KvCacheImpl::RemoveSequence(SeqId seq) {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not stored"));
  }
  KVTIER_RETURN_IF_ERROR(WaitForDevice());
  const int32_t slot = it->second.slot;
  KVTIER_RETURN_IF_ERROR(page_table_->ReleaseRows(
      Row(slot, 0, 0), int64_t{options_.shape.num_layers} * options_.shape.num_kv_heads));
  sequences_.erase(it);
  free_slots_.push_back(slot);
  for (LayerArrays& layer : layers_) {
    auto pos = std::find(layer.last_batch.begin(), layer.last_batch.end(), seq);
    if (pos != layer.last_batch.end())
      layer.last_batch_live[pos - layer.last_batch.begin()] = false;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KvCacheImpl::NumTokens(SeqId seq, int layer) const {
  absl::MutexLock lock(&mu_);
  KVTIER_RETURN_IF_ERROR(CheckLayer(layer));
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not stored"));
  }
  return it->second.tokens[layer];
}

// ---- Prefill ------------------------------------------------------------------------------

absl::Status KvCacheImpl::Prefill(SeqId seq, int layer, const ConstTensor& k, const ConstTensor& v,
                                  const ConstTensor& q, cudaStream_t stream) {
  absl::MutexLock lock(&mu_);
  const ModelShape& shape = options_.shape;
  KVTIER_RETURN_IF_ERROR(CheckLayer(layer));
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("Prefill: sequence ", seq, " is not stored"));
  }
  KVTIER_RETURN_IF_ERROR(
      CheckTensor("Prefill k", k, {{-1, shape.num_kv_heads, shape.head_dim}, shape.dtype}));
  const int64_t n = k.shape[0];
  if (n < 1) return absl::InvalidArgumentError("Prefill k: needs at least one token");
  KVTIER_RETURN_IF_ERROR(
      CheckTensor("Prefill v", v, {{n, shape.num_kv_heads, shape.head_dim}, shape.dtype}));
  if (q.data != nullptr) {
    KVTIER_RETURN_IF_ERROR(
        CheckTensor("Prefill q", q, {{n, shape.num_query_heads, shape.head_dim}, shape.dtype}));
    KVTIER_RETURN_IF_ERROR(CheckSpace("Prefill q", q.space));
  }
  KVTIER_RETURN_IF_ERROR(CheckSpace("Prefill k", k.space));
  KVTIER_RETURN_IF_ERROR(CheckSpace("Prefill v", v.space));
  if (k.space != v.space) {
    return absl::InvalidArgumentError("Prefill: k and v must be in the same memory space");
  }
  KVTIER_ASSIGN_OR_RETURN(const bool capturing, backend_->IsCapturing(stream));
  if (capturing) {
    return absl::FailedPreconditionError(
        "Prefill: the stream is capturing a CUDA graph; prefill cannot be captured");
  }
  Sequence& sequence = it->second;
  const int64_t before = sequence.tokens[layer];
  if (before + n > options_.max_sequence_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Prefill: sequence ", seq, " layer ", layer, " holds ", before, " tokens; ", n,
                     " more would exceed max_sequence_tokens = ", options_.max_sequence_tokens));
  }
  const int32_t p = plan_.page_size;
  HostPageTable::Growth growth;
  growth.row_begin = Row(sequence.slot, layer, 0);
  growth.num_rows = shape.num_kv_heads;
  growth.pages_before = static_cast<int32_t>(CeilDiv(before, p));
  growth.pages_after = static_cast<int32_t>(CeilDiv(before + n, p));
  KVTIER_RETURN_IF_ERROR(page_table_->Grow({&growth, 1}));

  // Committed: from here on only device failures can stop the call.
  const int64_t row_bytes =
      int64_t{shape.num_kv_heads} * shape.head_dim * static_cast<int64_t>(DTypeSize(shape.dtype));
  const bool inputs_on_backend = backend_->on_device() == (k.space == MemorySpace::kDevice);
  // Calls may come on different streams: each starts after the previous one's work, as the
  // calls share scratch and staging buffers.
  if (any_call_) KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, last_call_done_));
  int64_t done = 0;
  while (done < n) {
    const int64_t position = before + done;
    const int64_t piece =
        std::min<int64_t>(n - done, options_.max_prefill_chunk_tokens - position % p);
    KVTIER_RETURN_IF_ERROR(PrefillPiece(sequence, layer,
                                        static_cast<const std::byte*>(k.data) + done * row_bytes,
                                        static_cast<const std::byte*>(v.data) + done * row_bytes,
                                        inputs_on_backend, position, piece, stream));
    done += piece;
  }
  sequence.tokens[layer] = before + n;
  LayerStats& stats = layers_[layer].stats;
  stats.prefill_tokens += n;
  stats.prefill_bytes_stored +=
      ((before + n) / p - before / p) * shape.num_kv_heads * 2 * plan_.page_bytes;
  KVTIER_RETURN_IF_ERROR(backend_->Record(last_call_done_, stream));
  any_call_ = true;
  return absl::OkStatus();
}

absl::Status KvCacheImpl::PrefillPiece(const Sequence& sequence, int layer, const std::byte* k,
                                       const std::byte* v, bool inputs_on_backend, int64_t position,
                                       int64_t tokens, cudaStream_t stream) {
  const ModelShape& shape = options_.shape;
  const int hk = shape.num_kv_heads;
  const int32_t p = plan_.page_size;
  const int32_t s = plan_.sink_pages;
  const int32_t r = plan_.ring_pages;
  const int64_t pb = plan_.page_bytes;
  const int64_t hot_pages = int64_t{s} + r;
  PrefillBuffer& buffer = prefill_[next_prefill_buffer_];
  next_prefill_buffer_ ^= 1;
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(stream, buffer.written_back));

  // Inputs into backend memory.
  const int64_t row_bytes =
      int64_t{hk} * shape.head_dim * static_cast<int64_t>(DTypeSize(shape.dtype));
  if (!inputs_on_backend) {
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(buffer.k_rows, k, tokens * row_bytes, stream));
    KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(buffer.v_rows, v, tokens * row_bytes, stream));
    k = buffer.k_rows;
    v = buffer.v_rows;
  }

  const int64_t first_page = position / p;
  const int64_t last_page = (position + tokens - 1) / p;
  const int32_t np = static_cast<int32_t>(last_page - first_page + 1);
  const int32_t entries = np * hk;
  const int64_t pages_after_piece = (position + tokens + p - 1) / p;
  const int64_t ring_from = std::max<int64_t>(s, pages_after_piece - r);

  // Pointer arrays, built on the host and uploaded in one copy. Layout (entries e * hk + h):
  // pack k, pack v, summary bounds, write-back k src, v src, k dst, v dst, hot copy src, hot
  // copy dst (2 * entries each: K then V), partial copy src, dst (2 * hk each), summary tokens.
  std::vector<const void*> ptr(static_cast<size_t>(entries) * 11 + 4 * hk, nullptr);
  const void** pack_k = ptr.data();
  const void** pack_v = pack_k + entries;
  const void** sum_bounds = pack_v + entries;
  const void** wb_k_src = sum_bounds + entries;
  const void** wb_v_src = wb_k_src + entries;
  const void** wb_k_dst = wb_v_src + entries;
  const void** wb_v_dst = wb_k_dst + entries;
  const void** hot_src = wb_v_dst + entries;
  const void** hot_dst = hot_src + 2 * entries;
  const void** part_src = hot_dst + 2 * entries;
  const void** part_dst = part_src + 2 * hk;
  std::vector<int32_t> sum_tokens(static_cast<size_t>(entries));
  int32_t writebacks = 0;
  int32_t hot_copies = 0;
  std::byte* stage_k = buffer.pages;
  std::byte* stage_v = buffer.pages + int64_t{plan_.prefill_pages} * hk * pb;
  auto hot_index = [&](int64_t page) { return page < s ? page : s + (page - s) % r; };
  for (int32_t e = 0; e < np; ++e) {
    const int64_t page = first_page + e;
    const int64_t filled = std::min<int64_t>(p, position + tokens - page * p);
    for (int h = 0; h < hk; ++h) {
      const int i = e * hk + h;
      const int64_t row = Row(sequence.slot, layer, h);
      std::byte* sk = stage_k + int64_t{i} * pb;
      std::byte* sv = stage_v + int64_t{i} * pb;
      pack_k[i] = sk;
      pack_v[i] = sv;
      sum_tokens[i] = static_cast<int32_t>(filled);
      sum_bounds[i] = bounds_ + (row * plan_.max_pages + page) * plan_.bounds_bytes;
      if (filled == p) {
        wb_k_src[writebacks] = sk;
        wb_v_src[writebacks] = sv;
        wb_k_dst[writebacks] = page_table_->KPageAddress(row, static_cast<int32_t>(page));
        wb_v_dst[writebacks] = page_table_->VPageAddress(row, static_cast<int32_t>(page));
        ++writebacks;
      }
      if (page < s || page >= ring_from) {
        const int64_t hot = row * hot_pages + hot_index(page);
        hot_src[hot_copies] = sk;
        hot_dst[hot_copies] = hot_k_ + hot * pb;
        hot_src[hot_copies + 1] = sv;
        hot_dst[hot_copies + 1] = hot_v_ + hot * pb;
        hot_copies += 2;
      }
    }
  }
  const bool partial_first = position % p != 0;
  if (partial_first) {
    for (int h = 0; h < hk; ++h) {
      const int64_t hot = Row(sequence.slot, layer, h) * hot_pages + hot_index(first_page);
      part_src[2 * h] = hot_k_ + hot * pb;
      part_dst[2 * h] = stage_k + int64_t{h} * pb;
      part_src[2 * h + 1] = hot_v_ + hot * pb;
      part_dst[2 * h + 1] = stage_v + int64_t{h} * pb;
    }
  }
  const int64_t ptr_bytes = static_cast<int64_t>(ptr.size() * sizeof(void*));
  auto* dev_ptr = reinterpret_cast<const void**>(buffer.pointers);
  auto* dev_tokens = reinterpret_cast<int32_t*>(buffer.pointers + ptr_bytes);
  KVTIER_RETURN_IF_ERROR(backend_->CopyToBackend(dev_ptr, ptr.data(), ptr_bytes, stream));
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToBackend(dev_tokens, sum_tokens.data(), int64_t{entries} * 4, stream));
  auto dev = [&](const void** host_array) { return dev_ptr + (host_array - ptr.data()); };
  // The same array for fields that write through the pointers.
  auto dev_mut = [&](const void** host_array) {
    return reinterpret_cast<void* const*>(const_cast<void**>(dev(host_array)));
  };

  if (partial_first) {
    PageCopyParams copy;
    copy.src = dev(part_src);
    copy.dst = dev_mut(part_dst);
    copy.num_pages = 2 * hk;
    copy.page_bytes = pb;
    KVTIER_RETURN_IF_ERROR(backend_->PageCopy(copy, stream));
  }
  TokenPackParams pack;
  pack.dtype = shape.dtype;
  pack.num_kv_heads = hk;
  pack.head_dim = shape.head_dim;
  pack.page_size = p;
  pack.num_tokens = static_cast<int32_t>(tokens);
  pack.first_position = position;
  pack.k = k;
  pack.v = v;
  pack.k_pages = dev_mut(pack_k);
  pack.v_pages = dev_mut(pack_v);
  KVTIER_RETURN_IF_ERROR(backend_->TokenPack(pack, stream));

  PageSummaryParams summary;
  summary.dtype = shape.dtype;
  summary.head_dim = shape.head_dim;
  summary.page_size = p;
  summary.num_pages = entries;
  summary.k_pages = dev(pack_k);
  summary.tokens = dev_tokens;
  summary.bounds = dev_mut(sum_bounds);
  KVTIER_RETURN_IF_ERROR(backend_->PageSummaries(summary, stream));

  if (hot_copies > 0) {
    PageCopyParams copy;
    copy.src = dev(hot_src);
    copy.dst = dev_mut(hot_dst);
    copy.num_pages = hot_copies;
    copy.page_bytes = pb;
    KVTIER_RETURN_IF_ERROR(backend_->PageCopy(copy, stream));
  }
  KVTIER_RETURN_IF_ERROR(backend_->Record(buffer.packed, stream));
  if (writebacks > 0) {
    cudaStream_t copy_stream = backend_->copy_stream();
    KVTIER_RETURN_IF_ERROR(backend_->StreamWait(copy_stream, buffer.packed));
    WriteBackParams wb;
    wb.num_pages = writebacks;
    wb.page_bytes = pb;
    wb.k_src = dev(wb_k_src);
    wb.v_src = dev(wb_v_src);
    wb.k_dst = dev_mut(wb_k_dst);
    wb.v_dst = dev_mut(wb_v_dst);
    KVTIER_RETURN_IF_ERROR(backend_->WriteBack(wb, copy_stream));
    KVTIER_RETURN_IF_ERROR(backend_->Record(buffer.written_back, copy_stream));
    // Decode loads of this layer must see these pages.
    KVTIER_RETURN_IF_ERROR(backend_->Record(layers_[layer].written_back, copy_stream));
  }
  return absl::OkStatus();
}

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
    a.stats.summary_bytes_read += (cold_end - s) * hk * plan_.bounds_bytes;
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
  plan.summary_bounds = a.summary_bounds;
  plan.select_begin = a.select_begin;
  plan.select_end = a.select_end;
  plan.select_bounds = a.select_bounds;
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

  PageSummaryParams summary;
  summary.dtype = shape.dtype;
  summary.head_dim = shape.head_dim;
  summary.page_size = p;
  summary.num_pages = items;
  summary.k_pages = reinterpret_cast<const void* const*>(a.append_k);
  summary.tokens = a.summary_tokens;
  summary.bounds = a.summary_bounds;
  KVTIER_RETURN_IF_ERROR(backend_->PageSummaries(summary, stream));
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
    BlockSelectParams select;
    select.kind = BlockScoreKind::kPageBounds;
    select.mode = BlockSelectMode::kTopK;
    select.dtype = shape.dtype;
    select.head_dim = shape.head_dim;
    select.group_size = g;
    select.softmax_scale = scale_;
    select.num_items = items;
    select.max_blocks = plan_.max_pages;
    select.k = plan_.max_selected;
    select.q = q_in;
    select.block_begin = a.select_begin;
    select.block_end = a.select_end;
    select.bounds = a.select_bounds;
    select.selected = a.selected;
    select.num_selected = a.num_selected;
    select.workspace = scratch_.select_workspace;
    select.workspace_bytes = scratch_.select_workspace_bytes;
    KVTIER_RETURN_IF_ERROR(backend_->BlockSelect(select, stream));
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
    merge.num_parts = kDecodeParts;
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

// ---- Statistics and inspection -------------------------------------------------------------

absl::Status KvCacheImpl::HarvestTimings(LayerArrays& a) const {
  if (!a.timing_pending) return absl::OkStatus();
  a.timing_pending = false;
  KVTIER_RETURN_IF_ERROR(backend_->HostWait(a.t_end));
  KVTIER_RETURN_IF_ERROR(backend_->HostWait(a.t_load_end));
  auto elapsed = [&](EventHandle from, EventHandle to) -> absl::StatusOr<double> {
    KVTIER_ASSIGN_OR_RETURN(const float ms, backend_->Elapsed(from, to));
    return static_cast<double>(ms);
  };
  KVTIER_ASSIGN_OR_RETURN(const double plan_ms, elapsed(a.t_start, a.t_plan));
  KVTIER_ASSIGN_OR_RETURN(const double select_ms, elapsed(a.t_plan, a.t_select));
  KVTIER_ASSIGN_OR_RETURN(const double resolve_ms, elapsed(a.t_select, a.t_resolve));
  KVTIER_ASSIGN_OR_RETURN(const double load_ms, elapsed(a.t_load_start, a.t_load_end));
  KVTIER_ASSIGN_OR_RETURN(const double attend_ms, elapsed(a.t_resolve, a.t_end));
  KVTIER_ASSIGN_OR_RETURN(const double step_ms, elapsed(a.t_start, a.t_end));
  a.stats.plan_ms += plan_ms;
  a.stats.select_ms += select_ms;
  a.stats.resolve_ms += resolve_ms;
  a.stats.load_ms += load_ms;
  a.stats.attend_ms += attend_ms;
  a.stats.step_ms += step_ms;
  return absl::OkStatus();
}

Stats KvCacheImpl::GetStats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.hbm_bytes_per_second = options_.hbm_bytes_per_second;
  stats.pcie_bytes_per_second = options_.pcie_bytes_per_second;
  (void)WaitForDevice();
  const int64_t kv_page = 2 * plan_.page_bytes;
  for (LayerArrays& a : layers_) {
    (void)HarvestTimings(a);
    LayerStats layer = a.stats;
    unsigned long long counters[3] = {0, 0, 0};
    if (backend_->CopyToHost(counters, a.counters, sizeof(counters), nullptr).ok() &&
        backend_->Synchronize(nullptr).ok()) {
      // counters[0] counts the hit list's pages, the same as counters[1].
      const int64_t hits = static_cast<int64_t>(counters[1]);
      const int64_t misses = static_cast<int64_t>(counters[2]);
      layer.pages_selected += hits + misses;
      layer.page_hits += hits;
      layer.page_misses += misses;
      layer.selected_bytes_read += (hits + misses) * kv_page;
      layer.bytes_loaded += static_cast<int64_t>(counters[2]) * kv_page;
    }
    stats.layers.push_back(layer);
  }
  stats.host_pages_used = arena_->used_frames();
  stats.host_pages_capacity = arena_->num_frames();
  stats.gpu_bytes_reserved = backend_->on_device() ? plan_.device_bytes() : 0;
  stats.num_sequences = static_cast<int64_t>(sequences_.size());
  return stats;
}

void KvCacheImpl::ResetStats() {
  absl::MutexLock lock(&mu_);
  (void)WaitForDevice();
  for (LayerArrays& a : layers_) {
    (void)HarvestTimings(a);
    a.stats = LayerStats{};
    (void)backend_->Fill(a.counters, 0, 3 * sizeof(unsigned long long), nullptr);
  }
  (void)backend_->Synchronize(nullptr);
}

absl::StatusOr<KvCache::CacheInspection> KvCacheImpl::Inspect(SeqId seq, int layer,
                                                              int kv_head) const {
  absl::MutexLock lock(&mu_);
  KVTIER_RETURN_IF_ERROR(CheckLayer(layer));
  if (kv_head < 0 || kv_head >= options_.shape.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_head = ", kv_head, ": must be in [0, ", options_.shape.num_kv_heads, ")"));
  }
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not stored"));
  }
  KVTIER_RETURN_IF_ERROR(WaitForDevice());
  CacheInspection result;
  const LayerArrays& a = layers_[layer];
  const int hk = options_.shape.num_kv_heads;
  auto pos = std::find(a.last_batch.begin(), a.last_batch.end(), seq);
  if (pos != a.last_batch.end() && a.last_batch_live[pos - a.last_batch.begin()] &&
      a.selection_ran) {
    const int64_t item = (pos - a.last_batch.begin()) * hk + kv_head;
    int32_t counts[3] = {0, 0, 0};
    KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(&counts[0], a.num_selected + item, 4, nullptr));
    KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(&counts[1], a.hit_count + item, 4, nullptr));
    KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(&counts[2], a.miss_count + item, 4, nullptr));
    KVTIER_RETURN_IF_ERROR(backend_->Synchronize(nullptr));
    result.selected_pages.resize(static_cast<size_t>(std::max(counts[0], 0)));
    KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(result.selected_pages.data(),
                                                a.selected + item * plan_.max_selected,
                                                int64_t{counts[0]} * 4, nullptr));
    result.hits = counts[1];
    result.misses = counts[2];
  }
  const int64_t row = Row(it->second.slot, layer, kv_head);
  const int64_t c = plan_.cache_slots;
  result.slot_page.resize(static_cast<size_t>(c));
  result.slot_last_use.resize(static_cast<size_t>(c));
  result.slot_score.resize(static_cast<size_t>(c));
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToHost(result.slot_page.data(), dir_page_ + row * c, c * 4, nullptr));
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToHost(result.slot_last_use.data(), dir_last_use_ + row * c, c * 4, nullptr));
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToHost(result.slot_score.data(), dir_score_ + row * c, c * 4, nullptr));
  KVTIER_RETURN_IF_ERROR(backend_->Synchronize(nullptr));
  return result;
}

}  // namespace kvtier::internal
