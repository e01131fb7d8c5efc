#include "tools/probe/probe_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/common/json_text.h"

namespace kvtier::probe {
namespace {

// Three significant digits or so: 3015, 54.8, 2.80, 0.512.
std::string FormatValue(double value) {
  const double magnitude = std::fabs(value);
  if (magnitude >= 100) return absl::StrFormat("%.0f", value);
  if (magnitude >= 10) return absl::StrFormat("%.1f", value);
  if (magnitude >= 1) return absl::StrFormat("%.2f", value);
  return absl::StrFormat("%.3f", value);
}

using tools::JsonNumber;
using tools::JsonString;

}  // namespace

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[(values.size() - 1) / 2];
}

std::string FormatBytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  if (value == std::floor(value)) return absl::StrFormat("%.0f %s", value, kUnits[unit]);
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

void PrintTable(const ProbeReport& report, std::ostream& out) {
  out << "kvtier-probe: measured ceilings (median of " << report.options.repetitions
      << " timed runs after a warm-up; bulk copies of " << FormatBytes(report.options.bytes)
      << ")\n\n";
  size_t key_width = 0;
  for (const auto& [key, value] : report.info) key_width = std::max(key_width, key.size());
  for (const auto& [key, value] : report.info) {
    out << absl::StrFormat("%-*s  %s\n", static_cast<int>(key_width), key, value);
  }
  if (!report.info.empty()) out << "\n";

  if (!report.rows.empty()) {
    size_t name_width = 11, value_width = 5, unit_width = 4;
    std::vector<std::string> values;
    for (const ProbeRow& row : report.rows) {
      values.push_back(FormatValue(row.value));
      name_width = std::max(name_width, row.name.size());
      value_width = std::max(value_width, values.back().size());
      unit_width = std::max(unit_width, row.unit.size());
    }
    const auto line = [&](const std::string& name, const std::string& value,
                          const std::string& unit, const std::string& note) {
      std::string text = absl::StrFormat("%-*s  %*s  %-*s  %s", static_cast<int>(name_width), name,
                                         static_cast<int>(value_width), value,
                                         static_cast<int>(unit_width), unit, note);
      text.erase(text.find_last_not_of(' ') + 1);
      out << text << "\n";
    };
    line("measurement", "value", "unit", "note");
    for (size_t i = 0; i < report.rows.size(); ++i) {
      const ProbeRow& row = report.rows[i];
      line(row.name, values[i], row.unit, row.note);
    }
  }
  for (const std::string& note : report.notes) out << "\n" << note << "\n";
}

void PrintJson(const ProbeReport& report, std::ostream& out) {
  out << "{\n  \"options\": {\"bytes\": " << report.options.bytes
      << ", \"repetitions\": " << report.options.repetitions
      << ", \"device\": " << report.options.device << "},\n";
  out << "  \"info\": {";
  for (size_t i = 0; i < report.info.size(); ++i) {
    out << (i == 0 ? "\n" : ",\n") << "    " << JsonString(report.info[i].first) << ": "
        << JsonString(report.info[i].second);
  }
  out << (report.info.empty() ? "},\n" : "\n  },\n");
  out << "  \"rows\": [";
  for (size_t i = 0; i < report.rows.size(); ++i) {
    const ProbeRow& row = report.rows[i];
    out << (i == 0 ? "\n" : ",\n") << "    {\"id\": " << JsonString(row.id)
        << ", \"name\": " << JsonString(row.name) << ", \"value\": " << JsonNumber(row.value)
        << ", \"unit\": " << JsonString(row.unit) << ", \"note\": " << JsonString(row.note) << "}";
  }
  out << (report.rows.empty() ? "],\n" : "\n  ],\n");
  out << "  \"notes\": [";
  for (size_t i = 0; i < report.notes.size(); ++i) {
    out << (i == 0 ? "" : ", ") << JsonString(report.notes[i]);
  }
  out << "]";
  if (!report.error.empty()) out << ",\n  \"error\": " << JsonString(report.error);
  out << "\n}\n";
}

}  // namespace kvtier::probe
