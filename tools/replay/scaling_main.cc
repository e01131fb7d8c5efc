// kvtier-scaling: tokens/s against batch size at fixed contexts, for every system, each up to
// its memory limit (scaling_run.h), written as JSON (--json_out), CSV (--csv_out) and plots
// (--png: scripts/plot_scaling.py on the JSON); a table on stdout.
//
//   kvtier-scaling --contexts=32768,122880 --batches=1,2,4,8,16,24,32,48 \
//       --systems=page_bounds,wave_rest --json_out=scaling.json --png=scaling.png
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tools/common/plot_command.h"
#include "tools/replay/replay_report.h"
#include "tools/replay/scaling_run.h"

#ifndef KVTIER_SCALING_PLOT_SCRIPT
#define KVTIER_SCALING_PLOT_SCRIPT "scripts/plot_scaling.py"
#endif

namespace {
const kvtier::replay::ReplayFlags kDefaults;
}  // namespace

ABSL_FLAG(std::string, model, kDefaults.model,
          "model shape preset (llama-3-8b, qwen2.5-7b) or custom (give the four sizes)");
ABSL_FLAG(int32_t, layers, 0, "layers (0: from --model)");
ABSL_FLAG(int32_t, query_heads, 0, "query heads (0: from --model)");
ABSL_FLAG(int32_t, kv_heads, 0, "KV heads (0: from --model)");
ABSL_FLAG(int32_t, head_dim, 0, "head dim (0: from --model)");
ABSL_FLAG(std::string, contexts, "32768,122880", "prompt tokens per sequence, comma-separated");
ABSL_FLAG(std::string, batches, "1,2,4,8,16,24,32,48,64",
          "batch sizes, ascending, comma-separated; each system stops at its memory limit");
ABSL_FLAG(std::string, systems, "page_bounds,wave_rest",
          "systems, comma-separated: page_bounds, wave, wave_rest, page_bounds_nocache");
ABSL_FLAG(int32_t, budget, kDefaults.budget, "pages selected per (sequence, layer, KV head)");
ABSL_FLAG(int32_t, steps, kDefaults.steps, "timed decode steps a run (0: the backend's default)");
ABSL_FLAG(int32_t, warmup_steps, kDefaults.warmup_steps, "untimed decode steps first");
ABSL_FLAG(int32_t, sink, kDefaults.sink, "sink tokens on the GPU");
ABSL_FLAG(int32_t, window, kDefaults.window, "recent tokens on the GPU");
ABSL_FLAG(int32_t, page_size, kDefaults.page_size, "tokens per page");
ABSL_FLAG(std::string, backend, kDefaults.backend, "auto, cuda or host");
ABSL_FLAG(int32_t, device, kDefaults.device, "CUDA device");
ABSL_FLAG(uint64_t, seed, kDefaults.seed, "workload seed");
ABSL_FLAG(double, gpu_memory_gib, kDefaults.gpu_memory_gib,
          "device memory kvtier may plan (0: 90% of the device's free memory)");
ABSL_FLAG(double, host_memory_gib, 0,
          "the host store's limit (0: 90% of this machine's available memory)");
ABSL_FLAG(double, hbm_gbps, 0, "HBM rate of the bound, GB/s (0: --rates, else built in)");
ABSL_FLAG(double, pcie_gbps, 0, "PCIe rate of the bound, GB/s (0: --rates, else built in)");
ABSL_FLAG(std::string, rates, "", "a kvtier-probe --json report for the bound's rates");
ABSL_FLAG(int32_t, accuracy_samples, 4, "triples checked against exact attention a run");
ABSL_FLAG(bool, phase_timings, true, "time each decode phase (the plots' step breakdown)");
ABSL_FLAG(std::string, json_out, "scaling.json", "the sweep as JSON ('': none)");
ABSL_FLAG(std::string, csv_out, "", "the sweep as CSV, a row a point ('': none)");
ABSL_FLAG(std::string, png, "",
          "plots from the JSON: PNG (tokens/s against batch), PNG's _pareto and _phases "
          "siblings ('': none; needs --json_out and python3-matplotlib)");
ABSL_FLAG(std::string, plot_script, KVTIER_SCALING_PLOT_SCRIPT,
          "the plotting script, run by $KVTIER_PYTHON or /usr/bin/python3");

namespace kvtier::replay {
namespace {

// 90% of MemAvailable, 0 when /proc/meminfo does not say.
int64_t AvailableHostBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024 / 10 * 9;
  }
  return 0;
}

template <typename T>
bool ParseList(const std::string& text, std::vector<T>* out) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    T value{};
    if (!absl::SimpleAtoi(part, &value)) return false;
    out->push_back(value);
  }
  return true;
}

int Main() {
  ScalingPlan plan;
  ReplayFlags& f = plan.base;
  f.model = absl::GetFlag(FLAGS_model);
  f.layers = absl::GetFlag(FLAGS_layers);
  f.query_heads = absl::GetFlag(FLAGS_query_heads);
  f.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  f.head_dim = absl::GetFlag(FLAGS_head_dim);
  f.budget = absl::GetFlag(FLAGS_budget);
  f.steps = absl::GetFlag(FLAGS_steps);
  f.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  f.sink = absl::GetFlag(FLAGS_sink);
  f.window = absl::GetFlag(FLAGS_window);
  f.page_size = absl::GetFlag(FLAGS_page_size);
  f.backend = absl::GetFlag(FLAGS_backend);
  f.device = absl::GetFlag(FLAGS_device);
  f.seed = absl::GetFlag(FLAGS_seed);
  f.gpu_memory_gib = absl::GetFlag(FLAGS_gpu_memory_gib);
  f.hbm_gbps = absl::GetFlag(FLAGS_hbm_gbps);
  f.pcie_gbps = absl::GetFlag(FLAGS_pcie_gbps);
  f.rates = absl::GetFlag(FLAGS_rates);
  f.accuracy_samples = absl::GetFlag(FLAGS_accuracy_samples);
  f.phase_timings = absl::GetFlag(FLAGS_phase_timings);
  if (!ParseList(absl::GetFlag(FLAGS_contexts), &plan.contexts) ||
      !ParseList(absl::GetFlag(FLAGS_batches), &plan.batches)) {
    std::cerr << "kvtier-scaling: --contexts and --batches take comma-separated integers\n";
    return 2;
  }
  plan.systems = absl::StrSplit(absl::GetFlag(FLAGS_systems), ',', absl::SkipWhitespace());
  const double host_gib = absl::GetFlag(FLAGS_host_memory_gib);
  plan.host_memory_bytes =
      host_gib > 0 ? static_cast<int64_t>(host_gib * (int64_t{1} << 30)) : AvailableHostBytes();
  if (plan.host_memory_bytes <= 0 && host_gib <= 0) {
    std::cerr << "kvtier-scaling: /proc/meminfo does not say how much memory is available: give "
                 "--host_memory_gib\n";
    return 2;
  }
  if (const absl::Status valid = ValidateScalingPlan(plan); !valid.ok()) {
    std::cerr << "kvtier-scaling: " << valid.message() << "\n";
    return 2;
  }
  const bool bar = isatty(STDERR_FILENO) == 1;
  ProgressFn progress;
  if (bar) {
    progress = [](absl::string_view phase, int64_t done, int64_t total) {
      std::cerr << "\r" << FormatProgress(phase, done, total) << std::flush;
      if (done == total) std::cerr << "\n";
    };
  }
  absl::StatusOr<ScalingResult> result = RunScaling(plan, progress);
  if (!result.ok()) {
    std::cerr << "kvtier-scaling: " << result.status().message() << "\n";
    return 1;
  }
  PrintScalingTable(*result, std::cout);
  int status = 0;
  const std::string json = absl::GetFlag(FLAGS_json_out);
  if (!json.empty()) {
    std::ofstream file(json);
    PrintScalingJson(*result, file);
    if (!file.good()) {
      std::cerr << "kvtier-scaling: cannot write " << json << "\n";
      status = 1;
    }
  }
  const std::string csv = absl::GetFlag(FLAGS_csv_out);
  if (!csv.empty()) {
    std::ofstream file(csv);
    PrintScalingCsv(*result, file);
    if (!file.good()) {
      std::cerr << "kvtier-scaling: cannot write " << csv << "\n";
      status = 1;
    }
  }
  const std::string png = absl::GetFlag(FLAGS_png);
  if (!png.empty() && status == 0) {
    if (json.empty()) {
      std::cerr << "kvtier-scaling: --png needs --json_out\n";
      return 2;
    }
    const tools::PlotCommand command{tools::PlotPython(), absl::GetFlag(FLAGS_plot_script)};
    if (const absl::Status plotted = tools::Plot(command, json, png); !plotted.ok()) {
      std::cerr << "kvtier-scaling: " << plotted.message() << "\n";
      status = 1;
    }
  }
  return status;
}

}  // namespace
}  // namespace kvtier::replay

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "kvtier-scaling [--contexts=32768,122880] [--batches=1,2,4,...] "
      "[--systems=page_bounds,wave_rest] [--json_out=F] [--csv_out=F] [--png=F]");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "kvtier-scaling: unexpected argument '" << positional[1] << "' (see --help)\n";
    return 2;
  }
  return kvtier::replay::Main();
}
