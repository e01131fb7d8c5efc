// The KvCache behind runtime/kv_cache.h: sequence bookkeeping on the host, the step pipeline
// on a StepBackend. See kv_cache_impl.cc for the order of operations of Prefill and Decode.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "offload/host_page_table.h"
#include "offload/page_arena.h"
#include "offload/pinned_buffer.h"
#include "runtime/kv_cache.h"
#include "runtime/pipeline/memory_plan.h"
#include "runtime/pipeline/step_backend.h"

namespace kvtier::internal {

// A page list of paged attention (decode_attention.h), in backend memory.
struct PageList {
  int32_t* offsets = nullptr;  // [items + 1]
  const void** k = nullptr;    // [items * max_selected]
  const void** v = nullptr;
  int32_t* last = nullptr;  // [items]
};

// One layer's step arrays in backend memory (written by one Decode of the layer, read by the
// next one and by Inspect), plus its events and host records.
struct LayerArrays {
  int32_t* seq_slot = nullptr;       // [max_batch], then tokens_before right after it
  int32_t* tokens_before = nullptr;  // [max_batch]
  void** append_k = nullptr;
  void** append_v = nullptr;
  int32_t* append_row = nullptr;
  void** writeback_k_dst = nullptr;
  void** writeback_v_dst = nullptr;
  int32_t* summary_tokens = nullptr;
  void** summary_bounds = nullptr;
  int32_t* select_begin = nullptr;
  int32_t* select_end = nullptr;
  const void** select_bounds = nullptr;
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

  EventHandle uploaded = nullptr;      // the staging upload has been consumed
  EventHandle appended = nullptr;      // append + summary done (write-back may start)
  EventHandle written_back = nullptr;  // this layer's latest write-back done
  EventHandle resolved = nullptr;      // resolve done (the load may start)
  EventHandle loaded = nullptr;        // miss load done
  EventHandle hot_attended = nullptr;  // the hot set's attention (hot stream) done
  // Joins between streams inside a Decode captured in a CUDA graph (the events above keep
  // describing the uncaptured work, which later calls wait on).
  EventHandle cap_appended = nullptr, cap_written_back = nullptr, cap_resolved = nullptr,
              cap_loaded = nullptr, cap_hot_attended = nullptr;
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
  float* lse = nullptr;
  const float** part_out = nullptr;  // [kDecodeParts]: hits, misses, hot set
  const float** part_lse = nullptr;  // [kDecodeParts]
  // Split-K workspaces of the attention on the caller's stream (hits, then misses) and of the
  // hot set's on the hot stream (the two may run at once); each attention_workspace_bytes.
  void* attention_workspace = nullptr;
  void* hot_attention_workspace = nullptr;
  size_t attention_workspace_bytes = 0;
  void* select_workspace = nullptr;
  size_t select_workspace_bytes = 0;
  float* hit_chunk_lse = nullptr;
  float* miss_chunk_lse = nullptr;
  // CachePolicy::kNone: a directory of the batch's items, emptied before every resolve, so
  // every selected page misses and the sequences' own directories stay untouched.
  int32_t* empty_page = nullptr;
  int32_t* empty_last_use = nullptr;
  float* empty_score = nullptr;
};

// One prefill staging buffer (two alternate so that packing the next piece overlaps the
// write-back of the previous one).
struct PrefillBuffer {
  std::byte* pages = nullptr;   // [prefill_pages * Hk] K pages, then as many V pages
  std::byte* k_rows = nullptr;  // host inputs copied here
  std::byte* v_rows = nullptr;
  std::byte* pointers = nullptr;  // the piece's pointer arrays (PrefillPointers)
  int64_t pointer_bytes = 0;
  EventHandle packed = nullptr;
  EventHandle written_back = nullptr;
};

class KvCacheImpl final : public KvCache {
 public:
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const Options& options);
  ~KvCacheImpl() override;

  absl::Status AddSequence(SeqId seq) override;
  absl::Status RemoveSequence(SeqId seq) override;
  absl::Status Prefill(SeqId seq, int layer, const ConstTensor& k, const ConstTensor& v,
                       const ConstTensor& q, cudaStream_t stream) override;
  absl::Status Decode(int layer, absl::Span<const SeqId> seqs, const ConstTensor& q,
                      const ConstTensor& k_new, const ConstTensor& v_new, const MutableTensor& out,
                      cudaStream_t stream) override;
  absl::StatusOr<int64_t> NumTokens(SeqId seq, int layer) const override;
  absl::StatusOr<CacheInspection> Inspect(SeqId seq, int layer, int kv_head) const override;
  Stats GetStats() const override;
  void ResetStats() override;
  const Options& options() const override { return options_; }

 private:
  struct Sequence {
    int32_t slot = 0;
    std::vector<int64_t> tokens;  // [num_layers]
  };

  KvCacheImpl(const Options& options, const MemoryPlan& plan, std::unique_ptr<StepBackend> backend);
  absl::Status Initialize();
  int64_t Row(int32_t slot, int layer, int kv_head) const {
    return (int64_t{slot} * options_.shape.num_layers + layer) * options_.shape.num_kv_heads +
           kv_head;
  }
  absl::Status CheckLayer(int layer) const;
  absl::Status CheckSpace(const char* name, MemorySpace space) const;
  ItemStorage Storage() const;
  absl::Status PrefillPiece(const Sequence& sequence, int layer, const std::byte* k,
                            const std::byte* v, bool inputs_on_backend, int64_t position,
                            int64_t tokens, cudaStream_t stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status HarvestTimings(LayerArrays& layer) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for every piece of device work issued so far.
  absl::Status WaitForDevice() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const MemoryPlan plan_;
  const float scale_;
  std::unique_ptr<StepBackend> backend_;
  std::unique_ptr<PageArena> arena_;
  std::unique_ptr<HostPageTable> page_table_;
  PinnedBuffer staging_;  // the layers' upload staging

  // Backend pools (see decode_plan.h, ItemStorage).
  std::byte* hot_k_ = nullptr;
  std::byte* hot_v_ = nullptr;
  std::byte* slot_k_ = nullptr;
  std::byte* slot_v_ = nullptr;
  std::byte* bounds_ = nullptr;
  int32_t* dir_page_ = nullptr;
  int32_t* dir_last_use_ = nullptr;
  float* dir_score_ = nullptr;

  mutable std::vector<LayerArrays> layers_;
  DecodeScratch scratch_;
  PrefillBuffer prefill_[2];
  int next_prefill_buffer_ = 0;
  EventHandle last_call_done_ = nullptr;  // recorded on the caller's stream by every call
  bool any_call_ = false;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<SeqId, Sequence> sequences_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> free_slots_ ABSL_GUARDED_BY(mu_);
  // Decode's host scratch, reused so that a step allocates nothing (kv_cache_impl.cc).
  std::vector<Sequence*> decode_entries_ ABSL_GUARDED_BY(mu_);
  std::vector<HostPageTable::Growth> decode_growths_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> slot_stamp_ ABSL_GUARDED_BY(mu_);  // [max_sequences]
  uint64_t decode_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvtier::internal
