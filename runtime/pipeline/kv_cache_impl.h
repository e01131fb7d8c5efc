// The KvCache behind runtime/kv_cache.h: sequence bookkeeping on the host, the step pipeline
// on a StepBackend. Creation, sequences and inspection are in kv_cache_impl.cc; Prefill is in
// prefill.cc; Decode is in decode.cc, which gives its order of operations and calls its phases
// (decode_append.cc, decode_select.cc, decode_attend.cc, decode_merge.cc, and the page cache
// and transfer engine of offload/).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "index/block_index.h"
#include "kernels/backend/step_backend.h"
#include "offload/host_page_table.h"
#include "offload/page_arena.h"
#include "offload/page_cache.h"
#include "offload/pinned_buffer.h"
#include "offload/transfer_engine.h"
#include "runtime/kv_cache.h"
#include "runtime/pipeline/memory_plan.h"
#include "runtime/pipeline/step_arrays.h"

namespace kvtier::internal {

struct DecodeStep;

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

  KvCacheImpl(const Options& options, const MemoryPlan& plan, std::unique_ptr<BlockIndex> index,
              std::unique_ptr<StepBackend> backend);
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
                            int64_t tokens, int64_t call_end, cudaStream_t stream)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Decode (decode.cc): the checks, the batch's sequences, the step's setup and its end.
  absl::Status CheckDecodeInputs(int64_t batch, const ConstTensor& q, const ConstTensor& k_new,
                                 const ConstTensor& v_new, const MutableTensor& out) const;
  // Checks every sequence of the batch and gives the pages this step starts their host frames
  // (all or nothing); on success decode_entries_ holds the batch's sequences. On an error no
  // sequence and no host frame has changed.
  absl::Status AdmitDecodeBatch(int layer, absl::Span<const SeqId> seqs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After AdmitDecodeBatch: the committed step's host accounting, its events, the upload of
  // the batch and its inputs in backend memory. The returned step refers to layers_[layer].
  absl::StatusOr<DecodeStep> StartDecodeStep(int layer, const ConstTensor& q,
                                             const ConstTensor& k_new, const ConstTensor& v_new,
                                             const MutableTensor& out, bool capturing,
                                             cudaStream_t stream)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeResolve(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeLoad(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FinishDecodeStep(const DecodeStep& step, const MutableTensor& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The phases, each in the file of its name (contracts there and in decode.cc's diagram).
  absl::Status DecodeAppend(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeSelect(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeEstimate(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeAttendAllHot(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeAttendHotSet(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeAttendSelected(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status DecodeMerge(const DecodeStep& step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Shared by the phases (decode_attend.cc): the attention parameters of the step's items
  // without their pages and outputs, and the attention page list a resolve's slots give.
  PagedDecodeParams StepAttention(const DecodeStep& step) const;
  SelectedPagesParams SelectedPageList(const DecodeStep& step, const PageList& list,
                                       const int32_t* slots, const int32_t* count) const;

  absl::Status HarvestTimings(LayerArrays& layer) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for every piece of device work issued so far.
  absl::Status WaitForDevice() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const MemoryPlan plan_;
  const float scale_;
  const std::unique_ptr<BlockIndex> index_;
  const SummaryLayout summary_layout_;
  std::unique_ptr<StepBackend> backend_;
  std::unique_ptr<PageArena> arena_;
  std::unique_ptr<HostPageTable> page_table_;
  PinnedBuffer staging_;  // the layers' upload staging

  // Backend pools (see decode_plan.h, ItemStorage).
  std::byte* hot_k_ = nullptr;
  std::byte* hot_v_ = nullptr;
  std::byte* slot_k_ = nullptr;
  std::byte* slot_v_ = nullptr;
  std::byte* summaries_ = nullptr;  // [rows] regions of max_pages * summary_page_bytes
  // The page cache's directory (its slots are slot_k_ / slot_v_), and the page transfers
  // between the host store and the GPU (write-back, miss load).
  std::unique_ptr<PageCache> page_cache_;
  std::unique_ptr<TransferEngine> transfer_engine_;

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
