#include "tools/replay/replay_config.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status.h"
#include "tools/common/attention_accuracy.h"
#include "tools/replay/machine_rates.h"

namespace kvtier::replay {
namespace {

constexpr ModelPreset kPresets[] = {
    {"llama-3-8b", 32, 32, 8, 128},
    {"qwen2.5-7b", 28, 28, 4, 128},
};

constexpr int kDefaultHostSteps = 16;
constexpr int kDefaultCudaSteps = 128;
constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kMiB = int64_t{1} << 20;
// Without a reading of the device's free memory: what an 80 GB H100 can spare.
constexpr int64_t kFallbackGpuBytes = 70 * kGiB;
// The host backend keeps its "device" buffers in host memory; the budget only caps the plan.
constexpr int64_t kHostBackendGpuBytes = 64 * kGiB;
constexpr int kPrefillChunkTokens = 1024;  // a multiple of every supported page size
constexpr char kBuiltInRates[] =
    "built-in (an H100's; kvtier-probe --json_out=FILE, then --rates=FILE, for this machine's)";

// The bound's rates: each flag given wins; the rest from the kvtier-probe report, if any;
// else the runtime's built-in constants. The report's errors name the file.
absl::Status ResolveRates(const ReplayFlags& flags, ReplayConfig* c);

// Collects "--flag=value: allowed ..." problems, like options.cc's Problems.
class Problems {
 public:
  template <typename T>
  void Add(absl::string_view flag, const T& value, absl::string_view allowed) {
    problems_.push_back(absl::StrCat("--", flag, "=", value, ": ", allowed));
  }
  void AddText(std::string text) { problems_.push_back(std::move(text)); }
  bool empty() const { return problems_.empty(); }
  absl::Status ToStatus() const {
    if (problems_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("invalid kvtier-replay flags: ", absl::StrJoin(problems_, "; ")));
  }

 private:
  std::vector<std::string> problems_;
};

const ModelPreset* FindPreset(absl::string_view name) {
  for (const ModelPreset& preset : kPresets) {
    if (name == preset.name) return &preset;
  }
  return nullptr;
}

// A shape field: the flag when set (> 0), else the preset's value (0 without a preset).
int ShapeField(int flag, const ModelPreset* preset, int ModelPreset::*field) {
  if (flag > 0) return flag;
  return preset != nullptr ? preset->*field : 0;
}

bool ParsePolicy(absl::string_view name, PolicyChoice* policy) {
  for (PolicyChoice p :
       {PolicyChoice::kLru, PolicyChoice::kScore, PolicyChoice::kLast, PolicyChoice::kOff}) {
    if (name == PolicyChoiceName(p)) {
      *policy = p;
      return true;
    }
  }
  return false;
}

// "1.5" for 1.5, "2" for 2.0: flag values as the user would write them.
std::string Num(double value) { return absl::StrCat(value); }

}  // namespace

absl::Span<const ModelPreset> ModelPresets() { return kPresets; }

std::string ModelPresetNames() {
  std::vector<std::string> names;
  for (const ModelPreset& preset : kPresets) names.push_back(preset.name);
  return absl::StrJoin(names, ", ");
}

const char* PolicyChoiceName(PolicyChoice policy) {
  switch (policy) {
    case PolicyChoice::kLru:
      return "lru";
    case PolicyChoice::kScore:
      return "score";
    case PolicyChoice::kLast:
      return "last";
    case PolicyChoice::kOff:
      return "off";
  }
  return "unknown";
}

absl::StatusOr<ReplayConfig> MakeReplayConfig(const ReplayFlags& flags, const DeviceFacts& facts) {
  Problems p;
  ReplayConfig c;

  // Model shape: a preset, optionally with sizes overridden, or "custom" with all four.
  const ModelPreset* preset = FindPreset(flags.model);
  const bool custom = flags.model == "custom";
  if (preset == nullptr && !custom) {
    p.Add("model", flags.model, absl::StrCat("allowed ", ModelPresetNames(), " or custom"));
  }
  struct SizeFlag {
    const char* name;
    int value;
    int ModelPreset::*field;
  };
  const SizeFlag sizes[] = {{"layers", flags.layers, &ModelPreset::num_layers},
                            {"query_heads", flags.query_heads, &ModelPreset::num_query_heads},
                            {"kv_heads", flags.kv_heads, &ModelPreset::num_kv_heads},
                            {"head_dim", flags.head_dim, &ModelPreset::head_dim}};
  std::vector<std::string> overridden;
  bool sizes_ok = true;
  for (const SizeFlag& size : sizes) {
    if (size.value < 0) {
      p.Add(size.name, size.value, "must be >= 1 (or 0: from --model)");
      sizes_ok = false;
    } else if (custom && size.value == 0) {
      p.Add(size.name, size.value, "must be given (>= 1) with --model=custom");
      sizes_ok = false;
    } else if (preset != nullptr && size.value > 0 && size.value != preset->*size.field) {
      overridden.push_back(absl::StrCat(size.name, " ", size.value));
    }
  }
  c.model = preset != nullptr ? preset->name : "custom";
  if (!overridden.empty()) absl::StrAppend(&c.model, " (", absl::StrJoin(overridden, ", "), ")");
  c.shape.num_layers = ShapeField(flags.layers, preset, &ModelPreset::num_layers);
  c.shape.num_query_heads = ShapeField(flags.query_heads, preset, &ModelPreset::num_query_heads);
  c.shape.num_kv_heads = ShapeField(flags.kv_heads, preset, &ModelPreset::num_kv_heads);
  c.shape.head_dim = ShapeField(flags.head_dim, preset, &ModelPreset::head_dim);
  if (flags.dtype == "bf16") {
    c.shape.dtype = DType::kBF16;
  } else if (flags.dtype == "fp16") {
    c.shape.dtype = DType::kFP16;
  } else {
    p.Add("dtype", flags.dtype, "allowed bf16 or fp16");
  }
  if (sizes_ok && (preset != nullptr || custom)) {
    if (absl::Status shape = ValidateModelShape(c.shape); !shape.ok()) {
      p.AddText(
          absl::StrCat("model shape from --model/--layers/--query_heads/--kv_heads/"
                       "--head_dim: ",
                       shape.message()));
    }
  }

  // Workload.
  if (flags.context < 1) p.Add("context", flags.context, "must be >= 1 token");
  if (flags.batch < 1) p.Add("batch", flags.batch, "must be >= 1 sequence");
  if (flags.steps < 0) p.Add("steps", flags.steps, "must be >= 1 (or 0: the backend's default)");
  if (flags.warmup_steps < 0) p.Add("warmup_steps", flags.warmup_steps, "must be >= 0");
  c.warmup_steps = flags.warmup_steps;
  c.context_tokens = flags.context;
  c.batch = flags.batch;
  c.seed = flags.seed;

  // Selection and cache.
  const bool index_ok = tools::ParseIndexKind(flags.index, &c.index);
  if (!index_ok) p.Add("index", flags.index, "allowed page_bounds or wave");
  const bool page_bounds = index_ok && c.index == IndexKind::kPageBounds;
  if (flags.budget < 1) p.Add("budget", flags.budget, "must be >= 1 page");
  if (!(flags.mass_target >= 0 && flags.mass_target <= 1)) {
    p.Add("mass_target", Num(flags.mass_target), "must be 0 (top-budget by count) or in (0, 1]");
  } else if (page_bounds && flags.mass_target > 0) {
    p.Add("mass_target", Num(flags.mass_target),
          "the page_bounds index selects by count only (a bound is not a mass): use 0, or "
          "--index=wave");
  }
  c.budget_pages = flags.budget;
  c.mass_target = flags.mass_target;
  const bool estimate_pages_ok = flags.estimate_pages >= 0;
  const bool estimate_fraction_ok = flags.estimate_fraction >= 0 && flags.estimate_fraction <= 1;
  if (!estimate_pages_ok) {
    p.Add("estimate_pages", flags.estimate_pages, "must be >= 0 (0: no estimation zone)");
  }
  if (!estimate_fraction_ok) {
    p.Add("estimate_fraction", Num(flags.estimate_fraction),
          "must be in [0, 1] (a share of the cold tokens; 0: no estimation zone)");
  }
  if (estimate_pages_ok && estimate_fraction_ok && flags.estimate_pages > 0 &&
      flags.estimate_fraction > 0) {
    p.AddText(absl::StrCat("--estimate_pages=", flags.estimate_pages, " and --estimate_fraction=",
                           Num(flags.estimate_fraction), ": give at most one of them"));
  } else if (page_bounds && (flags.estimate_pages > 0 || flags.estimate_fraction > 0)) {
    if (flags.estimate_pages > 0) {
      p.Add("estimate_pages", flags.estimate_pages,
            "the page_bounds index has no estimation zone: use 0, or --index=wave");
    } else {
      p.Add("estimate_fraction", Num(flags.estimate_fraction),
            "the page_bounds index has no estimation zone: use 0, or --index=wave");
    }
  }
  if (!ParsePolicy(flags.policy, &c.policy)) {
    p.Add("policy", flags.policy, "allowed lru, score, last or off");
  }
  if (!(flags.cache_slots >= 1 && std::isfinite(flags.cache_slots))) {
    p.Add("cache_slots", Num(flags.cache_slots),
          "must be >= 1 (slots per budget: the cache holds at least one step's selection)");
  }
  c.cache_slots_per_budget = flags.cache_slots;
  if (!(flags.score_decay > 0 && flags.score_decay <= 1)) {
    p.Add("score_decay", Num(flags.score_decay), "must be in (0, 1]");
  }
  c.score_decay = static_cast<float>(flags.score_decay);

  // Pages and hot set.
  const bool page_ok = IsSupportedPageSize(flags.page_size);
  if (!page_ok) p.Add("page_size", flags.page_size, "allowed 16, 32 or 64");
  if (flags.sink < 0 || (page_ok && flags.sink % flags.page_size != 0)) {
    p.Add("sink", flags.sink,
          absl::StrCat("must be a multiple of --page_size (", flags.page_size, "), 0 allowed"));
  }
  if (flags.window < 1 || (page_ok && flags.window % flags.page_size != 0)) {
    p.Add("window", flags.window,
          absl::StrCat("must be a positive multiple of --page_size (", flags.page_size, ")"));
  }
  c.page_size = flags.page_size;
  c.sink_tokens = flags.sink;
  c.window_tokens = flags.window;

  // Backend and device.
  if (flags.device < 0) p.Add("device", flags.device, "must be >= 0");
  c.device_id = flags.device;
  if (!tools::ParseBackend(flags.backend, facts, &c.backend, &c.backend_auto)) {
    p.Add("backend", flags.backend, "allowed auto, cuda or host");
  }
  if (!(flags.gpu_memory_gib >= 0 && std::isfinite(flags.gpu_memory_gib))) {
    p.Add("gpu_memory_gib", Num(flags.gpu_memory_gib),
          "must be > 0 (or 0: 90% of the device's free memory)");
  }
  if (!(flags.hbm_gbps >= 0 && std::isfinite(flags.hbm_gbps))) {
    p.Add("hbm_gbps", Num(flags.hbm_gbps), "must be > 0 (or 0: the built-in H100 rate)");
  }
  if (!(flags.pcie_gbps >= 0 && std::isfinite(flags.pcie_gbps))) {
    p.Add("pcie_gbps", Num(flags.pcie_gbps), "must be > 0 (or 0: the built-in H100 rate)");
  }

  // Accuracy sampling.
  if (flags.accuracy_samples < 0) {
    p.Add("accuracy_samples", flags.accuracy_samples, "must be >= 0 (0: no accuracy check)");
  }
  if (flags.accuracy_steps < 0) {
    p.Add("accuracy_steps", flags.accuracy_steps, "must be >= 0 (0: no accuracy check)");
  }
  c.phase_timings = flags.phase_timings;

  if (!p.empty()) return p.ToStatus();

  // Everything parsed: resolve what depends on the backend and the sizes.
  if (absl::Status available =
          tools::CheckBackendAvailable(c.backend, facts, c.device_id, "kvtier-replay");
      !available.ok()) {
    return available;
  }
  c.steps = flags.steps > 0 ? flags.steps
                            : (c.backend == Backend::kCuda ? kDefaultCudaSteps : kDefaultHostSteps);
  if (flags.gpu_memory_gib > 0) {
    c.gpu_memory_bytes = static_cast<int64_t>(flags.gpu_memory_gib * static_cast<double>(kGiB));
  } else if (c.backend == Backend::kHost) {
    c.gpu_memory_bytes = kHostBackendGpuBytes;
  } else if (facts.free_gpu_bytes > 0) {
    c.gpu_memory_bytes = facts.free_gpu_bytes / 10 * 9;
  } else {
    c.gpu_memory_bytes = kFallbackGpuBytes;
  }
  KVTIER_RETURN_IF_ERROR(ResolveRates(flags, &c));
  // At most one check per distinct triple, and per step.
  const int64_t triples = int64_t{c.batch} * c.shape.num_layers * c.shape.num_kv_heads;
  c.accuracy_samples = static_cast<int>(std::min<int64_t>(flags.accuracy_samples, triples));
  // The estimation zone in pages: a share of the cold tokens at the last step, rounded up.
  c.estimate_pages = flags.estimate_pages;
  c.estimate_rest = flags.estimate_fraction >= 1;  // every cold page not retrieved
  c.value_shift = flags.value_shift;
  if (flags.estimate_fraction > 0 && !c.estimate_rest) {
    const int64_t cold =
        tools::ColdTokens(c.final_tokens(), c.page_size, c.sink_tokens, c.window_tokens);
    c.estimate_pages = static_cast<int>(
        std::ceil(flags.estimate_fraction * static_cast<double>(cold) / c.page_size));
  }
  c.accuracy_steps = std::min(flags.accuracy_steps, c.steps);
  if (c.accuracy_samples == 0 || c.accuracy_steps == 0) c.accuracy_samples = c.accuracy_steps = 0;

  // The runtime's own checks (limits such as max_sequence_tokens, group size) have the last
  // word; their message names the Options field.
  if (absl::StatusOr<Options> options = MakeOptions(c); !options.ok()) return options.status();
  return c;
}

namespace {

absl::Status ResolveRates(const ReplayFlags& flags, ReplayConfig* c) {
  const Options defaults;
  c->hbm_bytes_per_second = defaults.hbm_bytes_per_second;
  c->pcie_bytes_per_second = defaults.pcie_bytes_per_second;
  c->hbm_rate_source = c->pcie_rate_source = std::string(kBuiltInRates);
  if (flags.rates.empty() && flags.measured_hbm_bytes_per_second > 0 &&
      flags.measured_pcie_bytes_per_second > 0) {
    c->hbm_bytes_per_second = flags.measured_hbm_bytes_per_second;
    c->pcie_bytes_per_second = flags.measured_pcie_bytes_per_second;
    c->hbm_rate_source = c->pcie_rate_source = flags.measured_rates_source;
  }
  if (!flags.rates.empty() && (flags.hbm_gbps <= 0 || flags.pcie_gbps <= 0)) {
    KVTIER_ASSIGN_OR_RETURN(const tools::ProbeRates probe, tools::ReadProbeRates(flags.rates));
    const std::string source = absl::StrCat("kvtier-probe report ", flags.rates);
    c->hbm_bytes_per_second = probe.hbm_bytes_per_second;
    c->pcie_bytes_per_second = probe.pcie_bytes_per_second;
    c->hbm_rate_source = c->pcie_rate_source = source;
  }
  if (flags.hbm_gbps > 0) {
    c->hbm_bytes_per_second = flags.hbm_gbps * 1e9;
    c->hbm_rate_source = "--hbm_gbps";
  }
  if (flags.pcie_gbps > 0) {
    c->pcie_bytes_per_second = flags.pcie_gbps * 1e9;
    c->pcie_rate_source = "--pcie_gbps";
  }
  return absl::OkStatus();
}

}  // namespace

int64_t HostStoreBytes(const ReplayConfig& config) {
  const int64_t pages_per_head = (config.final_tokens() + config.page_size - 1) / config.page_size;
  const int64_t heads = int64_t{config.batch} * config.shape.num_layers * config.shape.num_kv_heads;
  const int64_t frame_bytes = 2 * PageBytes(config.shape, config.page_size);
  const int64_t bytes = heads * (pages_per_head + 1) * frame_bytes;
  const int64_t with_slack = bytes + bytes / 16 + 64 * kMiB;
  return (with_slack + kMiB - 1) / kMiB * kMiB;
}

int PrefillChunkTokens(const ReplayConfig& config) {
  return static_cast<int>(std::min<int64_t>(
      kPrefillChunkTokens,
      (config.context_tokens + config.page_size - 1) / config.page_size * config.page_size));
}

absl::StatusOr<Options> MakeOptions(const ReplayConfig& c) {
  Options o;
  o.shape = c.shape;
  o.page_size = c.page_size;
  o.sink_tokens = c.sink_tokens;
  o.window_tokens = c.window_tokens;
  o.budget.max_pages = c.budget_pages;
  o.budget.mass_target = c.mass_target;
  o.budget.estimate_pages = c.estimate_pages;
  o.budget.estimate_rest = c.estimate_rest;
  o.budget.value_shift = c.value_shift;
  o.index = c.index;
  o.cache_slots_per_budget = c.cache_slots_per_budget;
  switch (c.policy) {
    case PolicyChoice::kLru:
      o.cache_policy = CachePolicy::kLeastRecentlyUsed;
      break;
    case PolicyChoice::kScore:
      o.cache_policy = CachePolicy::kLowestScore;
      break;
    case PolicyChoice::kLast:
      o.cache_policy = CachePolicy::kLastSelection;
      break;
    case PolicyChoice::kOff:
      o.cache_policy = CachePolicy::kNone;
      break;
  }
  o.score_decay = c.score_decay;
  o.host_memory_bytes = HostStoreBytes(c);
  o.gpu_memory_bytes = c.gpu_memory_bytes;
  o.max_sequences = c.batch;
  o.max_batch_size = c.batch;
  o.max_sequence_tokens = (c.final_tokens() + c.page_size - 1) / c.page_size * c.page_size;
  o.max_prefill_chunk_tokens = std::max(c.page_size, PrefillChunkTokens(c));
  o.backend = c.backend;
  o.device_id = c.device_id;
  o.collect_timings = c.phase_timings;
  o.hbm_bytes_per_second = c.hbm_bytes_per_second;
  o.pcie_bytes_per_second = c.pcie_bytes_per_second;
  if (absl::Status valid = ValidateOptions(o); !valid.ok()) return valid;
  return o;
}

std::vector<int> AccuracySteps(const ReplayConfig& config) {
  std::vector<int> steps;
  const int n = std::min(config.accuracy_steps, config.steps);
  for (int i = 1; i <= n; ++i) {
    // i-th of n evenly spaced points ending at the last step: ceil(i * steps / n) - 1.
    const int step = static_cast<int>((int64_t{i} * config.steps + n - 1) / n) - 1;
    if (steps.empty() || step > steps.back()) steps.push_back(step);
  }
  return steps;
}

}  // namespace kvtier::replay
