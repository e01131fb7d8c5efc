#include "tools/accuracy/accuracy_config.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "tools/common/attention_accuracy.h"

namespace kvtier::accuracy {
namespace {

// Synthetic contexts shorter than this leave the sampled queries next to no cold tokens.
constexpr int64_t kMinSyntheticContext = 2 * kSyntheticQuerySpan;
// The synthetic shape's KV heads (llama-3-8b): needles are planted one per (query, KV head).
constexpr int kSyntheticKvHeads = 8;

// Collects "--flag=value: allowed ..." problems (replay_config.cc's Problems, for this tool).
class Problems {
 public:
  template <typename T>
  void Add(absl::string_view flag, const T& value, absl::string_view allowed) {
    problems_.push_back(absl::StrCat("--", flag, "=", value, ": ", allowed));
  }
  void AddText(std::string text) { problems_.push_back(std::move(text)); }
  bool empty() const { return problems_.empty(); }
  absl::Status ToStatus() const {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid kvtier-accuracy flags: ", absl::StrJoin(problems_, "; ")));
  }

 private:
  std::vector<std::string> problems_;
};

// "1.5" for 1.5, "2" for 2.0: values as the user would write them.
std::string Num(double value) { return absl::StrCat(value); }

bool InFraction(double value, bool zero_allowed) {
  return std::isfinite(value) && (zero_allowed ? value >= 0 : value > 0) && value <= 1;
}

}  // namespace

bool TakeRepeatedFlag(std::vector<char*>& args, absl::string_view name,
                      std::vector<std::string>* values, std::string* bad) {
  const std::string forms[] = {absl::StrCat("--", name), absl::StrCat("-", name)};
  std::vector<char*> kept;
  std::vector<std::string> taken;
  bool done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const absl::string_view arg = args[i];
    if (i == 0 || done || arg == "--") {
      done = done || (i > 0 && arg == "--");
      kept.push_back(args[i]);
      continue;
    }
    bool matched = false;
    for (const std::string& form : forms) {
      if (arg == form) {
        if (i + 1 >= args.size()) {
          *bad = form;
          return false;
        }
        taken.emplace_back(args[++i]);
        matched = true;
        break;
      }
      if (absl::StartsWith(arg, absl::StrCat(form, "="))) {
        taken.emplace_back(arg.substr(form.size() + 1));
        matched = true;
        break;
      }
    }
    if (!matched) kept.push_back(args[i]);
  }
  args = std::move(kept);
  values->insert(values->end(), taken.begin(), taken.end());
  return true;
}

absl::StatusOr<AccuracyConfig> MakeAccuracyConfig(const AccuracyFlags& flags,
                                                  const tools::DeviceFacts& facts) {
  Problems p;
  AccuracyConfig c;

  // Inputs.
  for (const std::string& dump : flags.dumps) {
    if (dump.empty()) p.Add("dump", "", "must name a .npz file");
  }
  c.dumps = flags.dumps;
  c.synthetic = flags.synthetic;
  if (flags.dumps.empty() && !flags.synthetic) {
    p.AddText("no input: give --dump=PATH.npz (repeatable) or --synthetic");
  }
  c.synthetic_context = flags.context;
  if (flags.synthetic && flags.context < kMinSyntheticContext) {
    p.Add("context", flags.context,
          absl::StrCat("must be >= ", kMinSyntheticContext, " tokens (the last ",
                       kSyntheticQuerySpan, " positions are the queries)"));
  }
  c.generated = flags.generated;
  if (flags.generated < 0) {
    p.Add("generated", flags.generated, "must be >= 0");
  } else if (flags.generated > 0 && !flags.synthetic) {
    p.Add("generated", flags.generated, "needs --synthetic (a dump's prompt is fixed)");
  } else if (flags.generated > 0 &&
             flags.context - kSyntheticQuerySpan - flags.generated < kMinSyntheticContext / 2) {
    p.Add("generated", flags.generated,
          absl::StrCat("leaves a prompt of ", flags.context - kSyntheticQuerySpan - flags.generated,
                       " tokens; keep it at least ", kMinSyntheticContext / 2,
                       " (use a longer --context)"));
  }
  c.needles = flags.needles;
  if (flags.needles < 0) {
    p.Add("needles", flags.needles, "must be >= 0");
  } else if (flags.needles > 0 && !flags.synthetic) {
    p.Add("needles", flags.needles, "needs --synthetic (the dumps have no planted needles)");
  }
  if (flags.queries < 1) p.Add("queries", flags.queries, "must be >= 1");
  c.queries = flags.queries;
  if (flags.needles > 0 && flags.queries >= 1 &&
      int64_t{flags.needles} > int64_t{flags.queries} * kSyntheticKvHeads) {
    p.Add("needles", flags.needles,
          absl::StrCat("at most --queries x ", kSyntheticKvHeads,
                       " KV heads (one needle per evaluated query and KV head): ",
                       int64_t{flags.queries} * kSyntheticKvHeads));
  }
  c.seed = flags.seed;

  // Index kinds and budgets.
  c.sweep = !flags.sweep.empty();
  for (absl::string_view name : absl::StrSplit(flags.index, ',')) {
    IndexKind kind;
    if (!tools::ParseIndexKind(name, &kind)) {
      p.Add("index", flags.index,
            absl::StrCat("'", name, "' is not an index: allowed page_bounds or wave",
                         c.sweep ? " (a comma list)" : ""));
    } else if (std::find(c.indexes.begin(), c.indexes.end(), kind) != c.indexes.end()) {
      p.Add("index", flags.index, absl::StrCat("names ", name, " twice"));
    } else {
      c.indexes.push_back(kind);
    }
  }
  if (c.indexes.size() > 1 && !c.sweep) {
    p.Add("index", flags.index, "a list of index kinds needs --sweep; give one kind");
  }
  if (c.sweep) {
    for (absl::string_view item : absl::StrSplit(flags.sweep, ',')) {
      double fraction = 0;
      if (!absl::SimpleAtod(item, &fraction) || !InFraction(fraction, false)) {
        p.Add("sweep", flags.sweep,
              absl::StrCat("'", item, "' is not a budget fraction in (0, 1]"));
      } else if (std::find(c.budget_fractions.begin(), c.budget_fractions.end(), fraction) ==
                 c.budget_fractions.end()) {
        c.budget_fractions.push_back(fraction);
      }
    }
    std::sort(c.budget_fractions.begin(), c.budget_fractions.end());
    if (flags.csv.empty()) p.Add("csv", "", "must name the sweep's CSV file");
    c.csv_path = flags.csv;
    c.png_path = flags.png;
  } else {
    if (!InFraction(flags.budget_fraction, false)) {
      p.Add("budget_fraction", Num(flags.budget_fraction),
            "must be in (0, 1] (a share of the cold tokens)");
    }
    c.budget_fractions = {flags.budget_fraction};
  }
  const bool any_estimating =
      std::any_of(c.indexes.begin(), c.indexes.end(), AccuracyConfig::HasEstimation);
  const bool all_estimating = !c.indexes.empty() && std::all_of(c.indexes.begin(), c.indexes.end(),
                                                                AccuracyConfig::HasEstimation);
  if (!InFraction(flags.estimate_fraction, true)) {
    p.Add("estimate_fraction", Num(flags.estimate_fraction),
          "must be in [0, 1] (a share of the cold tokens; 0: no estimation zone)");
  } else if (flags.estimate_fraction > 0 && !c.indexes.empty() && !any_estimating) {
    p.Add("estimate_fraction", Num(flags.estimate_fraction),
          "the page_bounds index has no estimation zone: use 0, or --index=wave");
  }
  c.estimate_fraction = flags.estimate_fraction;
  c.value_shift = flags.value_shift;
  if (!InFraction(flags.mass_target, true)) {
    p.Add("mass_target", Num(flags.mass_target), "must be 0 (top-k by count) or in (0, 1]");
  } else if (flags.mass_target > 0 && !c.indexes.empty() && !any_estimating) {
    p.Add("mass_target", Num(flags.mass_target),
          "the page_bounds index selects by count only (a bound is not a mass): use 0, or "
          "--index=wave");
  }
  c.mass_target = flags.mass_target;
  if (any_estimating && !all_estimating && (flags.estimate_fraction > 0 || flags.mass_target > 0)) {
    c.notes.push_back(
        "--estimate_fraction and --mass_target apply to the wave runs; the page_bounds runs "
        "select the top pages by count, without an estimation zone");
  }

  // Pages and hot set.
  const bool page_ok = IsSupportedPageSize(flags.page_size);
  if (!page_ok) p.Add("page_size", flags.page_size, "allowed 16, 32 or 64");
  const bool sink_ok = flags.sink >= 0 && (!page_ok || flags.sink % flags.page_size == 0);
  if (!sink_ok) {
    p.Add("sink", flags.sink,
          absl::StrCat("must be a multiple of --page_size (", flags.page_size, "), 0 allowed"));
  }
  const bool window_ok = flags.window >= 1 && (!page_ok || flags.window % flags.page_size == 0);
  if (!window_ok) {
    p.Add("window", flags.window,
          absl::StrCat("must be a positive multiple of --page_size (", flags.page_size, ")"));
  }
  c.page_size = flags.page_size;
  c.sink_tokens = flags.sink;
  c.window_tokens = flags.window;
  if (flags.needles > 0 && flags.synthetic && flags.context >= kMinSyntheticContext && page_ok &&
      sink_ok && window_ok) {
    // Needles lie in the cold tokens of their query's context; the first query sees fewest.
    const int64_t first_query = flags.context - kSyntheticQuerySpan;
    if (tools::ColdTokens(first_query + 1, c.page_size, c.sink_tokens, c.window_tokens) < 1) {
      p.Add("needles", flags.needles,
            absl::StrCat("the first query (position ", first_query,
                         ") has no cold tokens to hide a needle in with --sink=", flags.sink,
                         " and --window=", flags.window, ": use a longer --context"));
    }
  }

  // Backend.
  if (flags.device < 0) p.Add("device", flags.device, "must be >= 0");
  c.device_id = flags.device;
  if (!tools::ParseBackend(flags.backend, facts, &c.backend, &c.backend_auto)) {
    p.Add("backend", flags.backend, "allowed auto, cuda or host");
  }

  if (!p.empty()) return p.ToStatus();
  if (absl::Status available =
          tools::CheckBackendAvailable(c.backend, facts, c.device_id, "kvtier-accuracy");
      !available.ok()) {
    return available;
  }
  if (c.backend_auto && c.backend == Backend::kHost) {
    c.notes.push_back("--backend=auto: no CUDA device, so the host backend ran");
  }
  return c;
}

}  // namespace kvtier::accuracy
