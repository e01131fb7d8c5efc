// kvtier-accuracy: how close to full attention is an index at a budget? Runs learned-attention
// dumps or the synthetic workload through a KvCache (prefill, then one decode step per query
// position) and reports, per input, the attention mass the runtime attended exactly against
// the oracle's at the same budget, the output error against exact attention per query head,
// needles found, and tokens retrieved and estimated.
//
//   kvtier-accuracy --dump=../shared/data/attention/code_dev8k_L2.npz --budget_fraction=0.02
//   kvtier-accuracy --synthetic --context=32768 --needles=16 --json
//   kvtier-accuracy --dump=a.npz --dump=b.npz --sweep=0.01,0.02,0.05,0.1
//       --index=page_bounds,wave --csv=sweep.csv --png=sweep.png   (one command line)
//
// Exit status: 0 when every run succeeded; 1 when a run or an input failed, an output was not
// finite, or plotting failed (the CSV is written first); 2 for bad flags.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tools/accuracy/accuracy_config.h"
#include "tools/accuracy/accuracy_report.h"
#include "tools/accuracy/accuracy_run.h"

#ifndef KVTIER_PLOT_SCRIPT
#define KVTIER_PLOT_SCRIPT "scripts/plot_accuracy.py"
#endif

namespace {
const kvtier::accuracy::AccuracyFlags kDefaults;
}  // namespace

// Read from argv before absl parses it (TakeRepeatedFlag), so that it can repeat and a path may
// hold commas; declared here for --help.
ABSL_FLAG(std::string, dump, "",
          "a learned-attention dump (.npz); repeat for several (--dump=a.npz --dump=b.npz)");
ABSL_FLAG(bool, synthetic, kDefaults.synthetic,
          "also run the seeded synthetic workload (llama-3-8b-like shape, one layer, bf16)");
ABSL_FLAG(int64_t, context, kDefaults.context,
          "--synthetic: tokens of the sequence at its last query (the last 256 positions are "
          "the queries)");
ABSL_FLAG(int32_t, needles, kDefaults.needles,
          "--synthetic: needle keys planted in the cold tokens, each for one evaluated query");
ABSL_FLAG(int64_t, generated, kDefaults.generated,
          "--synthetic: tokens decoded between the prefill and the first query (drift: the "
          "same context with its last N + 256 tokens generated instead of prefilled)");
ABSL_FLAG(std::string, index, kDefaults.index,
          "block index: page_bounds or wave (with --sweep, a comma list)");
ABSL_FLAG(double, budget_fraction, kDefaults.budget_fraction,
          "retrieval budget as a share of the cold (offloaded) tokens of the last evaluated "
          "query's context, in (0, 1]; rounded up to pages (ignored with --sweep)");
ABSL_FLAG(double, estimate_fraction, kDefaults.estimate_fraction,
          "--index=wave: the estimation zone as a share of the cold tokens (0: none; 1: every "
          "cold page not retrieved, estimated beside the selection)");
ABSL_FLAG(bool, value_shift, kDefaults.value_shift,
          "--index=wave with estimation: shift each estimated mean value towards the values "
          "the query favours (Options::budget.value_shift); false: the mean values alone");
ABSL_FLAG(double, mass_target, kDefaults.mass_target,
          "--index=wave: 0 selects the budget's pages by score; in (0, 1] the fewest pages "
          "holding this estimated share of the mass, at most the budget");
ABSL_FLAG(int32_t, page_size, kDefaults.page_size, "tokens per page: 16, 32 or 64");
ABSL_FLAG(int32_t, sink, kDefaults.sink, "first tokens of the hot set (a multiple of the page)");
ABSL_FLAG(int32_t, window, kDefaults.window, "last tokens of the hot set (a multiple of the page)");
ABSL_FLAG(std::string, backend, kDefaults.backend,
          "auto (CUDA when a device is present, else host), cuda or host");
ABSL_FLAG(int32_t, device, kDefaults.device, "CUDA device");
ABSL_FLAG(uint64_t, seed, kDefaults.seed, "synthetic workload and needle placement seed");
ABSL_FLAG(int32_t, queries, kDefaults.queries,
          "queries evaluated per input, evenly spaced over its queries (32 of a dump's 256: "
          "0, 8, ..., 248, as its README)");
ABSL_FLAG(bool, json, false, "print one JSON array (an object per run) instead of a table");
ABSL_FLAG(std::string, sweep, kDefaults.sweep,
          "budget fractions to sweep, e.g. 0.01,0.02,0.05,0.1: every input x index x fraction, "
          "written to --csv and plotted to --png");
ABSL_FLAG(std::string, csv, kDefaults.csv, "--sweep: the CSV written");
ABSL_FLAG(std::string, png, kDefaults.png,
          "--sweep: the plot (output error against budget); empty: no plot");
ABSL_FLAG(std::string, plot_script, KVTIER_PLOT_SCRIPT,
          "--sweep: the plotting script, run by $KVTIER_PYTHON or /usr/bin/python3");

namespace kvtier::accuracy {
namespace {

AccuracyFlags ReadFlags(std::vector<std::string> dumps) {
  AccuracyFlags f;
  f.dumps = std::move(dumps);
  f.synthetic = absl::GetFlag(FLAGS_synthetic);
  f.context = absl::GetFlag(FLAGS_context);
  f.needles = absl::GetFlag(FLAGS_needles);
  f.generated = absl::GetFlag(FLAGS_generated);
  f.index = absl::GetFlag(FLAGS_index);
  f.budget_fraction = absl::GetFlag(FLAGS_budget_fraction);
  f.estimate_fraction = absl::GetFlag(FLAGS_estimate_fraction);
  f.value_shift = absl::GetFlag(FLAGS_value_shift);
  f.mass_target = absl::GetFlag(FLAGS_mass_target);
  f.page_size = absl::GetFlag(FLAGS_page_size);
  f.sink = absl::GetFlag(FLAGS_sink);
  f.window = absl::GetFlag(FLAGS_window);
  f.backend = absl::GetFlag(FLAGS_backend);
  f.device = absl::GetFlag(FLAGS_device);
  f.seed = absl::GetFlag(FLAGS_seed);
  f.queries = absl::GetFlag(FLAGS_queries);
  f.sweep = absl::GetFlag(FLAGS_sweep);
  f.csv = absl::GetFlag(FLAGS_csv);
  f.png = absl::GetFlag(FLAGS_png);
  return f;
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures how close to full attention a kvtier index is at a budget, on learned-attention "
      "dumps or the synthetic workload.\n"
      "Usage: kvtier-accuracy (--dump=PATH.npz ... | --synthetic [--context=N] [--needles=K]) "
      "[--index=page_bounds|wave] [--budget_fraction=F] [--estimate_fraction=F] "
      "[--backend=auto|cuda|host] [--json] [--sweep=F,F,... --csv=PATH --png=PATH]");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "accuracy_main");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);

  std::vector<char*> args(argv, argv + argc);
  std::vector<std::string> dumps;
  std::string bad;
  if (!TakeRepeatedFlag(args, "dump", &dumps, &bad)) {
    std::cerr << "kvtier-accuracy: " << bad << " needs a value (--dump=PATH.npz)\n";
    return 2;
  }
  const std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) {
    std::cerr << "kvtier-accuracy: unexpected argument '" << positional[1]
              << "' (inputs are given with --dump=PATH; see --help)\n";
    return 2;
  }
  const AccuracyFlags flags = ReadFlags(std::move(dumps));
  absl::StatusOr<AccuracyConfig> config =
      MakeAccuracyConfig(flags, tools::QueryDeviceFacts(flags.device));
  if (!config.ok()) {
    std::cerr << "kvtier-accuracy: " << config.status().message() << "\n";
    return 2;
  }

  // Every input is read before anything runs, so that a bad path fails at once.
  std::vector<AccuracyInput> inputs;
  for (const std::string& path : config->dumps) {
    absl::StatusOr<AccuracyInput> input = LoadDumpInput(path, config->queries);
    if (!input.ok()) {
      std::cerr << "kvtier-accuracy: " << input.status().message() << "\n";
      return 1;
    }
    inputs.push_back(*std::move(input));
  }
  if (config->synthetic) {
    absl::StatusOr<AccuracyInput> input = MakeSyntheticInput(*config);
    if (!input.ok()) {
      std::cerr << "kvtier-accuracy: " << input.status().message() << "\n";
      return 1;
    }
    inputs.push_back(*std::move(input));
  }

  const bool progress = isatty(STDERR_FILENO) == 1;
  const std::vector<RunSpec> specs = RunSpecs(*config);
  const size_t total = inputs.size() * specs.size();
  std::vector<RunResult> runs;
  for (const AccuracyInput& input : inputs) {
    for (const RunSpec& spec : specs) {
      if (progress) {
        std::cerr << "\r[" << runs.size() + 1 << "/" << total << "] " << input.name << ", "
                  << IndexKindName(spec.index) << " at " << spec.budget_fraction << "\033[K"
                  << std::flush;
      }
      runs.push_back(RunInput(input, spec));
    }
  }
  if (progress) std::cerr << "\r\033[K" << std::flush;

  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(runs, std::cout);
  } else {
    PrintTable(*config, runs, std::cout);
  }
  std::cout.flush();

  int status = 0;
  for (const RunResult& r : runs) {
    if (!r.status.ok()) {
      std::cerr << "kvtier-accuracy: " << r.input << ", index " << IndexKindName(r.spec.index)
                << " at budget " << r.spec.budget_fraction << ": " << r.status.message() << "\n";
      status = 1;
    } else if (r.output_error.non_finite > 0) {
      std::cerr << "kvtier-accuracy: " << r.input << ", index " << IndexKindName(r.spec.index)
                << " at budget " << r.spec.budget_fraction << ": " << r.output_error.non_finite
                << " outputs are not finite\n";
      status = 1;
    }
  }
  if (config->sweep) {
    if (absl::Status written = WriteCsvFile(runs, config->csv_path); !written.ok()) {
      std::cerr << "kvtier-accuracy: " << written.message() << "\n";
      return 1;
    }
    if (!config->png_path.empty()) {
      const PlotCommand command{PlotPython(), absl::GetFlag(FLAGS_plot_script)};
      if (absl::Status plotted = Plot(command, config->csv_path, config->png_path); !plotted.ok()) {
        std::cerr << "kvtier-accuracy: " << plotted.message() << "\n";
        return 1;
      }
      std::cerr << "kvtier-accuracy: wrote " << config->csv_path << " and " << config->png_path
                << "\n";
    } else {
      std::cerr << "kvtier-accuracy: wrote " << config->csv_path << " (--png empty: no plot)\n";
    }
  }
  return status;
}

}  // namespace
}  // namespace kvtier::accuracy

int main(int argc, char** argv) { return kvtier::accuracy::Run(argc, argv); }
