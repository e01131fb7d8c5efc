// Decode's load phase (step 4 of ARCHITECTURE.md's decode step): the transfer engine
// (offload/transfer_engine.h) copies the misses from the host store into their cache slots on
// the load stream, after the latest write-back. Order in decode.cc.
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

// Caller stream: (record resolved); load stream: the misses' page list -> wait(written_back)
// -> miss load -> (record loaded). After DecodeResolve.
absl::Status KvCacheImpl::DecodeLoad(const DecodeStep& step) {
  LayerArrays& a = *step.arrays;
  TransferEngine::MissBatch misses;
  misses.num_items = step.items;
  misses.miss_pages = a.miss_pages;
  misses.miss_slots = a.miss_slots;
  misses.miss_count = a.miss_count;
  misses.page_table_offset = a.page_table_offset;
  misses.slot_k_base = a.slot_k_base;
  misses.slot_v_base = a.slot_v_base;
  TransferEngine::LoadEvents events;
  events.resolved = step.resolved;
  // Without a write-back in this step, the latest one is an earlier call's: outside the
  // capture when this step is captured.
  events.written_back = step.any_writeback ? step.written_back : a.written_back;
  events.written_back_external = step.capturing && !step.any_writeback;
  events.loaded = step.loaded;
  if (step.timed) {
    events.timing_start = a.t_load_start;
    events.timing_end = a.t_load_end;
  }
  return transfer_engine_->LoadMisses(
      misses, SelectedPageList(step, a.misses, a.miss_slots, a.miss_count), events, step.stream);
}

}  // namespace kvtier::internal
