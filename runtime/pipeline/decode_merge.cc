// Decode's merge phase (the end of step 5 of ARCHITECTURE.md's decode step): the partial
// results (hits, misses, hot set and, with an estimation zone, the estimate) merge exactly by
// log-sum-exp into out; the score policy then credits each selected page's slot with the
// attention mass it received. Order in decode.cc.
#include "kernels/base/status.h"
#include "runtime/pipeline/decode_step.h"
#include "runtime/pipeline/kv_cache_impl.h"

namespace kvtier::internal {

// Caller stream: wait(hot_attended) -> merge -> [score update]. After DecodeAttendSelected.
absl::Status KvCacheImpl::DecodeMerge(const DecodeStep& step) {
  const int g = options_.shape.group_size();
  KVTIER_RETURN_IF_ERROR(backend_->StreamWait(step.stream, step.hot_attended));
  MergeParams merge;
  // The parts in scratch_.part_out / part_lse order: hits, misses, hot set, estimate.
  merge.num_parts = step.estimates ? kMaxDecodeParts : kMaxDecodeParts - 1;
  merge.num_rows = step.items * g;
  merge.head_dim = options_.shape.head_dim;
  merge.part_out = scratch_.part_out;
  merge.part_lse = scratch_.part_lse;
  merge.out_dtype = step.out_dtype;
  merge.out = step.out_target;
  merge.lse = scratch_.lse;
  KVTIER_RETURN_IF_ERROR(backend_->Merge(merge, step.stream));
  if (!page_cache_->scores_pages()) return absl::OkStatus();

  // Each page's share of the final attention, added to its slot's score after every score of
  // the item decays.
  const LayerArrays& a = *step.arrays;
  PageCache::ScoreBatch scores;
  scores.num_items = step.items;
  scores.group_size = g;
  scores.item_rows = a.item_row;
  scores.lse = scratch_.lse;
  scores.num_lists = 2;
  scores.lists[0] = {a.hits.offsets, a.hit_count, a.hit_slots, scratch_.hit_chunk_lse};
  scores.lists[1] = {a.misses.offsets, a.miss_count, a.miss_slots, scratch_.miss_chunk_lse};
  return page_cache_->UpdateScores(scores, step.stream);
}

}  // namespace kvtier::internal
