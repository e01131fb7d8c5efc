// Statistics of a KvCache: plain counters, per layer, accumulated since creation (or the last
// KvCache::ResetStats). Byte counts are what crossed PCIe or was read from HBM; times are
// measured on the device with CUDA events (host backend: wall clock) when
// Options::collect_timings is on, else 0.
#pragma once

#include <cstdint>
#include <vector>

namespace kvtier {

struct LayerStats {
  int64_t decode_steps = 0;          // Decode calls of this layer
  int64_t decode_items = 0;          // (sequence, KV head) pairs decoded, summed over steps
  int64_t prefill_tokens = 0;        // tokens stored by Prefill
  int64_t pages_selected = 0;        // by the index, over all items and steps
  int64_t page_hits = 0;             // selected pages found in the GPU page cache
  int64_t page_misses = 0;           // selected pages loaded from the host store
  int64_t bytes_loaded = 0;          // host -> GPU: misses (K and V)
  int64_t bytes_written_back = 0;    // GPU -> host: pages completed by decode steps
  int64_t prefill_bytes_stored = 0;  // GPU -> host: pages stored by Prefill
  int64_t hot_bytes_read = 0;        // HBM: hot-set K/V read by attention
  int64_t selected_bytes_read = 0;   // HBM: selected K/V read by attention
  int64_t summary_bytes_read = 0;    // HBM: index summaries scored
  int64_t estimate_bytes_read = 0;   // HBM: the estimation zone's summaries (wave index)
  // Phase times of the decode steps (collect_timings), milliseconds summed over steps.
  double plan_ms = 0;  // upload + device planning + append + summary
  double select_ms = 0;
  double resolve_ms = 0;
  double load_ms = 0;    // miss load on the load stream
  double attend_ms = 0;  // hot + selected attention and merge
  double step_ms = 0;    // whole Decode calls, first to last kvtier operation

  int64_t hbm_bytes() const {
    return hot_bytes_read + selected_bytes_read + summary_bytes_read + estimate_bytes_read;
  }
  int64_t pcie_bytes() const { return bytes_loaded + bytes_written_back; }
  double hit_rate() const {
    return pages_selected > 0 ? static_cast<double>(page_hits) / pages_selected : 0.0;
  }
  void Add(const LayerStats& other);
};

struct Stats {
  std::vector<LayerStats> layers;  // [num_layers]
  // Rates the bound uses (Options::hbm_bytes_per_second, pcie_bytes_per_second).
  double hbm_bytes_per_second = 0;
  double pcie_bytes_per_second = 0;
  // Memory in use and capacity.
  int64_t host_pages_used = 0;  // host-store frames (a K and a V page each)
  int64_t host_pages_capacity = 0;
  int64_t gpu_bytes_reserved = 0;  // everything Create allocated on the device
  int64_t num_sequences = 0;

  LayerStats Total() const;
  // ARCHITECTURE.md's lower bound of the decode time over the counted traffic, in
  // milliseconds: max(HBM bytes / HBM rate, PCIe bytes / PCIe rate) per layer, summed (this
  // takes the maximum over a layer's whole run, which never exceeds the sum of per-step
  // maxima: a valid lower bound, as loose as the steps are uneven).
  double DecodeBoundMs() const;
};

}  // namespace kvtier
