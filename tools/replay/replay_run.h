// kvtier-replay's driver: runs a KvCache the way an inference engine would, on the seeded
// synthetic workload (tools/workload/synthetic_kv.h), and returns what it measured.
//
// One run: create the cache; add `batch` sequences; prefill every layer of each with
// `context` prompt tokens (host tensors, in chunks); then `steps` decode steps, each one
// Decode call per layer for the whole batch, in layer order. Each step's queries and new K/V
// are generated (and, on the CUDA backend, copied to device memory) before the step's clock
// starts, so a step's time is kvtier's: the wall clock from the first layer's Decode until the
// caller's stream has finished the last one. Stats are reset after prefill, so the counters
// cover the decode steps only.
//
// Accuracy is sampled, not exhaustive: at AccuracySteps(config), for `accuracy_samples`
// (sequence, layer, KV head) triples drawn once (seeded) for the run, KvCache::Inspect gives
// the tokens the runtime attended exactly (hot set and selected positions), and the host
// recomputes exact attention over every token of the triple in double precision from the
// generator's keys, values and queries (tools/common/attention_accuracy.h, the measure
// kvtier-accuracy reports too).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/options.h"
#include "runtime/core/sequence_id.h"
#include "runtime/kv_cache.h"
#include "runtime/stats.h"
#include "tools/replay/replay_config.h"

namespace kvtier::replay {

// One (sequence, layer, KV head) at one decode step, against exact attention. Masses and
// errors are over the KV head's G query heads.
struct AccuracySample {
  int step = 0;      // decode step (0-based)
  int sequence = 0;  // index in the batch
  int layer = 0;
  int kv_head = 0;
  int64_t tokens = 0;            // tokens attended: context + step + 1
  int64_t captured_tokens = 0;   // of them, in the hot set or a selected page
  int selected_pages = 0;        // KvCache::Inspect of this step
  int64_t estimated_tokens = 0;  // tokens the estimation zone stood for (index wave)
  int hits = 0;
  int misses = 0;
  // Share of the exact attention mass (softmax over all tokens) on the captured tokens: the
  // mean and the minimum over the G query heads.
  double mass_captured = 0;
  double min_mass_captured = 0;
  // The same mean for the oracle: the hot set plus the selected_pages cold pages of largest
  // exact mass (what a perfect index could capture at this budget); NaN when not measured.
  double oracle_mass_captured = std::numeric_limits<double>::quiet_NaN();
  // The largest over the G heads of |out - exact| / |exact| (L2 over head_dim), where `out`
  // is what Decode wrote and `exact` full attention.
  double output_error = 0;
  // The same against attention restricted to the captured tokens: what the kernels owe given
  // the selection (rounding only; a large value means the replay's idea of the hot set or
  // the runtime's attention is off).
  double restricted_error = 0;
};

struct ReplayResult {
  ReplayConfig config;
  Options options;     // what the KvCache was created with
  std::string device;  // "NVIDIA H100 80GB HBM3" or "host (2 threads)"
  double create_seconds = 0;
  double prefill_seconds = 0;  // wall clock, prompt generation included
  int64_t prefill_tokens = 0;  // over all sequences and layers (Stats)
  int64_t prefill_bytes_stored = 0;
  std::vector<double> step_ms;  // wall clock of each decode step, all layers
  LayerStats decode;            // Stats::Total() over the decode steps
  double decode_bound_ms = 0;   // Stats::DecodeBoundMs() over the decode steps
  int64_t gpu_bytes_reserved = 0;
  int64_t host_pages_used = 0;
  int64_t host_pages_capacity = 0;
  std::vector<AccuracySample> samples;
  std::vector<std::string> notes;  // things a reader should know about this run
};

// Where a sampled (sequence, layer, KV head) stands right after a Decode of `layer` that
// included the sequence: its G query rows and the output Decode wrote ([G, D] each, host), and
// every token's K and V so far (token t's KV head row at k + t * kv_row_stride).
struct SampleInputs {
  SeqId seq = 0;
  int layer = 0;
  int kv_head = 0;
  int64_t tokens = 0;  // stored after the step's append
  const uint16_t* q = nullptr;
  const float* out = nullptr;
  const uint16_t* k = nullptr;
  const uint16_t* v = nullptr;
  int64_t kv_row_stride = 0;
};
// Measures it against exact attention (KvCache::Inspect for what was attended; the oracle at
// the same page count). `derived` is set when Inspect gave no positions (ExactTokens).
absl::StatusOr<AccuracySample> MeasureSample(const KvCache& cache, const Options& options,
                                             const SampleInputs& in, bool* derived);

// Called after each prefill chunk ("prefill", chunks done, chunks in all) and each decode
// step ("decode", steps done, steps), from the calling thread.
using ProgressFn = std::function<void(absl::string_view phase, int64_t done, int64_t total)>;

// Runs the replay. Errors: MakeOptions' and KvCache::Create's (e.g. ResourceExhausted when
// the device budget cannot hold the plan), any KvCache call's, the workload generator's, and
// CUDA failures (Internal / Unavailable) for device buffers and copies.
absl::StatusOr<ReplayResult> RunReplay(const ReplayConfig& config,
                                       const ProgressFn& progress = nullptr);

}  // namespace kvtier::replay
