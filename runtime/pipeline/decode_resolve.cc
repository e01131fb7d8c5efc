// Decode's resolve phase (step 3 of ARCHITECTURE.md's decode step): the page cache
// (offload/page_cache.h) maps each selected page to a cache slot, a hit or a miss to load.
// Order in decode.cc.
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

// Caller stream: resolve. After DecodeSelect; DecodeLoad follows.
absl::Status KvCacheImpl::DecodeResolve(const DecodeStep& step) {
  LayerArrays& a = *step.arrays;
  PageCache::ResolveBatch resolve;
  resolve.num_items = step.items;
  resolve.item_rows = a.item_row;
  resolve.selected_pages = a.selected;
  resolve.num_selected = a.num_selected;
  resolve.step = ++a.step;
  resolve.selected_slots = a.selected_slots;
  resolve.miss_pages = a.miss_pages;
  resolve.miss_slots = a.miss_slots;
  resolve.hit_count = a.hit_count;
  resolve.miss_count = a.miss_count;
  resolve.hit_slots = a.hit_slots;
  KVTIER_RETURN_IF_ERROR(page_cache_->Resolve(resolve, step.stream));
  if (step.timed) KVTIER_RETURN_IF_ERROR(backend_->Record(a.t_resolve, step.stream));
  return absl::OkStatus();
}

}  // namespace kvtier::internal
