// The block-index interface: what picks, each decode step, the blocks of past tokens a query
// attends beyond the hot set (ARCHITECTURE.md, "Indexes"). Every kind (page bounds, the
// clustered wave index, later FAISS) implements it in a file of its own; the runtime names a
// kind only where Options chooses it (CreateBlockIndex).
//
// An index keeps, per item (one (sequence, layer, KV head)), a summary region on the GPU of
// max_pages * layout().bytes_per_page bytes: up to kMaxSummaryArrays arrays indexed by page
// (kernels/decode_plan.h, ItemStorage). The runtime owns the memory and the page geometry;
// the index says what the arrays hold and launches the kernels that write and read them,
// through a StepBackend (CUDA or the host twins), on the stream it is given, never waiting on
// the host (a step stays CUDA-graph capturable).
//
// Thread safety: an index is immutable after creation; its methods may run concurrently on
// different streams when their arguments (and workspaces) do not overlap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "index/index_kind.h"
#include "kernels/backend/step_backend.h"
#include "kernels/base/dtype.h"
#include "kernels/decode_plan.h"

namespace kvtier::internal {

// How a kind lays out one page's summary in an item's region (see the top of this file).
// An array of stride 0 is one per item: every page's entry is the same bytes (per-item state
// that each page's summary adds to), and bytes_per_page then includes a share of its size.
struct SummaryLayout {
  int arrays = 0;                          // in [1, kMaxSummaryArrays]
  int64_t bytes_per_page = 0;              // the region is max_pages * bytes_per_page bytes
  int64_t offset[kMaxSummaryArrays] = {};  // array a's first byte in the region
  int64_t stride[kMaxSummaryArrays] = {};  // array a's bytes a page
};

// What every kind is built from.
struct IndexConfig {
  DType dtype = DType::kBF16;  // of keys, values and queries
  int head_dim = 0;            // D
  int group_size = 0;          // G: query heads per KV head
  int page_size = 0;           // P: tokens a page (a block is one page for every kind today)
  int max_pages = 0;           // pages per item (sizes regions and the scoring grid)
  int max_items = 0;           // items in one decode step: max_batch_size * Hk
  float softmax_scale = 0.0f;
  int budget_pages = 0;      // retrieval budget: blocks attended exactly per item
  double mass_target = 0.0;  // 0: top budget_pages; in (0, 1]: fewest reaching it (capped)
  int estimate_pages = 0;    // estimation zone: blocks estimated after the retrieved ones
  // Or every candidate block not retrieved is estimated (estimate_pages is then 0).
  bool estimate_rest = false;
  bool value_shift = true;  // estimates shift mean values (kernels/value_shift.h)
  // Prefill pieces: the most tokens one segment (one KV head of a piece) holds, and the most
  // segments one OrderSegments call takes (Hk: one piece's KV heads).
  int max_segment_tokens = 0;
  int max_segments = 0;
};

// A batch of pages to summarise (prefill's staged pages, or each step's append page): entry
// j's keys and values and its filled tokens, and the destination of array a of its summary
// (dst[a][j]: the page's entry of that array; a < layout().arrays). Backend memory.
struct PageBatch {
  int num_pages = 0;
  const void* const* k_pages = nullptr;  // [num_pages] -> P x D
  const void* const* v_pages = nullptr;  // [num_pages] -> P x D
  const int32_t* tokens = nullptr;       // [num_pages], in [0, P]
  void* const* dst[kMaxSummaryArrays] = {};
  // Entries j and j + item_stride are usually of the same item (prefill: Hk), which lets a
  // kind add up an item's pages before it writes per-item state.
  int item_stride = 1;
};

// One step's selection for a batch of items: the query group and candidate range of each
// item, and per item the start of each of its summary arrays (DecodePlan's select_summary).
// Outputs: the retrieved blocks, ascending, [num_items, budget_pages] (-1 past the count) and
// their count.
struct SelectBatch {
  int num_items = 0;
  const void* q = nullptr;                               // [num_items, G, D]
  const int32_t* block_begin = nullptr;                  // [num_items]
  const int32_t* block_end = nullptr;                    // [num_items]
  const void* const* summaries[kMaxSummaryArrays] = {};  // [num_items] each
  int32_t* selected = nullptr;                           // [num_items, budget_pages]
  int32_t* num_selected = nullptr;                       // [num_items]
  void* workspace = nullptr;                             // workspace_bytes() of backend memory
  size_t workspace_bytes = 0;
  // Recorded on the stream once the scores are in, before the selection, by kinds that
  // estimate the rest (estimates_rest()): their estimate starts on another stream meanwhile.
  EventHandle scored = nullptr;
};

// The estimation zone's partial attention (kernels/estimation.h) for the batch of a
// SelectBatch that ran (the same q, ranges and summaries): [num_items, G, D] out and
// [num_items, G] lse (-inf: nothing estimated), merged with the exact parts by log-sum-exp.
// The zone, the top budget_pages + estimate_pages blocks of Select's ranking, ascending,
// [num_items, zone_stride()] and their count, is written too (the retrieved ones among them
// are excluded when estimating): selecting it here keeps it off the retrieval's path. Kinds
// that estimate the rest write no zone: they estimate every candidate once the scores are in
// and take the retrieved ones out once the selection is.
// Estimate's stream waits for the events itself (null: ordered by the caller), each where its
// work first needs it: scored_event (SelectBatch::scored, recorded by estimates_rest() kinds)
// and selected_event (recorded after Select).
struct EstimateBatch {
  EventHandle scored_event = nullptr;
  EventHandle selected_event = nullptr;
  int num_items = 0;
  const void* q = nullptr;
  const int32_t* block_begin = nullptr;
  const int32_t* block_end = nullptr;
  const void* const* summaries[kMaxSummaryArrays] = {};
  const int32_t* selected = nullptr;
  const int32_t* num_selected = nullptr;
  int32_t* zone = nullptr;
  int32_t* zone_count = nullptr;
  float* out = nullptr;
  float* lse = nullptr;
  // The same workspace as the step's SelectBatch (Estimate runs after Select, and the next
  // Select after this estimate is merged).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Prefill: the cold full pages of one prefill piece, per KV head, that a kind may lay out in
// an order of its own (clustered kinds). Segment s is `num_tokens[s]` consecutive tokens whose
// keys are rows keys[s] + t * key_stride (t < num_tokens[s]); the kind writes order[s][t'] =
// the segment token stored at slot t' (a permutation of [0, num_tokens[s])). Host memory for
// num_tokens on the host side's copy (host_num_tokens), backend memory for the rest.
struct SegmentBatch {
  int num_segments = 0;
  int max_tokens = 0;                   // upper bound of num_tokens
  const void* const* keys = nullptr;    // [num_segments]
  int64_t key_stride = 0;               // elements between consecutive tokens' keys
  const int32_t* num_tokens = nullptr;  // [num_segments]
  int32_t* const* order = nullptr;      // [num_segments] -> [num_tokens[s]]
  void* workspace = nullptr;            // segment_workspace_bytes()
  size_t workspace_bytes = 0;
};

class BlockIndex {
 public:
  virtual ~BlockIndex() = default;

  virtual IndexKind kind() const = 0;
  virtual const IndexConfig& config() const = 0;
  // The summary region's arrays. The runtime carves regions from it and DecodePlan derives
  // every per-item pointer from it.
  virtual SummaryLayout layout() const = 0;
  // Summary bytes a step reads from HBM to score one candidate page (for the bound and stats).
  virtual int64_t scan_bytes_per_page() const = 0;
  // Backend-memory scratch of one Select + Estimate of max_items items.
  virtual size_t workspace_bytes() const = 0;

  // (Re)writes the summaries of a batch of pages. Idempotent: a page may be summarised again
  // as it fills.
  virtual absl::Status Summarize(StepBackend& backend, const PageBatch& pages,
                                 cudaStream_t stream) const = 0;

  // Selects for the batch (one launch sequence, no host synchronisation).
  virtual absl::Status Select(StepBackend& backend, const SelectBatch& batch,
                              cudaStream_t stream) const = 0;

  // The estimation zone. estimates() false: Estimate is never called and zone lists are not
  // written (zone_stride() is 0).
  virtual bool estimates() const { return false; }
  // Summary bytes the estimation reads for one page of the zone (0 without a zone).
  virtual int64_t estimate_bytes_per_page() const { return 0; }
  // Summary bytes the estimation reads once per item and step (per-item state).
  virtual int64_t estimate_bytes_per_item() const { return 0; }
  virtual int zone_stride() const { return 0; }
  // The zone is every candidate that is not retrieved (no zone lists: zone_stride() is 0).
  virtual bool estimates_rest() const { return false; }
  virtual absl::Status Estimate(StepBackend& backend, const EstimateBatch& batch,
                                cudaStream_t stream) const;

  // Prefill layout. orders_segments() false: pages keep position order and OrderSegments is
  // never called.
  virtual bool orders_segments() const { return false; }
  virtual size_t segment_workspace_bytes() const { return 0; }
  virtual absl::Status OrderSegments(StepBackend& backend, const SegmentBatch& batch,
                                     cudaStream_t stream) const;
  // Kinds that order segments keep each stored token's position in summary array
  // position_array() (int32 a token, P a page; 0 where a page is in position order, else
  // position + 1), so that diagnostics can say which tokens a block holds. -1: none.
  virtual int position_array() const { return -1; }
};

// The kind `kind` for `config`. InvalidArgument when the kind cannot run these budgets (the
// message names the field and the kind that can); Unimplemented for an unknown kind.
absl::StatusOr<std::unique_ptr<BlockIndex>> CreateBlockIndex(IndexKind kind,
                                                             const IndexConfig& config);

}  // namespace kvtier::internal
