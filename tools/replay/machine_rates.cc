#include "tools/replay/machine_rates.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier::tools {
namespace {

// The report's rows are flat objects {"id": "...", "name": "...", "value": N, "unit": "...",
// "note": "..."} (probe_report.h's PrintJson). This finds the flat object whose "id" is `id`
// and returns its "value" and "unit" texts; strings are skipped whole, so braces or quotes in
// a note do not confuse it.
struct Row {
  bool found = false;
  std::string value;  // the number's text
  std::string unit;
};

bool ReadString(absl::string_view text, size_t& at, std::string* out) {
  if (at >= text.size() || text[at] != '"') return false;
  out->clear();
  for (++at; at < text.size(); ++at) {
    const char c = text[at];
    if (c == '"') {
      ++at;
      return true;
    }
    if (c == '\\') {
      if (++at >= text.size()) return false;
      out->push_back(text[at]);  // escapes kept as the escaped character: enough for ids
      continue;
    }
    out->push_back(c);
  }
  return false;
}

void SkipSpace(absl::string_view text, size_t& at) {
  while (at < text.size() &&
         (text[at] == ' ' || text[at] == '\n' || text[at] == '\r' || text[at] == '\t')) {
    ++at;
  }
}

// Parses the flat object starting at text[at] == '{' into key -> scalar text pairs, looking
// for "id", "value" and "unit". Returns false when the object is not flat or not well formed
// (the caller then moves on).
bool ParseFlatObject(absl::string_view text, size_t at, std::string* id, std::string* value,
                     std::string* unit) {
  ++at;  // '{'
  while (true) {
    SkipSpace(text, at);
    std::string key;
    if (!ReadString(text, at, &key)) return false;
    SkipSpace(text, at);
    if (at >= text.size() || text[at] != ':') return false;
    ++at;
    SkipSpace(text, at);
    std::string scalar;
    if (at < text.size() && text[at] == '"') {
      if (!ReadString(text, at, &scalar)) return false;
    } else {
      const size_t start = at;
      while (at < text.size() && text[at] != ',' && text[at] != '}' && text[at] != '{' &&
             text[at] != '[' && text[at] != ' ' && text[at] != '\n') {
        ++at;
      }
      if (at < text.size() && (text[at] == '{' || text[at] == '[')) return false;  // not flat
      scalar = std::string(text.substr(start, at - start));
    }
    if (key == "id") *id = scalar;
    if (key == "value") *value = scalar;
    if (key == "unit") *unit = scalar;
    SkipSpace(text, at);
    if (at >= text.size()) return false;
    if (text[at] == '}') return true;
    if (text[at] != ',') return false;
    ++at;
  }
}

Row FindRow(absl::string_view text, absl::string_view id) {
  Row row;
  for (size_t at = 0; at < text.size(); ++at) {
    if (text[at] == '"') {  // skip strings outside objects' starts
      std::string ignored;
      if (!ReadString(text, at, &ignored)) break;
      --at;
      continue;
    }
    if (text[at] != '{') continue;
    std::string found_id, value, unit;
    if (ParseFlatObject(text, at, &found_id, &value, &unit) && found_id == id) {
      row.found = true;
      row.value = value;
      row.unit = unit;
      return row;
    }
  }
  return row;
}

absl::StatusOr<double> RateRow(absl::string_view json, absl::string_view source,
                               absl::string_view id) {
  const Row row = FindRow(json, id);
  if (!row.found) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": no row \"", id, "\"; expected a kvtier-probe --json report of a GPU machine"));
  }
  double gbps = 0;
  const char* begin = row.value.data();
  const char* end = begin + row.value.size();
  const auto [stop, error] = std::from_chars(begin, end, gbps);
  if (error != std::errc() || stop != end || !std::isfinite(gbps) || !(gbps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": row \"", id, "\" has value \"",
                                                   row.value, "\"; expected a number > 0"));
  }
  if (row.unit != "GB/s") {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": row \"", id, "\" has unit \"", row.unit, "\"; expected GB/s"));
  }
  return gbps * 1e9;
}

}  // namespace

absl::StatusOr<ProbeRates> ParseProbeRates(absl::string_view json, absl::string_view source) {
  if (json.find("\"rows\"") == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no \"rows\"; expected a kvtier-probe --json report"));
  }
  ProbeRates rates;
  absl::StatusOr<double> hbm = RateRow(json, source, "d2d_copy");
  if (!hbm.ok()) return hbm.status();
  absl::StatusOr<double> pcie = RateRow(json, source, "pinned_h2d");
  if (!pcie.ok()) return pcie.status();
  rates.hbm_bytes_per_second = *hbm;
  rates.pcie_bytes_per_second = *pcie;
  return rates;
}

absl::StatusOr<ProbeRates> ReadProbeRates(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the rates file ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return ParseProbeRates(text.str(), path);
}

std::string DescribeRateSources(const std::string& hbm_source, const std::string& pcie_source) {
  if (hbm_source == pcie_source) return hbm_source;
  return absl::StrCat("HBM: ", hbm_source, "; PCIe: ", pcie_source);
}

std::string DefaultProbeRatesPath() {
  if (const char* cache = std::getenv("XDG_CACHE_HOME"); cache != nullptr && *cache != '\0') {
    return absl::StrCat(cache, "/kvtier/probe.json");
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return absl::StrCat(home, "/.cache/kvtier/probe.json");
  }
  return "";
}

}  // namespace kvtier::tools
