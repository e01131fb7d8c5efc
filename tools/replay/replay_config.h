// kvtier-replay's configuration: the flag values as given (ReplayFlags), checked and resolved
// into what a run uses (ReplayConfig: a model shape from a preset or explicit sizes, the
// backend chosen, defaults that depend on it filled in), and the kvtier::Options a replay
// creates its KvCache with, sized from the workload.
//
// Flags are checked as a whole: one call reports every bad flag ("--batch=0: must be >= 1;
// --policy=fifo: allowed lru, score, last or off"), as the runtime's ValidateOptions does for
// options.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "runtime/core/options.h"
#include "tools/common/tool_flags.h"

namespace kvtier::replay {

// A model's attention shape, selectable by name (--model).
struct ModelPreset {
  const char* name;
  int num_layers;
  int num_query_heads;
  int num_kv_heads;
  int head_dim;
};

// llama-3-8b (32 layers, 32 query heads, 8 KV heads, D 128) and qwen2.5-7b (28, 28, 4, 128).
absl::Span<const ModelPreset> ModelPresets();
// "llama-3-8b, qwen2.5-7b" for help texts and errors.
std::string ModelPresetNames();

// What the page cache keeps (--policy).
enum class PolicyChoice : uint8_t {
  kLru,    // CachePolicy::kLeastRecentlyUsed
  kScore,  // CachePolicy::kLowestScore (evict the lowest accumulated attention mass)
  kLast,   // CachePolicy::kLastSelection (cache = last step's selection)
  kOff,    // CachePolicy::kNone: no page cache, every selected page loaded every step
};
const char* PolicyChoiceName(PolicyChoice policy);  // "lru", "score", "last", "off"

// The flags as the user gave them. For the shape fields, 0 means "from --model"; for
// `steps` and `gpu_memory_gib`, 0 means "the backend's default" (ReplayConfig says which).
struct ReplayFlags {
  std::string model = "llama-3-8b";  // a preset name, or "custom" (all four sizes given)
  int layers = 0;
  int query_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  std::string dtype = "bf16";         // bf16 or fp16
  int64_t context = 4096;             // prompt tokens per sequence
  int batch = 4;                      // sequences, all decoded together
  int steps = 0;                      // timed decode steps; 0: 16 on the host backend, 128 on CUDA
  int warmup_steps = 1;               // decode steps run first, untimed and left out of the stats
  std::string index = "page_bounds";  // the block index: page_bounds or wave
  int budget = 64;                    // pages the index selects per (sequence, layer, KV head)
  double mass_target = 0;             // 0: select `budget` pages; in (0, 1]: the fewest reaching it
  // The estimation zone (index wave only): pages ranked below the retrieved ones that are
  // estimated instead of attended. At most one of the two may be non-zero; the fraction is of
  // the cold (offloaded) tokens a sequence holds after the last step, rounded up to pages.
  int estimate_pages = 0;
  double estimate_fraction = 0;
  bool value_shift = true;  // estimates shift mean values (Options::budget.value_shift)
  std::string policy = "score";
  double cache_slots = 4.0;  // page-cache slots per (sequence, layer, KV head) / budget
  double score_decay = 0.99;
  int sink = 64;
  int window = 1024;
  int page_size = 16;
  std::string backend = "auto";  // auto, cuda or host
  int device = 0;
  uint64_t seed = 1;
  double gpu_memory_gib = 0;  // 0: 90% of the device's free memory (CUDA), 64 GiB (host)
  double hbm_gbps = 0;        // 0: from `rates`, else Options' default rate
  double pcie_gbps = 0;       // 0: from `rates`, else Options' default rate
  // A kvtier-probe --json report (machine_rates.h) for the rates the flags above leave unset;
  // "" for none (kvtier-replay's main fills in the default path when a report is there).
  std::string rates;
  // Rates measured at start (kvtier-replay's main measures them briefly when the flags and
  // `rates` leave one unset and a CUDA device runs the replay; 0: not measured), for the rates
  // that neither the flags nor `rates` give, and their source for the report.
  double measured_hbm_bytes_per_second = 0;
  double measured_pcie_bytes_per_second = 0;
  std::string measured_rates_source;
  int accuracy_samples = 8;    // (sequence, layer, KV head) triples checked against exact
  int accuracy_steps = 4;      // decode steps at which they are checked (spread, last included)
  bool phase_timings = false;  // Options::collect_timings
};

// What a replay runs: every field resolved and checked.
struct ReplayConfig {
  std::string model;  // the preset's name, or "custom"
  ModelShape shape;
  int64_t context_tokens = 0;
  int batch = 0;
  int steps = 0;         // timed decode steps
  int warmup_steps = 0;  // decode steps before them, untimed, not in the stats
  IndexKind index = IndexKind::kPageBounds;
  int budget_pages = 0;
  double mass_target = 0;
  int estimate_pages = 0;      // Options::budget.estimate_pages, resolved from either flag
  bool estimate_rest = false;  // Options::budget.estimate_rest: --estimate_fraction=1
  bool value_shift = true;     // Options::budget.value_shift
  PolicyChoice policy = PolicyChoice::kScore;
  double cache_slots_per_budget = 0;
  float score_decay = 0;
  int sink_tokens = 0;
  int window_tokens = 0;
  int page_size = 0;
  Backend backend = Backend::kHost;
  bool backend_auto = false;  // chosen by --backend=auto
  int device_id = 0;
  uint64_t seed = 0;
  int64_t gpu_memory_bytes = 0;
  double hbm_bytes_per_second = 0;
  double pcie_bytes_per_second = 0;
  // Where each rate came from, for the report: "--hbm_gbps", "kvtier-probe report PATH", the
  // measurement at start, or the built-in constants'.
  std::string hbm_rate_source;
  std::string pcie_rate_source;
  int accuracy_samples = 0;
  int accuracy_steps = 0;
  bool phase_timings = false;

  // Tokens a sequence holds after the last step.
  int64_t final_tokens() const { return context_tokens + warmup_steps + steps; }
};

// What the machine offers, for resolving "auto" (tests pass their own).
using tools::DeviceFacts;
using tools::QueryDeviceFacts;

// Checks every flag and resolves presets and defaults. InvalidArgument listing every bad flag
// as "--flag=value: what is allowed" separated by "; "; FailedPrecondition for
// --backend=cuda without CUDA (build or device); MakeOptions' errors (the runtime's own
// limits). The result passes MakeOptions.
absl::StatusOr<ReplayConfig> MakeReplayConfig(const ReplayFlags& flags, const DeviceFacts& facts);

// Pinned host-store bytes for the whole workload: every page of every (sequence, layer, KV
// head) at final_tokens, K and V, plus one spare page per (sequence, layer, KV head) and
// 1/16 + 64 MiB of slack, rounded up to a MiB.
int64_t HostStoreBytes(const ReplayConfig& config);

// The KvCache options of a run: the shape, budget, policy, hot set, page size, backend and
// rates of `config`; host memory from HostStoreBytes; max_sequences = max_batch_size =
// batch; max_sequence_tokens = final_tokens rounded up to a page; prefill chunks of up to
// 1024 tokens. InvalidArgument (ValidateOptions' message) when the runtime rejects them.
absl::StatusOr<Options> MakeOptions(const ReplayConfig& config);

// Tokens generated and handed to one Prefill call: a multiple of the page size.
int PrefillChunkTokens(const ReplayConfig& config);

// The timed decode steps (0-based, warm-up steps not counted) at which accuracy is sampled:
// `accuracy_steps` of them spread evenly over [0, steps), the last step always included, ascending
// and distinct.
std::vector<int> AccuracySteps(const ReplayConfig& config);

}  // namespace kvtier::replay
