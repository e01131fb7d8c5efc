// How kvtier-replay shows a ReplayResult: a table for people, JSON for scripts (stable keys,
// documented below), and the one-line progress bar it draws on a terminal.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/strings/string_view.h"
#include "tools/replay/replay_run.h"

namespace kvtier::replay {

// The numbers a report shows, derived from a ReplayResult. Per-step values divide the decode
// counters by the timed steps; accuracy values summarise the samples (0 when there are none;
// a NaN output error, from an output Decode left unwritten, stays NaN).
struct ReplaySummary {
  int steps = 0;                 // timed decode steps
  double decode_seconds = 0;     // sum of step times
  double tokens_per_second = 0;  // batch * steps / decode_seconds
  double mean_step_ms = 0;
  double median_step_ms = 0;
  double min_step_ms = 0;
  double max_step_ms = 0;
  double bound_step_ms = 0;  // Stats::DecodeBoundMs() / steps
  double hit_rate = 0;       // page hits / pages selected
  double pages_selected_per_step = 0;
  double page_hits_per_step = 0;
  double page_misses_per_step = 0;
  double pcie_bytes_per_step = 0;  // loaded + written back
  double bytes_loaded_per_step = 0;
  double bytes_written_back_per_step = 0;
  double hbm_bytes_per_step = 0;
  // Phase times per step (Options::collect_timings; else 0).
  double plan_ms = 0, select_ms = 0, resolve_ms = 0, load_ms = 0, attend_ms = 0, phase_step_ms = 0;
  int accuracy_samples = 0;
  double mean_mass_captured = 0;
  double mean_oracle_mass_captured = 0;  // NaN when a sample lacks it
  double min_mass_captured = 0;          // over samples and query heads
  double mean_output_error = 0;
  double max_output_error = 0;
  double max_restricted_error = 0;   // includes the estimate's error with an estimation zone
  double mean_estimated_tokens = 0;  // per sample: tokens the estimation zone stood for
};

ReplaySummary Summarize(const ReplayResult& result);

// "1 GiB", "512 B", "4 KiB", "1.5 MiB".
std::string FormatBytes(double bytes);

// The human-readable report: what ran, then throughput, traffic, time against the bound, and
// accuracy (with one line per sample when `per_sample`).
void PrintTable(const ReplayResult& result, std::ostream& out, bool per_sample = false);

// One JSON object: {"config": {...}, "options": {...}, "device": ..., "setup": {...},
// "decode": {...summary, "step_ms": [...]}, "accuracy": {"num_samples", ...summary,
// "samples": [...]},
// "notes": [...]}. Byte counts are numbers of bytes, times milliseconds unless the key says
// "_seconds"; NaN and infinity print as null.
void PrintJson(const ReplayResult& result, std::ostream& out);

// "decode  [##########..........]  16/32" padded to `width` columns, for a terminal line
// redrawn with '\r'; with `elapsed_seconds` (>= 0) since the phase began, and work left,
// "  ETA 1m05s" after the count (the rate so far carried on).
std::string FormatProgress(absl::string_view phase, int64_t done, int64_t total, int width = 60,
                           double elapsed_seconds = -1);
// 42 -> "42s", 65 -> "1m05s", 3720 -> "1h02m".
std::string FormatEta(double seconds);

}  // namespace kvtier::replay
