// How close the runtime's attention output is to exact attention, measured on the host: the
// one measure that kvtier-replay and kvtier-accuracy report.
//
// For one KV head's G query heads at one decode step, exact attention is recomputed in double
// over every token from the same (bf16 / fp16 / fp32) queries, keys and values the runtime
// was given, and compared with what Decode wrote. Captured mass is measured on the tokens the
// runtime attended exactly (hot set + retrieved pages); the oracle is the best a perfect
// index could do at the same budget: the hot set plus the `oracle_pages` position-ordered
// pages of `page_size` tokens (page j = tokens [j P, (j + 1) P)) holding the most exact mass,
// summed over the G heads (an index selects per KV head for its whole group).
//
// Pure functions on caller-owned host memory: thread-safe, no allocation visible to the
// caller beyond the returned vectors.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/base/dtype.h"
#include "runtime/core/options.h"
#include "runtime/kv_cache.h"

namespace kvtier::tools {

// One (KV head, decode step): what the runtime saw and what it wrote.
struct GroupAttention {
  DType dtype = DType::kBF16;  // of q, k and v: bf16, fp16 or fp32
  int group_size = 0;          // G >= 1
  int head_dim = 0;            // D >= 1
  float softmax_scale = 0;     // logits are q . k * softmax_scale
  const void* q = nullptr;     // [G, D], contiguous
  // Token t's key and value: D elements at k + t * kv_row_stride (likewise v); tokens >= 1.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t tokens = 0;
  int64_t kv_row_stride = 0;   // elements, >= D
  const float* out = nullptr;  // [G, D]: the runtime's output, fp32
  // [tokens]: nonzero where token t was attended exactly (hot set or a retrieved page).
  absl::Span<const uint8_t> captured;
  // Optional, for the oracle: [tokens] nonzero where token t is in the hot set (empty: no oracle),
  // the page size and the number of cold pages the oracle may pick (>= 0; clamped to the
  // cold pages there are). Hot tokens never count as a page's.
  absl::Span<const uint8_t> hot;
  int page_size = 0;
  int oracle_pages = 0;
};

// One query head against exact attention.
struct HeadAccuracy {
  // Share of the head's exact softmax mass on the captured tokens, in [0, 1].
  double mass_captured = 0;
  // The same on the oracle's tokens; NaN when no oracle was asked for.
  double oracle_mass = std::numeric_limits<double>::quiet_NaN();
  // |out - exact| / |exact| (L2 over D; absolute when exact is all zeros). NaN when `out`
  // holds a NaN (an element Decode did not write), so it can never pass unseen.
  double output_error = 0;
  // The same against exact attention restricted to the captured tokens: what the kernels owe
  // given the selection. Rounding only (~1e-6) for a retrieval-only index; an estimation zone
  // adds its estimate's error here.
  double restricted_error = 0;
};

struct GroupAccuracy {
  int64_t tokens = 0;
  int64_t captured_tokens = 0;      // tokens with captured[t] != 0
  std::vector<HeadAccuracy> heads;  // [G]
};

// Measures one group. The caller guarantees the shapes above (asserted in debug builds).
GroupAccuracy MeasureGroupAccuracy(const GroupAttention& in);

// The runtime's hot set for a sequence of `tokens` (kv_cache.h), in whole pages of
// `page_size` (> 0): the first sink_tokens / P pages and the last window_tokens / P pages, the
// partly filled last page counting as one; the cold (offloaded) pages lie between.
struct HotSetGeometry {
  int64_t sink_end = 0;      // hot tokens [0, sink_end): min(sink pages * P, tokens)
  int64_t window_begin = 0;  // and [window_begin, tokens); cold tokens [sink_end, window_begin)
  int64_t cold_tokens() const { return window_begin - sink_end; }
};
HotSetGeometry HotSet(int64_t tokens, int page_size, int sink_tokens, int window_tokens);

// Cold tokens of a sequence of `tokens`: HotSet(...).cold_tokens().
int64_t ColdTokens(int64_t tokens, int page_size, int sink_tokens, int window_tokens);

// The tokens one Decode attended exactly for one (sequence, layer, KV head), from its
// KvCache::Inspect: the hot set [0, min(sink_tokens, tokens)) and [window_begin, tokens),
// and the retrieved pages' selected_positions.
struct ExactTokens {
  std::vector<uint8_t> captured;  // [tokens]: hot or retrieved
  std::vector<uint8_t> hot;       // [tokens]: hot
  int64_t retrieved = 0;          // selected_positions.size()
  // True when the runtime left the positions out (tokens == 0 while it selected pages) and
  // they were derived from selected_pages and the page geometry (page j = [j P, (j + 1) P)),
  // which holds for the position-ordered page-bounds index only.
  bool derived = false;
};
// `tokens` is what the sequence holds after the step. Internal when the inspection
// disagrees with it (another token count, a position out of range or in the hot set);
// FailedPrecondition when positions would have to be derived for an index other than page
// bounds.
absl::Status ExactTokensOf(const KvCache::CacheInspection& inspection, const Options& options,
                           int64_t tokens, ExactTokens* out);

// NaN-aware summaries of many per-head values.
struct ValueSummary {
  int64_t count = 0;
  int64_t non_finite = 0;  // NaN or infinite values; when > 0, every statistic is NaN
  double mean = 0;
  double min = 0;
  double p95 = 0;  // nearest-rank 95th percentile
  double max = 0;
};
ValueSummary Summarize(absl::Span<const double> values);

}  // namespace kvtier::tools
