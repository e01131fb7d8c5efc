// What kvtier-probe measured, and how it is printed: a table for people, JSON for the
// performance model and scripts.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace kvtier::probe {

struct ProbeOptions {
  int64_t bytes = int64_t{1} << 30;  // size of each bulk copy and of the page-read buffer
  int repetitions = 5;               // timed runs per row (after one warm-up); median kept
  int device = 0;                    // CUDA device measured
};

// One measured ceiling. `id` is stable across versions (scripts look rows up by it); `name`
// and `note` are for people.
struct ProbeRow {
  std::string id;
  std::string name;
  double value = 0;
  std::string unit;
  std::string note;
};

struct ProbeReport {
  ProbeOptions options;
  // Facts about the machine, in print order: ("gpu", "NVIDIA H100 ..."), ...
  std::vector<std::pair<std::string, std::string>> info;
  std::vector<ProbeRow> rows;
  std::vector<std::string> notes;  // e.g. "no CUDA device: GPU rows skipped"
  std::string error;               // set when a measurement failed; rows so far are kept

  void AddInfo(std::string key, std::string value) {
    info.emplace_back(std::move(key), std::move(value));
  }
  void AddRow(ProbeRow row) { rows.push_back(std::move(row)); }
};

// The median of `values` (the lower middle for an even count); 0 for none.
double Median(std::vector<double> values);

// "1 GiB", "512 B", "4 KiB", "1.5 MiB".
std::string FormatBytes(int64_t bytes);

void PrintTable(const ProbeReport& report, std::ostream& out);
void PrintJson(const ProbeReport& report, std::ostream& out);

}  // namespace kvtier::probe
