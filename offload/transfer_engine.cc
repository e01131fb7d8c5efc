#include "offload/transfer_engine.h"

#include "kernels/base/status.h"

namespace kvtier::internal {

absl::Status TransferEngine::WriteBack(const WriteBackBatch& pages, EventHandle ready,
                                       EventHandle done) {
  cudaStream_t copy_stream = backend_->copy_stream();
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(copy_stream, ready));
  WriteBackParams wb;
  wb.num_pages = pages.num_pages;
  wb.page_bytes = page_bytes_;
  wb.k_src = pages.k_src;
  wb.v_src = pages.v_src;
  wb.k_dst = pages.k_dst;
  wb.v_dst = pages.v_dst;
  KVTIER_RETURN_IF_ERROR(backend_->WriteBack(wb, copy_stream));
  return backend_->Record(done, copy_stream);
}

absl::Status TransferEngine::LoadMisses(const MissBatch& misses,
                                        const SelectedPagesParams& miss_list,
                                        const LoadEvents& events, cudaStream_t stream) {
  cudaStream_t load_stream = backend_->load_stream();
  KVTIER_RETURN_IF_ERROR(backend_->Record(events.resolved, stream));
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(load_stream, events.resolved));
  KVTIER_RETURN_IF_ERROR(backend_->BuildSelectedPages(miss_list, load_stream));
  KVTIER_RETURN_IF_ERROR(
      backend_->StreamWait(load_stream, events.written_back, events.written_back_external));
  if (events.timing_start != nullptr) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(events.timing_start, load_stream));
  }
  MissLoadParams load;
  load.num_items = misses.num_items;
  load.max_misses = max_misses_;
  load.page_bytes = page_bytes_;
  load.miss_pages = misses.miss_pages;
  load.miss_slots = misses.miss_slots;
  load.miss_count = misses.miss_count;
  load.host_k_pages = page_table_->k_table();
  load.host_v_pages = page_table_->v_table();
  load.page_table_offset = misses.page_table_offset;
  load.slot_k_base = misses.slot_k_base;
  load.slot_v_base = misses.slot_v_base;
  KVTIER_RETURN_IF_ERROR(backend_->MissLoad(load, load_stream));
  if (events.timing_end != nullptr) {
    KVTIER_RETURN_IF_ERROR(backend_->Record(events.timing_end, load_stream));
  }
  return backend_->Record(events.loaded, load_stream);
}

}  // namespace kvtier::internal
