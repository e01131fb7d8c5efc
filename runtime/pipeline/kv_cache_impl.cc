// The KvCache behind runtime/kv_cache.h: creation, sequences, statistics and inspection.
// Prefill is in prefill.cc, Decode in decode.cc (each with its order of operations; Decode's
// phases in decode_append.cc, decode_select.cc, decode_attend.cc and decode_merge.cc, its
// resolve and load in offload/page_cache.h and offload/transfer_engine.h).
#include "runtime/pipeline/kv_cache_impl.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"

namespace kvtier::internal {

// ---- Creation ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<KvCache>> KvCacheImpl::Create(const Options& options) {
  KVTIER_RETURN_IF_ERROR(ValidateOptions(options));
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<BlockIndex> index,
                          CreateBlockIndex(options.index, MakeIndexConfig(options)));
  KVTIER_ASSIGN_OR_RETURN(const MemoryPlan plan, PlanMemory(options, *index));
  std::unique_ptr<StepBackend> backend;
  if (options.backend == Backend::kCuda) {
    KVTIER_ASSIGN_OR_RETURN(backend, CreateCudaBackend(options.device_id));
  } else {
    backend = CreateHostBackend();
  }
  std::unique_ptr<KvCacheImpl> cache(
      new KvCacheImpl(options, plan, std::move(index), std::move(backend)));
  KVTIER_RETURN_IF_ERROR(cache->Initialize());
  return std::unique_ptr<KvCache>(std::move(cache));
}

KvCacheImpl::KvCacheImpl(const Options& options, const MemoryPlan& plan,
                         std::unique_ptr<BlockIndex> index, std::unique_ptr<StepBackend> backend)
    : options_(options),
      plan_(plan),
      scale_(options.EffectiveSoftmaxScale()),
      index_(std::move(index)),
      summary_layout_(index_->layout()),
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

  // Pools, the page cache's directory and the transfers between the tiers.
  const int64_t rows = plan_.rows;
  const int64_t hot_pages = int64_t{plan_.sink_pages} + plan_.ring_pages;
  KVTIER_ASSIGN_OR_RETURN(
      std::byte * pools,
      backend_->Allocate(plan_.hot_bytes + plan_.cache_bytes + plan_.summary_bytes + 1024));
  {
    Carver c(pools);
    hot_k_ = c.Bytes(rows * hot_pages * plan_.page_bytes);
    hot_v_ = c.Bytes(rows * hot_pages * plan_.page_bytes);
    slot_k_ = c.Bytes(rows * plan_.cache_slots * plan_.page_bytes);
    slot_v_ = c.Bytes(rows * plan_.cache_slots * plan_.page_bytes);
    summaries_ = c.Bytes(rows * plan_.max_pages * plan_.summary_page_bytes);
  }
  KVTIER_ASSIGN_OR_RETURN(page_cache_, PageCache::Create(backend_.get(), plan_.page_cache));
  transfer_engine_ = std::make_unique<TransferEngine>(backend_.get(), page_table_.get(),
                                                      plan_.page_bytes, plan_.max_selected);

  // Per-layer step arrays.
  KVTIER_ASSIGN_OR_RETURN(std::byte * steps, backend_->Allocate(plan_.step_bytes));
  Carver c(steps);
  for (int l = 0; l < shape.num_layers; ++l) {
    LayerArrays& a = layers_[l];
    CarveLayerArrays(c, plan_.step, a);
    a.staging = reinterpret_cast<int32_t*>(staging_.data() + AlignUp(2 * b * 4) * 2 * l);
    a.capture_staging =
        reinterpret_cast<int32_t*>(staging_.data() + AlignUp(2 * b * 4) * (2 * l + 1));
    for (EventHandle* e :
         {&a.uploaded, &a.appended, &a.written_back, &a.resolved, &a.loaded, &a.hot_attended,
          &a.cap_appended, &a.cap_written_back, &a.cap_resolved, &a.cap_loaded, &a.cap_hot_attended,
          &a.selected_event, &a.cap_selected, &a.scored_event, &a.cap_scored}) {
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
  KVTIER_ASSIGN_OR_RETURN(std::byte * scratch, backend_->Allocate(plan_.scratch_bytes));
  {
    Carver s(scratch);
    DecodeScratch& x = scratch_;
    CarveDecodeScratch(s, plan_.step, x);
    const float* parts[2 * kMaxDecodeParts] = {x.hit_out, x.miss_out, x.hot_out, x.estimate_out,
                                               x.hit_lse, x.miss_lse, x.hot_lse, x.estimate_lse};
    KVTIER_RETURN_IF_ERROR(
        backend_->CopyToBackend(x.part_out, parts, sizeof(parts), backend_->copy_stream()));
  }

  // Prefill staging.
  for (PrefillBuffer& buffer : prefill_) {
    KVTIER_ASSIGN_OR_RETURN(std::byte * block, backend_->Allocate(plan_.prefill_bytes / 2));
    Carver p(block);
    CarvePrefillBuffer(p, plan_.prefill, buffer);
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
  s.summary_bytes = plan_.summary_page_bytes;
  s.summary_arrays = summary_layout_.arrays;
  for (int i = 0; i < summary_layout_.arrays; ++i) {
    s.summary_offset[i] = summary_layout_.offset[i];
    s.summary_stride[i] = summary_layout_.stride[i];
  }
  s.hot_k = hot_k_;
  s.hot_v = hot_v_;
  s.slot_k = slot_k_;
  s.slot_v = slot_v_;
  s.summaries = summaries_;
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
  cudaStream_t s = backend_->copy_stream();
  KVTIER_RETURN_IF_ERROR(page_cache_->EmptyRows(row0, rows, s));
  bool per_item_state = false;  // a stride-0 summary array: one block an item, added to
  for (int a = 0; a < summary_layout_.arrays; ++a) {
    per_item_state |= summary_layout_.stride[a] == 0;
  }
  if (index_->position_array() >= 0 || per_item_state) {
    // Stored positions of 0 mean "position order", and per-item state starts at zero: a
    // reused slot starts without the previous sequence's layout or sums.
    const int64_t region = int64_t{plan_.max_pages} * plan_.summary_page_bytes;
    KVTIER_RETURN_IF_ERROR(backend_->Fill(summaries_ + row0 * region, 0, rows * region, s));
  }
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
    // The tokens those pages hold: position order, or the index's stored positions.
    const int32_t p = plan_.page_size;
    const int64_t row = Row(it->second.slot, layer, kv_head);
    const int pos_array = index_->position_array();
    std::vector<int32_t> stored(static_cast<size_t>(p));
    for (const int32_t page : result.selected_pages) {
      bool ordered = false;
      if (pos_array >= 0) {
        KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(
            stored.data(),
            summaries_ + row * plan_.max_pages * plan_.summary_page_bytes +
                summary_layout_.offset[pos_array] + page * summary_layout_.stride[pos_array],
            int64_t{p} * 4, nullptr));
        KVTIER_RETURN_IF_ERROR(backend_->Synchronize(nullptr));
        ordered = stored[0] != 0;
      }
      for (int32_t r = 0; r < p; ++r) {
        result.selected_positions.push_back(ordered ? int64_t{stored[r]} - 1
                                                    : int64_t{page} * p + r);
      }
    }
    std::sort(result.selected_positions.begin(), result.selected_positions.end());
    if (index_->estimates_rest()) {
      // The zone is every candidate the selection left.
      int32_t range[2] = {0, 0};
      KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(&range[0], a.select_begin + item, 4, nullptr));
      KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(&range[1], a.select_end + item, 4, nullptr));
      KVTIER_RETURN_IF_ERROR(backend_->Synchronize(nullptr));
      result.estimated_pages =
          std::max(0, range[1] - range[0] - static_cast<int32_t>(result.selected_pages.size()));
      result.estimated_tokens = int64_t{result.estimated_pages} * p;
    } else if (index_->estimates()) {
      const int stride = index_->zone_stride();
      int32_t zone_count = 0;
      KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(&zone_count, a.zone_count + item, 4, nullptr));
      KVTIER_RETURN_IF_ERROR(backend_->Synchronize(nullptr));
      zone_count = std::clamp(zone_count, 0, stride);
      std::vector<int32_t> zone(static_cast<size_t>(zone_count));
      KVTIER_RETURN_IF_ERROR(backend_->CopyToHost(zone.data(), a.zone + item * stride,
                                                  int64_t{zone_count} * 4, nullptr));
      KVTIER_RETURN_IF_ERROR(backend_->Synchronize(nullptr));
      for (const int32_t page : zone) {
        if (!std::binary_search(result.selected_pages.begin(), result.selected_pages.end(), page)) {
          ++result.estimated_pages;
        }
      }
      result.estimated_tokens = int64_t{result.estimated_pages} * p;
    }
  }
  {
    // The hot set of the sequence as it stands: sinks and the window of its last page.
    const int64_t t = it->second.tokens[layer];
    result.tokens = t;
    if (t > 0) {
      const int64_t n = (t - 1) / plan_.page_size + 1;
      result.window_begin =
          std::max<int64_t>(plan_.sink_pages, n - plan_.window_pages) * plan_.page_size;
      result.window_begin = std::min(result.window_begin, t);
    }
  }
  const size_t c = static_cast<size_t>(plan_.cache_slots);
  result.slot_page.resize(c);
  result.slot_last_use.resize(c);
  result.slot_score.resize(c);
  KVTIER_RETURN_IF_ERROR(page_cache_->ReadRow(Row(it->second.slot, layer, kv_head),
                                              result.slot_page.data(), result.slot_last_use.data(),
                                              result.slot_score.data()));
  return result;
}

}  // namespace kvtier::internal
