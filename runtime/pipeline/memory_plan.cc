#include "runtime/pipeline/memory_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/block_select.h"
#include "kernels/cache_resolve.h"
#include "kernels/decode_attention.h"

namespace kvtier::internal {
namespace {

std::string Bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= double{1 << 30}) return absl::StrFormat("%.2f GiB", b / (1 << 30));
  if (b >= double{1 << 20}) return absl::StrFormat("%.1f MiB", b / (1 << 20));
  return absl::StrFormat("%.1f KiB", b / 1024);
}

}  // namespace

std::string MemoryPlan::Describe() const {
  return absl::StrCat("hot pages ", Bytes(hot_bytes), ", page caches ", Bytes(cache_bytes),
                      ", summaries ", Bytes(summary_bytes), ", directories ",
                      Bytes(directory_bytes), ", step arrays ", Bytes(step_bytes),
                      ", decode scratch ", Bytes(scratch_bytes), ", prefill staging ",
                      Bytes(prefill_bytes), "; total ", Bytes(device_bytes()));
}

absl::StatusOr<MemoryPlan> PlanMemory(const Options& o) {
  const ModelShape& shape = o.shape;
  const int64_t dsize = static_cast<int64_t>(DTypeSize(shape.dtype));
  const int64_t hk = shape.num_kv_heads;
  const int64_t g = shape.group_size();
  const int64_t d = shape.head_dim;

  MemoryPlan m;
  m.page_size = o.page_size;
  m.sink_pages = o.sink_tokens / o.page_size;
  m.window_pages = o.window_tokens / o.page_size;
  m.ring_pages = m.window_pages + 1;
  m.max_pages = static_cast<int32_t>((o.max_sequence_tokens + o.page_size - 1) / o.page_size);
  m.max_selected = o.budget.max_pages;
  const double slots = std::ceil(o.cache_slots_per_budget * o.budget.max_pages);
  if (slots > kMaxCacheSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache_slots_per_budget = ", o.cache_slots_per_budget,
                     " with budget.max_pages = ", o.budget.max_pages, " gives ", slots,
                     " cache slots per KV head; at most ", kMaxCacheSlots, " are supported"));
  }
  m.cache_slots = static_cast<int32_t>(slots);
  if (o.budget.mass_target > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.mass_target = ", o.budget.mass_target,
        ": the page-bounds index ranks pages by an upper bound of q.k, which is not an "
        "attention mass; select by count (mass_target = 0) until a centroid index is "
        "available"));
  }
  if (m.sink_pages > m.max_pages) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_tokens = ", o.sink_tokens, ": more than max_sequence_tokens = ",
                     o.max_sequence_tokens, " (the sink must fit in a sequence)"));
  }
  m.page_bytes = PageBytes(shape, o.page_size);
  m.bounds_bytes = 2 * d * dsize;
  m.rows = int64_t{o.max_sequences} * shape.num_layers * hk;
  m.batch_items = static_cast<int32_t>(o.max_batch_size * hk);
  m.prefill_pages = o.max_prefill_chunk_tokens / o.page_size + 1;

  // Per item (row).
  const int64_t hot_per_row = int64_t{m.sink_pages + m.ring_pages} * 2 * m.page_bytes;
  const int64_t cache_per_row = int64_t{m.cache_slots} * 2 * m.page_bytes;
  const int64_t summary_per_row = int64_t{m.max_pages} * m.bounds_bytes;
  const int64_t directory_per_row = int64_t{m.cache_slots} * 12;
  m.hot_bytes = AlignUp(m.rows * hot_per_row);
  m.cache_bytes = AlignUp(m.rows * cache_per_row);
  m.summary_bytes = AlignUp(m.rows * summary_per_row);
  m.directory_bytes = 3 * AlignUp(m.rows * m.cache_slots * 4);
  m.per_sequence_device_bytes = int64_t{shape.num_layers} * hk *
                                (hot_per_row + cache_per_row + summary_per_row + directory_per_row);

  // Per layer: the step's arrays (see kv_cache_impl.cc, LayerArrays).
  const int64_t bi = m.batch_items;
  const int64_t b = o.max_batch_size;
  const int64_t k = m.max_selected;
  const int64_t hot_cap = int64_t{m.sink_pages + m.window_pages};
  int64_t layer = 0;
  layer += 2 * AlignUp(b * 4);                     // seq_slot, tokens_before
  layer += 4 * AlignUp(bi * 8);                    // append k/v, write-back dst k/v
  layer += AlignUp(b * 4);                         // append rows
  layer += 2 * AlignUp(bi * 4) + AlignUp(bi * 8);  // summary tokens, bounds
  layer += 2 * AlignUp(bi * 4) + AlignUp(bi * 8);  // select range, bounds
  layer += AlignUp(bi * 4) + 3 * AlignUp(bi * 8);  // item rows, page-table offsets, slot bases
  layer += AlignUp((bi + 1) * 4) + 2 * AlignUp(bi * hot_cap * 8) + AlignUp(bi * 4);  // hot list
  layer += 5 * AlignUp(bi * k * 4) + 3 * AlignUp(bi * 4);  // selection and resolve outputs
  // The hits' list and the misses' list.
  layer += 2 * (AlignUp((bi + 1) * 4) + AlignUp(bi * 4) + 2 * AlignUp(bi * k * 8));
  layer += AlignUp(3 * 8);  // counters
  m.per_layer_step_bytes = layer;
  m.step_bytes = layer * shape.num_layers;

  // Shared decode scratch.
  int64_t scratch = 0;
  scratch += AlignUp(bi * g * d * dsize) + 2 * AlignUp(bi * d * dsize);  // q, k_new, v_new
  scratch += AlignUp(bi * g * d * 4);                                    // out staging
  // Partial results of the hits, the misses and the hot set, then the merged lse.
  scratch += kDecodeParts * (AlignUp(bi * g * d * 4) + AlignUp(bi * g * 4));
  scratch += AlignUp(bi * g * 4);
  scratch += AlignUp(2 * kDecodeParts * 8);  // merge part pointers
  // Split-K workspaces: the caller's stream and the hot stream.
  scratch +=
      2 * AlignUp(static_cast<int64_t>(PagedDecodeWorkspaceBytes(
              m.batch_items, static_cast<int>(g), static_cast<int>(d), kMaxAttentionSplits)));
  {
    BlockSelectParams p;
    p.kind = BlockScoreKind::kPageBounds;
    p.group_size = static_cast<int>(g);
    p.num_items = m.batch_items;
    p.max_blocks = m.max_pages;
    scratch += AlignUp(static_cast<int64_t>(BlockSelectWorkspaceBytes(p)));
  }
  scratch += AlignUp(bi * k * (o.page_size / 16) * g * 4);  // chunk lse: hits
  scratch += AlignUp(bi * k * (o.page_size / 16) * g * 4);  // chunk lse: misses
  if (o.cache_policy == CachePolicy::kNone) {
    scratch += 3 * AlignUp(bi * m.cache_slots * 4);  // the empty directory each step resolves in
  }
  m.scratch_bytes = scratch;

  // Prefill staging, two buffers: pages, input rows, pointer arrays.
  const int64_t np_hk = int64_t{m.prefill_pages} * hk;
  int64_t prefill = 0;
  prefill += AlignUp(np_hk * 2 * m.page_bytes);                                  // staged pages
  prefill += AlignUp(int64_t{o.max_prefill_chunk_tokens} * hk * d * dsize) * 2;  // k, v rows
  prefill += AlignUp(np_hk * 8 * 16 + np_hk * 4);                                // pointer arrays
  m.prefill_bytes = 2 * prefill;

  // Host.
  m.host_frames = o.host_memory_bytes / (2 * m.page_bytes);
  m.page_table_bytes = 2 * m.rows * m.max_pages * 8;
  if (m.host_frames < hk) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host_memory_bytes = ", o.host_memory_bytes, ": holds ", m.host_frames, " page frames of ",
        2 * m.page_bytes, " bytes; at least one per KV head (", hk, ") is needed"));
  }

  if (o.backend == Backend::kCuda && m.device_bytes() > o.gpu_memory_bytes) {
    const int64_t fixed = m.device_bytes() - m.per_sequence_device_bytes * o.max_sequences;
    const int64_t fit =
        o.gpu_memory_bytes > fixed ? (o.gpu_memory_bytes - fixed) / m.per_sequence_device_bytes : 0;
    return absl::ResourceExhaustedError(
        absl::StrCat("gpu_memory_bytes = ", o.gpu_memory_bytes, " (", Bytes(o.gpu_memory_bytes),
                     ") cannot hold the plan for max_sequences = ", o.max_sequences,
                     " of max_sequence_tokens = ", o.max_sequence_tokens, ": ", m.Describe(), "; ",
                     Bytes(m.per_sequence_device_bytes), " per sequence, so ", fit,
                     " sequences would fit; lower max_sequences, max_sequence_tokens, "
                     "cache_slots_per_budget or window_tokens, or raise gpu_memory_bytes"));
  }
  return m;
}

}  // namespace kvtier::internal
