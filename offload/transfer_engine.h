// The transfer engine of ARCHITECTURE.md: the two movements of KV pages across PCIe, each on a
// stream of the backend's own and joined to the caller's work by events, so that neither ever
// waits on the host and a decode step can be captured in a CUDA graph.
//  - write-back (copy stream): pages that became complete (they left the window, or a prefill
//    piece staged them) are copied from the GPU into their host-store frames.
//  - miss load (load stream): the pages a resolve found missing from the page cache are read
//    from the host store (zero-copy, kernels/miss_load.h) into the slots the resolve chose,
//    beside the attention over the hot set and the hits.
// Host-store addresses come from the HostPageTable, which the host grows before it enqueues
// the step that first uses a page.
//
// The events are the caller's (one set per layer, and a capture set inside a CUDA-graph
// capture); the engine only records and waits on them in the order each call documents.
//
// Thread safety: none; the owner (the KvCache) serialises calls and the streams they take.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/backend/step_backend.h"
#include "offload/host_page_table.h"

namespace kvtier::internal {

class TransferEngine {
 public:
  // `backend` and `page_table` are not owned and must outlive the engine. `page_bytes`: one K
  // or V page; `max_misses`: the row stride of the resolve's miss lists (its max_selected).
  TransferEngine(StepBackend* backend, const HostPageTable* page_table, int64_t page_bytes,
                 int32_t max_misses)
      : backend_(backend),
        page_table_(page_table),
        page_bytes_(page_bytes),
        max_misses_(max_misses) {}

  // Completed pages, in backend memory: [num_pages] GPU sources and host-store destinations
  // (device-visible addresses); an entry with a null k_dst is skipped (WriteBackParams).
  struct WriteBackBatch {
    int32_t num_pages = 0;
    const void* const* k_src = nullptr;
    const void* const* v_src = nullptr;
    void* const* k_dst = nullptr;
    void* const* v_dst = nullptr;
  };
  // Copy stream: waits for `ready` (recorded by the caller after the sources were written),
  // copies every page, records `done`. A load that reads these pages waits for `done`.
  absl::Status WriteBack(const WriteBackBatch& pages, EventHandle ready, EventHandle done);

  // One step's misses, in backend memory: the resolve's [num_items, max_misses] miss lists
  // and counts, each item's page-table offset and slot pools (kernels/decode_plan.h).
  struct MissBatch {
    int32_t num_items = 0;
    const int32_t* miss_pages = nullptr;
    const int32_t* miss_slots = nullptr;
    const int32_t* miss_count = nullptr;
    const int64_t* page_table_offset = nullptr;
    void* const* slot_k_base = nullptr;
    void* const* slot_v_base = nullptr;
  };
  // The events a miss load is ordered by.
  struct LoadEvents {
    EventHandle resolved = nullptr;  // recorded here on the caller's stream: the misses known
    // The latest write-back of the layer; `written_back_external`: it was recorded outside the
    // CUDA-graph capture the caller's stream is in (StepBackend::StreamWait).
    EventHandle written_back = nullptr;
    bool written_back_external = false;
    EventHandle loaded = nullptr;  // recorded on the load stream when every miss is in its slot
    // Optional timing events (collect_timings), recorded on the load stream around the load.
    EventHandle timing_start = nullptr;
    EventHandle timing_end = nullptr;
  };
  // Records `resolved` on `stream` (the caller's, after the resolve), then on the load stream:
  // waits for it, builds `miss_list` (the misses' attention page list: their attention waits
  // for the load anyway), waits for `written_back` (pages that left the window are in the host
  // store once it is done), loads every miss into its slot, records `loaded`. The caller's
  // stream waits for `loaded` before it reads the misses' slots.
  absl::Status LoadMisses(const MissBatch& misses, const SelectedPagesParams& miss_list,
                          const LoadEvents& events, cudaStream_t stream);

 private:
  StepBackend* const backend_;
  const HostPageTable* const page_table_;
  const int64_t page_bytes_;
  const int32_t max_misses_;
};

}  // namespace kvtier::internal
