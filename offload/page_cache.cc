#include "offload/page_cache.h"

#include <cassert>

#include "kernels/base/status.h"

namespace kvtier::internal {

void PageCache::Carve(Carver& c, const PageCacheGeometry& g, Arrays& a) {
  const int64_t entries = g.rows * g.num_slots;
  a.slot_page = c.Take<int32_t>(entries);
  a.slot_last_use = c.Take<int32_t>(entries);
  a.slot_score = c.Take<float>(entries);
  if (g.policy == CachePolicy::kNone) {
    const int64_t empty_entries = int64_t{g.max_items} * g.num_slots;
    a.empty_page = c.Take<int32_t>(empty_entries);
    a.empty_last_use = c.Take<int32_t>(empty_entries);
    a.empty_score = c.Take<float>(empty_entries);
  }
}

int64_t PageCache::DirectoryBytes(const PageCacheGeometry& geometry) {
  Carver count(nullptr);
  Arrays arrays;
  Carve(count, geometry, arrays);
  return count.used();
}

absl::StatusOr<std::unique_ptr<PageCache>> PageCache::Create(StepBackend* backend,
                                                             const PageCacheGeometry& geometry) {
  KVTIER_ASSIGN_OR_RETURN(std::byte * block, backend->Allocate(DirectoryBytes(geometry)));
  Carver c(block);
  Arrays arrays;
  Carve(c, geometry, arrays);
  // The block comes zero-filled: last uses and scores are 0 already.
  KVTIER_RETURN_IF_ERROR(backend->Fill(
      arrays.slot_page, 0xFF, geometry.rows * geometry.num_slots * 4, backend->copy_stream()));
  return std::unique_ptr<PageCache>(new PageCache(backend, geometry, arrays));
}

absl::Status PageCache::EmptyRows(int64_t row_begin, int64_t num_rows, cudaStream_t stream) {
  const int64_t first = row_begin * geometry_.num_slots;
  const int64_t bytes = num_rows * geometry_.num_slots * 4;
  KVTIER_RETURN_IF_ERROR(backend_->Fill(arrays_.slot_page + first, 0xFF, bytes, stream));
  KVTIER_RETURN_IF_ERROR(backend_->Fill(arrays_.slot_last_use + first, 0, bytes, stream));
  KVTIER_RETURN_IF_ERROR(backend_->Fill(arrays_.slot_score + first, 0, bytes, stream));
  return absl::OkStatus();
}

absl::Status PageCache::ReadRow(int64_t row, int32_t* slot_page, int32_t* slot_last_use,
                                float* slot_score) const {
  const int64_t c = geometry_.num_slots;
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToHost(slot_page, arrays_.slot_page + row * c, c * 4, nullptr));
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToHost(slot_last_use, arrays_.slot_last_use + row * c, c * 4, nullptr));
  KVTIER_RETURN_IF_ERROR(
      backend_->CopyToHost(slot_score, arrays_.slot_score + row * c, c * 4, nullptr));
  return backend_->Synchronize(nullptr);
}

absl::Status PageCache::Resolve(const ResolveBatch& batch, cudaStream_t stream) {
  assert(batch.num_items <= geometry_.max_items);
  CacheResolveParams resolve;
  resolve.directory.num_items = batch.num_items;
  resolve.directory.num_slots = geometry_.num_slots;
  resolve.directory.max_pages = geometry_.max_pages;
  if (geometry_.policy == CachePolicy::kNone) {
    // No cache: the step's items resolve against an empty directory of their own, which the
    // kernel fills and nothing reads afterwards. The policy only has to be a kernel's.
    KVTIER_RETURN_IF_ERROR(backend_->Fill(
        arrays_.empty_page, 0xFF, int64_t{batch.num_items} * geometry_.num_slots * 4, stream));
    resolve.directory.slot_page = arrays_.empty_page;
    resolve.directory.slot_last_use = arrays_.empty_last_use;
    resolve.directory.slot_score = arrays_.empty_score;
    resolve.directory.num_rows = 0;
    resolve.item_rows = nullptr;
    resolve.policy = CachePolicy::kLeastRecentlyUsed;
  } else {
    resolve.directory.slot_page = arrays_.slot_page;
    resolve.directory.slot_last_use = arrays_.slot_last_use;
    resolve.directory.slot_score = arrays_.slot_score;
    resolve.directory.num_rows = static_cast<int32_t>(geometry_.rows);
    resolve.item_rows = batch.item_rows;
    resolve.policy = geometry_.policy;
  }
  resolve.selected_pages = batch.selected_pages;
  resolve.num_selected = batch.num_selected;
  resolve.max_selected = geometry_.max_selected;
  resolve.step = batch.step;
  resolve.selected_slots = batch.selected_slots;
  resolve.miss_pages = batch.miss_pages;
  resolve.miss_slots = batch.miss_slots;
  resolve.hit_count = batch.hit_count;
  resolve.miss_count = batch.miss_count;
  resolve.hit_slots = batch.hit_slots;
  return backend_->CacheResolve(resolve, stream);
}

absl::Status PageCache::UpdateScores(const ScoreBatch& batch, cudaStream_t stream) {
  assert(scores_pages());
  PageScoreUpdateParams update;
  update.num_items = batch.num_items;
  update.group_size = batch.group_size;
  update.max_selected = geometry_.max_selected;
  update.page_size = geometry_.page_size;
  update.num_slots = geometry_.num_slots;
  update.lse = batch.lse;
  update.num_lists = batch.num_lists;
  for (int l = 0; l < batch.num_lists; ++l) update.lists[l] = batch.lists[l];
  update.slot_score = arrays_.slot_score;
  update.item_rows = batch.item_rows;
  update.num_rows = static_cast<int32_t>(geometry_.rows);
  update.decay = geometry_.score_decay;
  return backend_->UpdatePageScores(update, stream);
}

}  // namespace kvtier::internal
