// The page cache of ARCHITECTURE.md: per item (a (sequence slot, layer, KV head) row) a pool of
// GPU page slots, and the directory that says which page each slot holds, when it was last used
// and the attention mass it has received. The slots themselves are a pool of the runtime's
// (ItemStorage::slot_k / slot_v); this module owns the directory in backend memory and runs
// the decode step's two uses of it on the backend: the resolve (kernels/cache_resolve.h) after
// selection and, for the score policy, the score update (kernels/decode_plan.h) after
// attention. Both are launches only: nothing waits on the host, so they can be captured in a
// CUDA graph.
//
// CachePolicy::kNone (no cache) resolves against a directory of the step's items that is
// emptied before every resolve, so every selected page misses and the rows' own directories
// stay as they are.
//
// Thread safety: none; the owner (the KvCache) serialises calls and the streams they take.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend/step_backend.h"
#include "kernels/base/cache_policy.h"
#include "kernels/base/carver.h"

namespace kvtier::internal {

// What the directory is sized by.
struct PageCacheGeometry {
  int64_t rows = 0;          // directory rows: every item of every sequence slot
  int32_t num_slots = 0;     // C slots a row, in [1, kMaxCacheSlots]
  int32_t max_pages = 0;     // page indexes lie in [0, max_pages)
  int32_t page_size = 0;     // P tokens a page
  int32_t max_selected = 0;  // pages one item selects in a step (row stride of the step lists)
  int32_t max_items = 0;     // items one step resolves
  CachePolicy policy = CachePolicy::kLeastRecentlyUsed;
  float score_decay = 1.0f;  // kLowestScore: every score of an item decays by it each step
};

class PageCache {
 public:
  // Bytes of backend memory Create allocates for `geometry`.
  static int64_t DirectoryBytes(const PageCacheGeometry& geometry);

  // Allocates the directory on `backend` (not owned; it must outlive the cache) and empties it
  // on the backend's copy stream: the caller synchronises that stream before the first
  // resolve. ResourceExhausted when the memory cannot be had.
  static absl::StatusOr<std::unique_ptr<PageCache>> Create(StepBackend* backend,
                                                           const PageCacheGeometry& geometry);

  PageCache(const PageCache&) = delete;
  PageCache& operator=(const PageCache&) = delete;

  const PageCacheGeometry& geometry() const { return geometry_; }
  // Whether the policy ranks slots by score, i.e. wants UpdateScores after each step (and the
  // attention's per-chunk log-sum-exps that feed it).
  bool scores_pages() const { return geometry_.policy == CachePolicy::kLowestScore; }

  // Empties rows [row_begin, row_begin + num_rows) (every slot free, last use and score 0),
  // ordered on `stream`. For a sequence slot taken by a new sequence.
  absl::Status EmptyRows(int64_t row_begin, int64_t num_rows, cudaStream_t stream);

  // Copies row `row`'s directory to host memory, [num_slots] entries each (slot_page -1 for an
  // empty slot), and returns once they are there. Ordered after all earlier work of the
  // default stream; the caller has waited for the steps that write the row.
  absl::Status ReadRow(int64_t row, int32_t* slot_page, int32_t* slot_last_use,
                       float* slot_score) const;

  // One step's resolve of a batch of items, in backend memory: inputs from the selection,
  // outputs as CacheResolveParams describes them (rows [num_items, max_selected] unless
  // stated).
  struct ResolveBatch {
    int32_t num_items = 0;                    // in [0, max_items]
    const int32_t* item_rows = nullptr;       // [num_items] distinct directory rows
    const int32_t* selected_pages = nullptr;  // ascending per item
    const int32_t* num_selected = nullptr;    // [num_items]
    int32_t step = 0;                         // the resolve clock, non-decreasing per row
    int32_t* selected_slots = nullptr;
    int32_t* miss_pages = nullptr;
    int32_t* miss_slots = nullptr;
    int32_t* hit_count = nullptr;   // [num_items]
    int32_t* miss_count = nullptr;  // [num_items]
    int32_t* hit_slots = nullptr;
  };
  // Looks every selected page up in its row (kNone: in the emptied directory) and gives each
  // miss a slot the policy frees, never one holding a page selected in this step. Launches on
  // `stream` only (kNone: an empty fill first).
  absl::Status Resolve(const ResolveBatch& batch, cudaStream_t stream);

  // One step's attention mass for the score policy: the merged log-sum-exp and the lists
  // whose pages received it (kernels/decode_plan.h, ScoredPageList), in backend memory.
  struct ScoreBatch {
    int32_t num_items = 0;
    int32_t group_size = 0;              // G query heads an item
    const int32_t* item_rows = nullptr;  // [num_items], as the resolve's
    const float* lse = nullptr;          // [num_items, G]
    int32_t num_lists = 0;               // 1 or 2
    ScoredPageList lists[2];
  };
  // Decays every score of each item's row, then adds each listed page's attention mass to its
  // slot's score. Only when scores_pages(). Launches on `stream` only.
  absl::Status UpdateScores(const ScoreBatch& batch, cudaStream_t stream);

 private:
  // The directory's arrays: the rows' [rows, C] slot page, last use and score, and for kNone
  // the empty directory [max_items, C] of the same three.
  struct Arrays {
    int32_t* slot_page = nullptr;
    int32_t* slot_last_use = nullptr;
    float* slot_score = nullptr;
    int32_t* empty_page = nullptr;
    int32_t* empty_last_use = nullptr;
    float* empty_score = nullptr;
  };
  // The one description of the directory's layout: sizes it (counting Carver) and carves it.
  static void Carve(Carver& c, const PageCacheGeometry& g, Arrays& a);

  PageCache(StepBackend* backend, const PageCacheGeometry& geometry, const Arrays& arrays)
      : backend_(backend), geometry_(geometry), arrays_(arrays) {}

  StepBackend* const backend_;
  const PageCacheGeometry geometry_;
  const Arrays arrays_;
};

}  // namespace kvtier::internal
