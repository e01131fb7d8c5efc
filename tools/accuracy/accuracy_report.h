// How kvtier-accuracy shows its runs: a table for people, a JSON array for scripts (one
// object per run, stable keys below), a CSV for sweeps, and the sweep's plot, drawn by
// scripts/plot_accuracy.py with matplotlib.
//
// JSON keys of each object (numbers; null for NaN; estimate_rest a boolean, 1 / 0 in the CSV;
// "error" null or the failure's message):
//   dump, index, backend, context, cold_tokens, budget_fraction, budget_pages,
//   estimate_fraction, estimate_pages, estimate_rest, mass_target, queries, query_heads,
//   mean_output_error, p95_output_error, max_output_error, nonfinite_outputs,
//   max_restricted_error, mean_mass_captured, min_mass_captured, mean_oracle_mass,
//   needles_found, needles_planted, tokens_retrieved, tokens_estimated, seconds, error, notes
// The CSV has the same columns except notes, in that order, one row per run.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tools/accuracy/accuracy_config.h"
#include "tools/accuracy/accuracy_run.h"
#include "tools/common/plot_command.h"

namespace kvtier::accuracy {

// The table: what ran (inputs, hot set, backend), one line per run, then failures and notes.
void PrintTable(const AccuracyConfig& config, const std::vector<RunResult>& runs,
                std::ostream& out);

// One JSON array, one object per run.
void PrintJson(const std::vector<RunResult>& runs, std::ostream& out);

// The CSV (header line, then one line per run; fields quoted where they need it).
void WriteCsv(const std::vector<RunResult>& runs, std::ostream& out);
// The same into `path`. Internal naming the path when it cannot be written.
absl::Status WriteCsvFile(const std::vector<RunResult>& runs, const std::string& path);

// The sweep's plot: scripts/plot_accuracy.py run on the CSV (tools/common/plot_command.h).
using tools::Plot;
using tools::PlotCommand;
using tools::PlotPython;

}  // namespace kvtier::accuracy
