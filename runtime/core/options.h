// Model shape and the options a KvCache is created with, validated as a whole.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "index/index_kind.h"
#include "kernels/base/backend_kind.h"
#include "kernels/base/cache_policy.h"
#include "kernels/base/dtype.h"

namespace kvtier {

// The attention shape of the model whose KV is managed.
struct ModelShape {
  int num_layers = 0;
  int num_query_heads = 0;
  int num_kv_heads = 0;        // must divide num_query_heads (GQA)
  int head_dim = 0;            // 64, 128 or 256
  DType dtype = DType::kBF16;  // of keys, values and queries: bf16 or fp16

  // Query heads sharing one KV head; query head h uses KV head h / group_size().
  int group_size() const { return num_kv_heads > 0 ? num_query_heads / num_kv_heads : 0; }
};

// Bytes of one K page or one V page: page_size x head_dim elements.
inline int64_t PageBytes(const ModelShape& shape, int page_size) {
  return int64_t{page_size} * shape.head_dim * static_cast<int64_t>(DTypeSize(shape.dtype));
}

// How many blocks the index selects per (sequence, layer, KV head) and decode step. A block
// is one page for every kind today.
struct SelectionBudget {
  int max_pages = 128;  // the top-k count, and the cap when a mass target is set
  // 0: select exactly `max_pages` by score. In (0, 1]: select the fewest pages whose
  // estimated share of the attention mass reaches this target, at most `max_pages`
  // (clustered indexes only: a page-bounds score is a bound, not a mass).
  double mass_target = 0.0;
  // Clustered indexes: the pages ranked just below the retrieved ones, up to max_pages +
  // estimate_pages in all, are estimated from their centroid and mean value instead of being
  // attended (the estimation zone); 0 turns estimation off. Page bounds takes 0 only.
  int estimate_pages = 0;
  // Clustered indexes: every page that is not retrieved is estimated (the zone is the rest;
  // estimate_pages must then be 0). Its estimate is made over every candidate while the
  // selection runs, the retrieved pages taken out after, so it stays off the step's critical
  // path. Page bounds takes false only.
  bool estimate_rest = false;
  // Clustered indexes, with estimation: each estimated mean value is shifted towards the
  // values the query favours, by the sequence's pooled value-key cross-covariance per layer
  // and KV head (kernels/value_shift.h; prose_dev_L1 at 2% retrieval: 25% -> 16-17% output
  // error). false estimates from the mean values alone (the sums are then not computed).
  bool value_shift = true;
};

struct Options {
  ModelShape shape;
  int page_size = 16;        // tokens per page: 16, 32 or 64
  int sink_tokens = 64;      // first tokens kept on the GPU; a multiple of page_size
  int window_tokens = 1024;  // most recent tokens kept on the GPU; a multiple of page_size
  IndexKind index = IndexKind::kPageBounds;
  SelectionBudget budget;
  // GPU page-cache slots per (sequence, layer, KV head), as a multiple of budget.max_pages.
  double cache_slots_per_budget = 4.0;
  CachePolicy cache_policy = CachePolicy::kLowestScore;
  int64_t host_memory_bytes = int64_t{16} << 30;  // pinned host store
  int64_t gpu_memory_bytes = int64_t{8} << 30;    // hot set, page cache, summaries, workspaces
  int max_sequences = 32;                         // sequences stored at once
  int max_batch_size = 32;                        // sequences in one decode call
  int64_t max_sequence_tokens = 32768;            // tokens one sequence may hold
  // Prefill copies at most this many tokens of one layer through its staging buffers at a
  // time (a longer prompt is processed in pieces); a multiple of page_size.
  int max_prefill_chunk_tokens = 4096;
  // kLowestScore: a slot's accumulated attention mass is multiplied by this before each
  // step's mass is added, in (0, 1] (1: plain sum).
  float score_decay = 0.99f;
  float softmax_scale = 0.0f;  // 0 means 1 / sqrt(head_dim)
  Backend backend = Backend::kCuda;
  int device_id = 0;
  // Time each decode phase with CUDA events (host backend: wall clock) into Stats.
  bool collect_timings = false;
  // Rates of the performance model's bound in Stats (defaults: the H100 machine's measured
  // HBM copy and pinned host-to-device rates, ../shared/GPU.md); kvtier-replay passes what
  // kvtier-probe measures.
  double hbm_bytes_per_second = 3.0e12;
  double pcie_bytes_per_second = 55.3e9;

  float EffectiveSoftmaxScale() const;
};

// OK, or InvalidArgument listing every bad field of the shape ("shape.head_dim = 96: ...").
absl::Status ValidateModelShape(const ModelShape& shape);

// Page sizes the kernels are specialised for: 16, 32 and 64 tokens.
constexpr bool IsSupportedPageSize(int page_size) {
  return page_size == 16 || page_size == 32 || page_size == 64;
}

// OK, or InvalidArgument listing every bad field as "field = value: allowed ..." (all of
// them, separated by "; "), so one call shows everything that must change.
absl::Status ValidateOptions(const Options& options);

}  // namespace kvtier
