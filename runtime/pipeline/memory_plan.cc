#include "runtime/pipeline/memory_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

IndexConfig MakeIndexConfig(const Options& o) {
  IndexConfig c;
  c.dtype = o.shape.dtype;
  c.head_dim = o.shape.head_dim;
  c.group_size = o.shape.group_size();
  c.page_size = o.page_size;
  c.max_pages = static_cast<int>((o.max_sequence_tokens + o.page_size - 1) / o.page_size);
  c.max_items = o.max_batch_size * o.shape.num_kv_heads;
  c.softmax_scale = o.EffectiveSoftmaxScale();
  c.budget_pages = o.budget.max_pages;
  c.mass_target = o.budget.mass_target;
  c.estimate_pages = o.budget.estimate_pages;
  c.estimate_rest = o.budget.estimate_rest;
  c.value_shift = o.budget.value_shift;
  c.max_segment_tokens = o.max_prefill_chunk_tokens;
  c.max_segments = o.shape.num_kv_heads;
  return c;
}

absl::StatusOr<MemoryPlan> PlanMemory(const Options& o, const BlockIndex& index) {
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
  if (m.sink_pages > m.max_pages) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_tokens = ", o.sink_tokens, ": more than max_sequence_tokens = ",
                     o.max_sequence_tokens, " (the sink must fit in a sequence)"));
  }
  m.page_bytes = PageBytes(shape, o.page_size);
  m.summary_page_bytes = index.layout().bytes_per_page;
  m.scan_page_bytes = index.scan_bytes_per_page();
  m.estimate_page_bytes = index.estimate_bytes_per_page();
  m.rows = int64_t{o.max_sequences} * shape.num_layers * hk;
  m.batch_items = static_cast<int32_t>(o.max_batch_size * hk);
  m.prefill_pages = o.max_prefill_chunk_tokens / o.page_size + 1;

  // Per item (row).
  const int64_t hot_per_row = int64_t{m.sink_pages + m.ring_pages} * 2 * m.page_bytes;
  const int64_t cache_per_row = int64_t{m.cache_slots} * 2 * m.page_bytes;
  const int64_t summary_per_row = int64_t{m.max_pages} * m.summary_page_bytes;
  const int64_t directory_per_row = int64_t{m.cache_slots} * 12;
  m.hot_bytes = AlignUp(m.rows * hot_per_row);
  m.cache_bytes = AlignUp(m.rows * cache_per_row);
  m.summary_bytes = AlignUp(m.rows * summary_per_row);
  PageCacheGeometry& cg = m.page_cache;
  cg.rows = m.rows;
  cg.num_slots = m.cache_slots;
  cg.max_pages = m.max_pages;
  cg.page_size = m.page_size;
  cg.max_selected = m.max_selected;
  cg.max_items = m.batch_items;
  cg.policy = o.cache_policy;
  cg.score_decay = o.score_decay;
  m.directory_bytes = PageCache::DirectoryBytes(cg);
  m.per_sequence_device_bytes = int64_t{shape.num_layers} * hk *
                                (hot_per_row + cache_per_row + summary_per_row + directory_per_row);

  // The step arrays per layer and the shared decode scratch, sized by the description that
  // carves them (step_arrays.h).
  StepGeometry& sg = m.step;
  sg.max_batch = o.max_batch_size;
  sg.batch_items = m.batch_items;
  sg.group_size = static_cast<int32_t>(g);
  sg.head_dim = static_cast<int32_t>(d);
  sg.dtype_bytes = dsize;
  sg.page_size = o.page_size;
  sg.sink_pages = m.sink_pages;
  sg.window_pages = m.window_pages;
  sg.max_selected = m.max_selected;
  sg.zone_stride = index.zone_stride();
  sg.estimates = index.estimates();
  sg.summary_arrays = index.layout().arrays;
  sg.attention_workspace_bytes = PagedDecodeWorkspaceBytes(
      m.batch_items, static_cast<int>(g), static_cast<int>(d), kMaxAttentionSplits);
  sg.select_workspace_bytes = index.workspace_bytes();
  {
    Carver count(nullptr);
    LayerArrays layer;
    CarveLayerArrays(count, sg, layer);
    m.per_layer_step_bytes = count.used();
    m.step_bytes = m.per_layer_step_bytes * shape.num_layers;
  }
  {
    Carver count(nullptr);
    DecodeScratch scratch;
    CarveDecodeScratch(count, sg, scratch);
    m.scratch_bytes = count.used();
  }

  // Prefill staging, two buffers.
  PrefillGeometry& pg = m.prefill;
  pg.num_kv_heads = static_cast<int32_t>(hk);
  pg.prefill_pages = m.prefill_pages;
  pg.chunk_tokens = o.max_prefill_chunk_tokens;
  pg.row_bytes = hk * d * dsize;
  pg.page_bytes = m.page_bytes;
  pg.summary_arrays = index.layout().arrays;
  pg.orders_segments = index.orders_segments();
  pg.segment_workspace_bytes = index.segment_workspace_bytes();
  {
    Carver count(nullptr);
    PrefillBuffer buffer;
    CarvePrefillBuffer(count, pg, buffer);
    m.prefill_bytes = 2 * count.used();
  }

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
