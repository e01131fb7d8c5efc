// kvtier-replay's serving loop (issue 9): a real trace's requests served by one KvCache the
// way an engine serves them. The scheduler (serving_scheduler.h) says, each iteration, which
// requests join (AddSequence), which prompt pieces are prefilled and which requests decode
// one token; this driver runs that on the cache, times it, and moves the scheduler's clock
// by the time taken, so arrivals (scaled by the trace's time_scale) meet a system that is
// as fast as kvtier is. Finished requests leave (RemoveSequence) between iterations.
//
// Accuracy is sampled as in the fixed-batch replay (MeasureSample): the chosen requests'
// keys and values are kept on the host as they are generated.
//
// Keys, values and queries come from the synthetic generator (tools/workload/synthetic_kv.h)
// with the run's seed; request i is sequence i, so each request's attention behaves as in
// the fixed-batch replay. Generating them is off the clock: an iteration's time is kvtier's
// Prefill and Decode calls until the caller's stream has finished them.
//
// Memory: every stored request has its whole prompt + output reserved in the host store at
// admission (ServingLimits::store_pages, from the cache's own host-page capacity), so the
// cache never runs out half way; the cache's slots (max_sequences) and batch (max_batch_size)
// are the other limits. A request longer than max_sequence_tokens is rejected and counted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/core/options.h"
#include "runtime/stats.h"
#include "tools/replay/replay_config.h"
#include "tools/replay/replay_run.h"
#include "tools/replay/serving_scheduler.h"
#include "tools/workload/trace.h"

namespace kvtier::replay {

struct ServingConfig {
  // Shape, index, budgets, policy, hot set, page size, backend, rates and seed; `batch` is
  // the largest decode batch (context_tokens, steps and accuracy fields are not used).
  ReplayConfig replay;
  int max_sequences = 0;            // >= batch: requests stored at once
  int64_t prefill_chunk = 0;        // prompt tokens an iteration (>= page size)
  int64_t max_sequence_tokens = 0;  // longest request (prompt + output) the cache holds
  int64_t host_memory_bytes = 0;    // the pinned host store
};

struct ServingResult {
  Options options;  // what the KvCache was created with
  std::string device;
  std::string rates_source;            // where the bound's rates came from (machine_rates.h)
  ServingLimits limits;                // what the scheduler ran with
  ServingSummary summary;              // throughput and latency on the scheduler's clock
  std::vector<RequestTimes> times;     // per request of the trace, on the scheduler's clock
  std::vector<int> batch_sizes;        // decode batch of each iteration
  std::vector<double> iteration_ends;  // and when it ended
  int64_t iterations = 0;
  double wall_seconds = 0;     // the whole loop, generation included
  double kvtier_seconds = 0;   // the iterations' timed calls (the clock's advance)
  LayerStats stats;            // Stats::Total() over the run (prefill and decode)
  double decode_bound_ms = 0;  // Stats::DecodeBoundMs() summed over the run's decode steps
  int64_t host_pages_capacity = 0;
  int64_t peak_host_pages = 0;  // the most host-store frames in use after an iteration
  int64_t gpu_bytes_reserved = 0;
  // Accuracy against exact attention, sampled: up to accuracy_samples requests with more
  // than one output token, spread over the trace, each one (layer, KV head) at its last
  // decode step (`sequence` is the request's index, `step` its decode steps before).
  std::vector<AccuracySample> samples;
  std::vector<std::string> notes;
};

// The serving flags as given; 0 means the default named.
struct ServingFlags {
  int max_sequences = 0;            // 0: twice --batch
  int64_t prefill_chunk = 2048;     // prompt tokens an iteration
  int64_t max_sequence_tokens = 0;  // 0: the trace's longest request (prompt + output)
  double host_memory_gib = 0;       // 0: room for max_sequences requests of the longest size
};

// Resolves the flags against the replay config and the trace. InvalidArgument listing every
// bad flag as "--flag=value: what is allowed".
absl::StatusOr<ServingConfig> MakeServingConfig(const ReplayConfig& replay,
                                                const ServingFlags& flags, const Trace& trace);

// The options a serving run creates its cache with: the fixed-batch replay's (MakeOptions)
// with the serving sizes. InvalidArgument (every bad field) when the runtime rejects them.
absl::StatusOr<Options> MakeServingOptions(const ServingConfig& config);

// Serves `trace` to the end. Errors: MakeServingOptions', KvCache::Create's (e.g.
// ResourceExhausted when the memory budgets cannot hold the plan), the scheduler's, the
// generator's and any KvCache call's (none expected: the scheduler keeps within the limits).
// `progress` gets ("serve", requests done, requests) after each iteration.
absl::StatusOr<ServingResult> RunServing(const ServingConfig& config, const Trace& trace,
                                         const ProgressFn& progress = nullptr);

}  // namespace kvtier::replay
