// kvtier-scaling's sweep (issue 9's batch-scaling benchmark): kvtier-replay's fixed-batch run
// (replay_run.h) at every batch size of a list, for every context and system, each system up
// to its memory limit, which is found before it is crashed into: a batch whose host store
// (HostStoreBytes) exceeds the host-memory limit is not run, and a run that the cache refuses
// for lack of memory (ResourceExhausted, e.g. a GPU plan beyond the device's memory) ends that
// system's sweep at the last batch that ran. The results print as JSON (for
// scripts/plot_scaling.py, which draws the plots), CSV and a table.
//
// Systems are kvtier configurations by name (ScalingSystems): the page-bounds and wave
// indexes, the wave index with the rest estimated, and page bounds with its page cache off.
// GPU-resident baselines (sparse and full attention) join when kvtier-replay has them.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tools/replay/replay_config.h"
#include "tools/replay/replay_report.h"
#include "tools/replay/replay_run.h"

namespace kvtier::replay {

// A named kvtier configuration: what it sets on the sweep's base flags.
struct ScalingSystem {
  const char* name;
  const char* index;         // ReplayFlags::index
  const char* policy;        // ReplayFlags::policy; "" keeps the base flags'
  double estimate_fraction;  // ReplayFlags::estimate_fraction (1: the rest)
  const char* what;          // what it is, for the table
};

// page_bounds, wave, wave_rest, page_bounds_nocache.
absl::Span<const ScalingSystem> ScalingSystems();
// "page_bounds, wave, ..." for help texts and errors.
std::string ScalingSystemNames();

struct ScalingPlan {
  // Shape, budget, hot set, steps, backend, rates, seed... of every run; batch, context, index,
  // policy and estimate_fraction are set per run.
  ReplayFlags base;
  std::vector<int64_t> contexts;     // prompt tokens, each >= 1
  std::vector<int> batches;          // ascending, each >= 1
  std::vector<std::string> systems;  // names of ScalingSystems()
  int64_t host_memory_bytes = 0;     // the host store's limit, > 0
};

// InvalidArgument naming what is wrong: no contexts, batches or systems, a batch list that is
// not ascending, an unknown system, a limit <= 0.
absl::Status ValidateScalingPlan(const ScalingPlan& plan);

struct ScalingPoint {
  int64_t context = 0;
  std::string system;
  int batch = 0;
  int64_t host_store_bytes = 0;  // HostStoreBytes of the run's configuration
  int64_t gpu_bytes_reserved = 0;
  ReplaySummary summary;
};

// Where a (context, system) sweep stopped: the largest batch that ran (0: none) and why no
// larger one did ("" when every listed batch ran).
struct ScalingLimit {
  int64_t context = 0;
  std::string system;
  int largest_batch = 0;
  std::string reason;
};

struct ScalingResult {
  ScalingPlan plan;
  std::string device;
  std::string rates_source;
  std::vector<ScalingPoint> points;  // context-major, then system, then batch
  std::vector<ScalingLimit> limits;  // one per (context, system)
};

// Runs the sweep. Errors: the plan's (ValidateScalingPlan), a configuration the flags cannot
// make (MakeReplayConfig's message, naming the context, system and batch), and any failure
// of a run other than running out of memory.
absl::StatusOr<ScalingResult> RunScaling(const ScalingPlan& plan,
                                         const ProgressFn& progress = nullptr);

// {"device", "rates_source", "host_memory_bytes", "points": [{"context", "system", "batch",
// "tokens_per_second", "mean_step_ms", "bound_step_ms", "hit_rate", "pcie_bytes_per_step",
// "mean_output_error", "mean_mass_captured", "plan_ms", "select_ms", "resolve_ms", "load_ms",
// "attend_ms", "phase_step_ms", "host_store_bytes", "gpu_bytes_reserved"}, ...],
// "limits": [{"context", "system", "largest_batch", "reason"}, ...]}.
void PrintScalingJson(const ScalingResult& result, std::ostream& out);
// One row a point, the JSON points' keys as the header.
void PrintScalingCsv(const ScalingResult& result, std::ostream& out);
// A table a context: a row a (system, batch), then where each system stopped.
void PrintScalingTable(const ScalingResult& result, std::ostream& out);

}  // namespace kvtier::replay
