#include "runtime/stats.h"

#include <algorithm>

namespace kvtier {

void LayerStats::Add(const LayerStats& o) {
  decode_steps += o.decode_steps;
  decode_items += o.decode_items;
  prefill_tokens += o.prefill_tokens;
  pages_selected += o.pages_selected;
  page_hits += o.page_hits;
  page_misses += o.page_misses;
  bytes_loaded += o.bytes_loaded;
  bytes_written_back += o.bytes_written_back;
  prefill_bytes_stored += o.prefill_bytes_stored;
  hot_bytes_read += o.hot_bytes_read;
  selected_bytes_read += o.selected_bytes_read;
  summary_bytes_read += o.summary_bytes_read;
  estimate_bytes_read += o.estimate_bytes_read;
  plan_ms += o.plan_ms;
  select_ms += o.select_ms;
  resolve_ms += o.resolve_ms;
  load_ms += o.load_ms;
  attend_ms += o.attend_ms;
  step_ms += o.step_ms;
}

LayerStats Stats::Total() const {
  LayerStats total;
  for (const LayerStats& layer : layers) total.Add(layer);
  return total;
}

double Stats::DecodeBoundMs() const {
  if (hbm_bytes_per_second <= 0 || pcie_bytes_per_second <= 0) return 0;
  double ms = 0;
  for (const LayerStats& layer : layers) {
    const double hbm = static_cast<double>(layer.hbm_bytes()) / hbm_bytes_per_second;
    const double pcie = static_cast<double>(layer.pcie_bytes()) / pcie_bytes_per_second;
    ms += 1e3 * std::max(hbm, pcie);
  }
  return ms;
}

}  // namespace kvtier
