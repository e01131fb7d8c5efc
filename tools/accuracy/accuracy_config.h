// kvtier-accuracy's configuration: the flag values as given (AccuracyFlags), checked as a
// whole and resolved into what the runs use (AccuracyConfig).
//
// Flags are checked together: one call reports every bad flag ("--queries=0: must be >= 1;
// --index=quest: allowed page_bounds or wave"), as kvtier-replay and the runtime's
// ValidateOptions do.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/core/options.h"
#include "tools/common/tool_flags.h"

namespace kvtier::accuracy {

// Synthetic inputs: the queries are those of the last kSyntheticQuerySpan positions, as in
// the learned-attention dumps (their last 256 positions).
inline constexpr int kSyntheticQuerySpan = 256;

// The flags as the user gave them.
struct AccuracyFlags {
  std::vector<std::string> dumps;  // --dump, repeatable: learned-attention dumps (.npz)
  bool synthetic = false;          // also (or only) the seeded synthetic workload
  int64_t context = 32768;         // synthetic: tokens of the sequence at its last query
  int needles = 0;                 // synthetic: planted needle keys
  // synthetic: tokens decoded between the prefill and the first query (the drift of an index
  // as generation goes on: 0 is right after prefill)
  int64_t generated = 0;
  std::string index = "page_bounds";  // page_bounds or wave; a comma list with --sweep
  double budget_fraction = 0.02;      // retrieval budget: share of the cold tokens, in (0, 1]
  double estimate_fraction = 0;       // estimation zone: share of the cold tokens, in [0, 1]
  bool value_shift = true;            // Options::budget.value_shift
  double mass_target = 0;             // 0, or in (0, 1]: select by estimated mass (wave)
  int page_size = 16;
  int sink = 64;
  int window = 1024;
  std::string backend = "auto";  // auto, cuda or host
  int device = 0;
  uint64_t seed = 1;  // synthetic workload and needle placement
  int queries = 32;   // queries evaluated per input, evenly spaced
  std::string sweep;  // "": one run per input; else a comma list of budget fractions
  std::string csv = "accuracy_sweep.csv";  // sweep: the table written
  std::string png = "accuracy_sweep.png";  // sweep: the plot ("": no plot)
};

// What the runs use: every field checked.
struct AccuracyConfig {
  std::vector<std::string> dumps;
  bool synthetic = false;
  int64_t synthetic_context = 0;
  int needles = 0;
  int64_t generated = 0;
  std::vector<IndexKind> indexes;        // distinct, in the order given
  std::vector<double> budget_fractions;  // distinct, ascending with --sweep
  bool sweep = false;
  // Apply to the indexes that have them (wave); the page_bounds runs of a mixed --index list
  // use 0 (a note says so).
  double estimate_fraction = 0;
  bool value_shift = true;
  double mass_target = 0;
  int page_size = 0;
  int sink_tokens = 0;
  int window_tokens = 0;
  Backend backend = Backend::kHost;
  bool backend_auto = false;
  int device_id = 0;
  uint64_t seed = 0;
  int queries = 0;
  std::string csv_path;
  std::string png_path;
  std::vector<std::string> notes;  // things a reader of the report should know

  // Whether the index kind takes the estimation zone and the mass target.
  static bool HasEstimation(IndexKind index) { return index == IndexKind::kWave; }
};

// Takes every occurrence of a repeatable string flag out of `args` (argv, args[0] the program),
// in order, up to a "--": "--NAME=VALUE", "-NAME=VALUE", and "--NAME VALUE" (the next
// argument). Values are kept whole (a path may hold commas). False, with the bare flag in
// `bad`, when the last argument is a bare --NAME without a value; args is then unchanged.
bool TakeRepeatedFlag(std::vector<char*>& args, absl::string_view name,
                      std::vector<std::string>* values, std::string* bad);

// Checks every flag. InvalidArgument listing every bad flag as "--flag=value: what is
// allowed", separated by "; "; FailedPrecondition for --backend=cuda without CUDA (build or
// device).
absl::StatusOr<AccuracyConfig> MakeAccuracyConfig(const AccuracyFlags& flags,
                                                  const tools::DeviceFacts& facts);

}  // namespace kvtier::accuracy
