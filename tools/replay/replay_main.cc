// kvtier-replay: drives a KvCache like an inference engine on a synthetic LLM-like workload
// (prefill, then decode steps of every layer) and reports decode throughput of the attention
// part, page-cache hit rate, PCIe bytes per step, step time next to its performance-model
// bound, and sampled accuracy against exact attention. Uses the GPU when there is one
// (--backend=auto), the host backend otherwise.
//
//   kvtier-replay                                       # llama-3-8b shape, 4 x 4096 tokens
//   kvtier-replay --model=qwen2.5-7b --context=16384 --batch=8 --budget=128 --policy=lru
//   kvtier-replay --json > replay.json
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tools/probe/gpu_ceilings.h"
#include "tools/probe/probe_report.h"
#include "tools/replay/machine_rates.h"
#include "tools/replay/replay_config.h"
#include "tools/replay/replay_report.h"
#include "tools/replay/replay_run.h"
#include "tools/replay/serving_report.h"
#include "tools/replay/serving_run.h"
#include "tools/workload/trace.h"

namespace {
const kvtier::replay::ReplayFlags kDefaults;
const kvtier::replay::ServingFlags kServingDefaults;
const kvtier::TraceOptions kTraceDefaults;
}  // namespace

ABSL_FLAG(std::string, model, kDefaults.model,
          "model shape preset: llama-3-8b (32 layers, 32 query heads, 8 KV heads, D 128), "
          "qwen2.5-7b (28, 28, 4, 128), or custom (give --layers, --query_heads, --kv_heads, "
          "--head_dim)");
ABSL_FLAG(int32_t, layers, 0, "layers (0: from --model)");
ABSL_FLAG(int32_t, query_heads, 0, "query heads (0: from --model)");
ABSL_FLAG(int32_t, kv_heads, 0, "KV heads (0: from --model)");
ABSL_FLAG(int32_t, head_dim, 0, "head dim: 64, 128 or 256 (0: from --model)");
ABSL_FLAG(std::string, dtype, kDefaults.dtype, "K/V/query dtype: bf16 or fp16");
ABSL_FLAG(int64_t, context, kDefaults.context, "prompt tokens per sequence");
ABSL_FLAG(int32_t, batch, kDefaults.batch, "sequences, decoded together");
ABSL_FLAG(int32_t, steps, kDefaults.steps,
          "timed decode steps (0: 16 on the host backend, 128 on CUDA)");
ABSL_FLAG(int32_t, warmup_steps, kDefaults.warmup_steps,
          "decode steps before the timed ones (untimed, not in the statistics)");
ABSL_FLAG(std::string, index, kDefaults.index,
          "block index: page_bounds (per-page key min/max, Quest) or wave (clustered, with "
          "selection by estimated mass and an estimation zone)");
ABSL_FLAG(int32_t, budget, kDefaults.budget,
          "pages the index selects per (sequence, layer, KV head) and step");
ABSL_FLAG(double, mass_target, kDefaults.mass_target,
          "0: select --budget pages; in (0, 1]: the fewest pages holding this estimated share "
          "of the attention mass, at most --budget (--index=wave only: a page bound is not a "
          "mass)");
ABSL_FLAG(int32_t, estimate_pages, kDefaults.estimate_pages,
          "--index=wave: pages ranked below the retrieved ones that are estimated from their "
          "centroid and mean value instead of attended (0: no estimation zone)");
ABSL_FLAG(bool, value_shift, kDefaults.value_shift,
          "--index=wave with estimation: shift each estimated mean value towards the values "
          "the query favours (Options::budget.value_shift); false: the mean values alone");
ABSL_FLAG(double, estimate_fraction, kDefaults.estimate_fraction,
          "--index=wave: the estimation zone as a share of the cold (offloaded) tokens a "
          "sequence holds after the last step, rounded up to pages (instead of "
          "--estimate_pages); 1: every cold page not retrieved, estimated beside the "
          "selection");
ABSL_FLAG(std::string, policy, kDefaults.policy,
          "page-cache policy: lru, score (lowest accumulated attention mass), last (cache = "
          "last step's selection) or off (no cache)");
ABSL_FLAG(double, cache_slots, kDefaults.cache_slots,
          "page-cache slots per (sequence, layer, KV head), as a multiple of --budget");
ABSL_FLAG(double, score_decay, kDefaults.score_decay, "per-step decay of the score policy");
ABSL_FLAG(int32_t, sink, kDefaults.sink, "first tokens of the hot set (a multiple of --page_size)");
ABSL_FLAG(int32_t, window, kDefaults.window,
          "last tokens of the hot set (a multiple of --page_size)");
ABSL_FLAG(int32_t, page_size, kDefaults.page_size, "tokens per page: 16, 32 or 64");
ABSL_FLAG(std::string, backend, kDefaults.backend,
          "auto (CUDA when a device is present, else host), cuda or host");
ABSL_FLAG(int32_t, device, kDefaults.device, "CUDA device");
ABSL_FLAG(uint64_t, seed, kDefaults.seed, "workload seed");
ABSL_FLAG(double, gpu_memory_gib, kDefaults.gpu_memory_gib,
          "device memory kvtier may plan (0: 90% of the device's free memory; host backend: "
          "64)");
ABSL_FLAG(double, hbm_gbps, kDefaults.hbm_gbps,
          "HBM rate of the bound, GB/s (0: from --rates, else measured at start on a CUDA "
          "device, else the built-in H100 rate)");
ABSL_FLAG(double, pcie_gbps, kDefaults.pcie_gbps,
          "pinned host-to-device rate of the bound, GB/s (0: from --rates, else measured at "
          "start on a CUDA device, else the built-in H100 rate)");
ABSL_FLAG(std::string, rates, "",
          "a kvtier-probe --json report of this machine (kvtier-probe --json_out=FILE) for the "
          "bound's rates; empty: $XDG_CACHE_HOME/kvtier/probe.json or "
          "~/.cache/kvtier/probe.json when there is one, else (CUDA) measured at start and "
          "saved there");
ABSL_FLAG(int32_t, accuracy_samples, kDefaults.accuracy_samples,
          "(sequence, layer, KV head) triples checked against exact attention (0: none)");
ABSL_FLAG(int32_t, accuracy_steps, kDefaults.accuracy_steps,
          "timed steps at which they are checked, spread evenly, the last included (0: none)");
ABSL_FLAG(bool, phase_timings, kDefaults.phase_timings,
          "time each decode phase (plan, select, resolve, load, attend)");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");
ABSL_FLAG(std::string, json_out, "", "also write the JSON report to this file");
ABSL_FLAG(bool, samples, false, "table: one line per accuracy sample");
ABSL_FLAG(bool, progress, true, "draw a progress bar on stderr when it is a terminal");
// Serving a real trace (continuous batching) instead of one fixed batch.
ABSL_FLAG(std::string, trace, "",
          "serve this request trace (Azure CSV or Mooncake JSONL) instead of one fixed batch: "
          "--batch is then the largest decode batch; --context, --steps and the accuracy "
          "flags are not used");
ABSL_FLAG(std::string, trace_format, "", "azure or mooncake (empty: from the extension)");
ABSL_FLAG(int64_t, trace_requests, kTraceDefaults.max_requests,
          "serve the first N requests (0: all)");
ABSL_FLAG(double, time_scale, kTraceDefaults.time_scale, "arrivals come X times faster");
ABSL_FLAG(int64_t, max_context, kTraceDefaults.max_context,
          "prompts longer than this are clipped or skipped (--long_prompts; 0: no limit)");
ABSL_FLAG(std::string, long_prompts, "clip", "clip or skip prompts over --max_context");
ABSL_FLAG(bool, skip_bad_lines, kTraceDefaults.skip_bad_lines,
          "skip and count malformed trace lines instead of stopping at the first");
ABSL_FLAG(int64_t, prefill_chunk, kServingDefaults.prefill_chunk,
          "prompt tokens prefilled per iteration, beside the decode batch");
ABSL_FLAG(int32_t, max_sequences, kServingDefaults.max_sequences,
          "requests stored at once (0: twice --batch)");
ABSL_FLAG(std::string, csv, "", "--trace: write one CSV row a request to this file");
ABSL_FLAG(double, host_memory_gib, kServingDefaults.host_memory_gib,
          "the pinned host store (0: room for --max_sequences requests of the longest size)");

namespace kvtier::replay {
namespace {

ReplayFlags ReadFlags() {
  ReplayFlags f;
  f.model = absl::GetFlag(FLAGS_model);
  f.layers = absl::GetFlag(FLAGS_layers);
  f.query_heads = absl::GetFlag(FLAGS_query_heads);
  f.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  f.head_dim = absl::GetFlag(FLAGS_head_dim);
  f.dtype = absl::GetFlag(FLAGS_dtype);
  f.context = absl::GetFlag(FLAGS_context);
  f.batch = absl::GetFlag(FLAGS_batch);
  f.steps = absl::GetFlag(FLAGS_steps);
  f.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  f.index = absl::GetFlag(FLAGS_index);
  f.budget = absl::GetFlag(FLAGS_budget);
  f.mass_target = absl::GetFlag(FLAGS_mass_target);
  f.estimate_pages = absl::GetFlag(FLAGS_estimate_pages);
  f.estimate_fraction = absl::GetFlag(FLAGS_estimate_fraction);
  f.value_shift = absl::GetFlag(FLAGS_value_shift);
  f.policy = absl::GetFlag(FLAGS_policy);
  f.cache_slots = absl::GetFlag(FLAGS_cache_slots);
  f.score_decay = absl::GetFlag(FLAGS_score_decay);
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
  if (f.rates.empty()) {
    // A saved report that cannot serve (e.g. a host-only probe) is passed over, with a word.
    const std::string saved = tools::DefaultProbeRatesPath();
    if (!saved.empty() && std::filesystem::exists(saved)) {
      if (const absl::StatusOr<tools::ProbeRates> rates = tools::ReadProbeRates(saved);
          rates.ok()) {
        f.rates = saved;
      } else {
        std::cerr << "kvtier-replay: not using the saved probe report: " << rates.status().message()
                  << "\n";
      }
    }
  }
  f.accuracy_samples = absl::GetFlag(FLAGS_accuracy_samples);
  f.accuracy_steps = absl::GetFlag(FLAGS_accuracy_steps);
  f.phase_timings = absl::GetFlag(FLAGS_phase_timings);
  return f;
}

// The bound's rates measured briefly (kvtier-probe's pinned host-to-device and device-to-device
// copies, 128 MiB each) when neither the flags nor a probe report give both and the replay runs
// on a CUDA device; the measurement is saved as a probe report at the default path, which
// later runs read instead. A failure leaves the built-in rates, with a word.
void MeasureRatesIfMissing(ReplayFlags& f) {
  if (!f.rates.empty() || (f.hbm_gbps > 0 && f.pcie_gbps > 0)) return;
  const DeviceFacts facts = QueryDeviceFacts(f.device);
  Backend backend = Backend::kHost;
  bool is_auto = false;
  if (!ParseBackend(f.backend, facts, &backend, &is_auto) || backend != Backend::kCuda ||
      f.device < 0 || f.device >= facts.cuda_devices) {
    return;
  }
  probe::ProbeReport report;
  report.options.bytes = int64_t{128} << 20;
  report.options.repetitions = 3;
  report.options.device = f.device;
  if (const absl::Status measured = probe::MeasureBulkRates(report.options, &report);
      !measured.ok()) {
    std::cerr << "kvtier-replay: could not measure the bound's rates (" << measured.message()
              << "): using the built-in ones\n";
    return;
  }
  std::ostringstream json;
  probe::PrintJson(report, json);
  const absl::StatusOr<tools::ProbeRates> rates =
      tools::ParseProbeRates(json.str(), "the measurement at start");
  if (!rates.ok()) {
    std::cerr << "kvtier-replay: " << rates.status().message() << ": using the built-in rates\n";
    return;
  }
  std::string saved = "not saved (no $XDG_CACHE_HOME or $HOME)";
  if (const std::string path = tools::DefaultProbeRatesPath(); !path.empty()) {
    std::error_code error;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), error);
    std::ofstream file(path);
    file << json.str();
    saved = file.good() ? absl::StrCat("saved to ", path) : absl::StrCat("cannot write ", path);
  }
  f.measured_hbm_bytes_per_second = rates->hbm_bytes_per_second;
  f.measured_pcie_bytes_per_second = rates->pcie_bytes_per_second;
  f.measured_rates_source =
      absl::StrCat("kvtier-probe's copies measured at start (128 MiB; ", saved, ")");
}

// Writes a report to `path` with `write` unless the path is empty; false (and a message) when
// the file cannot be written.
template <typename Write>
bool WriteIfAsked(const std::string& path, Write write) {
  if (path.empty()) return true;
  std::ofstream file(path);
  write(file);
  if (file.good()) return true;
  std::cerr << "kvtier-replay: cannot write " << path << "\n";
  return false;
}

// kvtier-replay --trace: reads the trace, serves it, prints the serving report.
int Serve(const ReplayConfig& config, bool json, bool bar, const ProgressFn& progress) {
  TraceOptions options;
  options.max_requests = absl::GetFlag(FLAGS_trace_requests);
  options.time_scale = absl::GetFlag(FLAGS_time_scale);
  options.max_context = absl::GetFlag(FLAGS_max_context);
  options.skip_bad_lines = absl::GetFlag(FLAGS_skip_bad_lines);
  const std::string long_prompts = absl::GetFlag(FLAGS_long_prompts);
  if (long_prompts != "clip" && long_prompts != "skip") {
    std::cerr << "kvtier-replay: --long_prompts=" << long_prompts << ": allowed clip or skip\n";
    return 2;
  }
  options.long_prompts = long_prompts == "skip" ? LongPrompts::kSkip : LongPrompts::kClip;
  std::optional<TraceFormat> format;
  if (const std::string name = absl::GetFlag(FLAGS_trace_format); !name.empty()) {
    absl::StatusOr<TraceFormat> parsed = ParseTraceFormat(name);
    if (!parsed.ok()) {
      std::cerr << "kvtier-replay: --trace_format: " << parsed.status().message() << "\n";
      return 2;
    }
    format = *parsed;
  }
  absl::StatusOr<Trace> trace = ReadTrace(absl::GetFlag(FLAGS_trace), format, options);
  if (!trace.ok()) {
    std::cerr << "kvtier-replay: " << trace.status().message() << "\n";
    return 2;
  }
  ServingFlags flags;
  flags.max_sequences = absl::GetFlag(FLAGS_max_sequences);
  flags.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  flags.host_memory_gib = absl::GetFlag(FLAGS_host_memory_gib);
  if (options.max_context > 0) {  // clipped prompts plus their outputs
    for (const TraceRequest& r : trace->requests) {
      flags.max_sequence_tokens =
          std::max(flags.max_sequence_tokens, r.input_tokens + r.output_tokens);
    }
  }
  absl::StatusOr<ServingConfig> serving = MakeServingConfig(config, flags, *trace);
  if (!serving.ok()) {
    std::cerr << "kvtier-replay: " << serving.status().message() << "\n";
    return 2;
  }
  absl::StatusOr<ServingResult> result = RunServing(*serving, *trace, progress);
  if (bar) std::cerr << "\r" << std::string(60, ' ') << "\r" << std::flush;
  if (!result.ok()) {
    std::cerr << "kvtier-replay: error: " << result.status() << "\n";
    return 1;
  }
  if (json) {
    PrintServingJson(*result, *trace, std::cout);
  } else {
    PrintServingTable(*result, *trace, std::cout);
  }
  std::cout.flush();
  const bool written =
      WriteIfAsked(absl::GetFlag(FLAGS_json_out),
                   [&](std::ostream& out) { PrintServingJson(*result, *trace, out); }) &&
      WriteIfAsked(absl::GetFlag(FLAGS_csv),
                   [&](std::ostream& out) { WriteServingCsv(*result, *trace, out); });
  return written ? 0 : 1;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Replays an engine's prefill and decode steps on a kvtier KvCache with a synthetic "
      "LLM-like workload and reports throughput, hit rate, PCIe traffic, step time against its "
      "bound and accuracy against exact attention.\n"
      "Usage: kvtier-replay [--model=llama-3-8b] [--context=N] [--batch=N] [--steps=N] "
      "[--index=page_bounds|wave] [--budget=PAGES] [--estimate_pages=N] "
      "[--policy=lru|score|last|off] [--backend=auto|cuda|host] [--json]");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "replay_main");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "kvtier-replay: unexpected argument '" << positional[1] << "' (see --help)\n";
    return 2;
  }

  ReplayFlags flags = ReadFlags();
  MeasureRatesIfMissing(flags);
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(flags, QueryDeviceFacts(flags.device));
  if (!config.ok()) {
    std::cerr << "kvtier-replay: " << config.status().message() << "\n";
    return 2;
  }

  const bool json = absl::GetFlag(FLAGS_json);
  const bool bar = absl::GetFlag(FLAGS_progress) && isatty(STDERR_FILENO) == 1;
  ProgressFn progress;
  if (bar) {
    // Each phase's clock starts at its first report.
    progress = [phase_name = std::string(), start = std::chrono::steady_clock::now()](
                   absl::string_view phase, int64_t done, int64_t total) mutable {
      if (phase != phase_name) {
        phase_name = std::string(phase);
        start = std::chrono::steady_clock::now();
      }
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::cerr << "\r" << FormatProgress(phase, done, total, 60, elapsed) << std::flush;
    };
  }
  if (!absl::GetFlag(FLAGS_trace).empty()) return Serve(*config, json, bar, progress);
  absl::StatusOr<ReplayResult> result = RunReplay(*config, progress);
  if (bar) std::cerr << "\r" << std::string(60, ' ') << "\r" << std::flush;
  if (!result.ok()) {
    std::cerr << "kvtier-replay: error: " << result.status() << "\n";
    return 1;
  }

  if (json) {
    PrintJson(*result, std::cout);
  } else {
    PrintTable(*result, std::cout, absl::GetFlag(FLAGS_samples));
  }
  std::cout.flush();
  return WriteIfAsked(absl::GetFlag(FLAGS_json_out),
                      [&](std::ostream& out) { PrintJson(*result, out); })
             ? 0
             : 1;
}

}  // namespace
}  // namespace kvtier::replay

int main(int argc, char** argv) { return kvtier::replay::Run(argc, argv); }
