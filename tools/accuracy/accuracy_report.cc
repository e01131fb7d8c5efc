#include "tools/accuracy/accuracy_report.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/common/json_text.h"
#include "tools/common/tool_flags.h"

namespace kvtier::accuracy {
namespace {

using tools::JsonNumber;
using tools::JsonObject;
using tools::JsonString;

// "0.9241", "nan": shares with the digits that tell 0.990 from 0.999.
std::string Share(double value) {
  return std::isfinite(value) ? absl::StrFormat("%.4f", value) : "nan";
}
// "5.31%", "nan".
std::string Percent(double value) {
  return std::isfinite(value) ? absl::StrFormat("%.2f%%", 100 * value) : "nan";
}
// "1.2e-06", "nan".
std::string Small(double value) {
  return std::isfinite(value) ? absl::StrFormat("%.1e", value) : "nan";
}
std::string Tokens(double value) {
  return std::isfinite(value) ? absl::StrFormat("%.0f", value) : "nan";
}

// A CSV field: quoted when it holds a comma, a quote or a line break.
std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}
// A CSV number: empty for NaN, so that readers see a missing value.
std::string CsvNumber(double value) {
  return std::isfinite(value) ? absl::StrFormat("%.6g", value) : "";
}

std::string ErrorText(const RunResult& r) { return std::string(r.status.message()); }

// Column names and values of one run, in the documented order (notes excluded).
struct Column {
  const char* name;
  std::string json;
  std::string csv;
};
std::vector<Column> Columns(const RunResult& r) {
  const auto num = [](const char* name, double v) {
    return Column{name, JsonNumber(v), CsvNumber(v)};
  };
  const auto integer = [](const char* name, int64_t v) {
    return Column{name, absl::StrCat(v), absl::StrCat(v)};
  };
  const auto str = [](const char* name, const std::string& v) {
    return Column{name, JsonString(v), CsvField(v)};
  };
  const auto boolean = [](const char* name, bool v) {
    return Column{name, v ? "true" : "false", v ? "1" : "0"};
  };
  return {
      str("dump", r.input),
      str("index", IndexKindName(r.spec.index)),
      str("backend", tools::BackendName(r.spec.backend)),
      integer("context", r.context),
      integer("cold_tokens", r.cold_tokens),
      num("budget_fraction", r.spec.budget_fraction),
      integer("budget_pages", r.budget_pages),
      num("estimate_fraction", r.spec.estimate_fraction),
      integer("estimate_pages", r.estimate_pages),
      boolean("estimate_rest", r.estimate_rest),
      boolean("value_shift", r.spec.value_shift),
      num("mass_target", r.spec.mass_target),
      integer("queries", r.queries),
      integer("query_heads", r.query_heads),
      num("mean_output_error", r.output_error.count > 0 ? r.output_error.mean : NAN),
      num("p95_output_error", r.output_error.count > 0 ? r.output_error.p95 : NAN),
      num("max_output_error", r.output_error.count > 0 ? r.output_error.max : NAN),
      integer("nonfinite_outputs", r.output_error.non_finite),
      num("max_restricted_error", r.max_restricted_error),
      num("mean_mass_captured", r.mean_mass_captured),
      num("min_mass_captured", r.min_mass_captured),
      num("mean_oracle_mass", r.mean_oracle_mass),
      integer("needles_found", r.needles_found),
      integer("needles_planted", r.needles_planted),
      num("tokens_retrieved", r.tokens_retrieved),
      num("tokens_estimated", r.tokens_estimated),
      num("seconds", r.seconds),
      Column{"error", r.status.ok() ? "null" : JsonString(ErrorText(r)),
             r.status.ok() ? "" : CsvField(ErrorText(r))},
  };
}

}  // namespace

void PrintTable(const AccuracyConfig& c, const std::vector<RunResult>& runs, std::ostream& out) {
  out << "kvtier-accuracy: hot set " << c.sink_tokens << " sink + " << c.window_tokens
      << " window tokens, pages of " << c.page_size << ", " << c.queries
      << " evaluated queries per input, backend " << tools::BackendName(c.backend)
      << (c.backend_auto ? " (auto)" : "") << "\n";
  out << "budget: a share of the cold tokens of the last evaluated query's context, in pages; "
         "mass: exact softmax mass on the hot set + retrieved tokens; error: relative L2 of "
         "the output per query head\n\n";
  out << absl::StrFormat("%-22s %-11s %6s %6s %5s %7s %7s %7s %8s %8s %8s %9s %9s %9s %7s\n",
                         "input", "index", "budget", "pages", "est", "mass", "min", "oracle",
                         "err mean", "err p95", "err max", "needles", "retrieved", "estimated",
                         "secs");
  for (const RunResult& r : runs) {
    std::string name = std::filesystem::path(r.input).stem().string();
    if (name.size() > 22) name = name.substr(0, 19) + "...";
    if (!r.status.ok()) {
      out << absl::StrFormat("%-22s %-11s %6s  failed: see below\n", name,
                             IndexKindName(r.spec.index), Share(r.spec.budget_fraction));
      continue;
    }
    const std::string needles = r.needles_planted > 0
                                    ? absl::StrCat(r.needles_found, "/", r.needles_planted)
                                    : std::string("-");
    out << absl::StrFormat(
        "%-22s %-11s %6s %6d %5s %7s %7s %7s %8s %8s %8s %9s %9s %9s %7.1f\n", name,
        IndexKindName(r.spec.index), Share(r.spec.budget_fraction), r.budget_pages,
        r.estimate_rest ? std::string("rest") : absl::StrCat(r.estimate_pages),
        Share(r.mean_mass_captured), Share(r.min_mass_captured), Share(r.mean_oracle_mass),
        Percent(r.output_error.mean), Percent(r.output_error.p95), Percent(r.output_error.max),
        needles, Tokens(r.tokens_retrieved), Tokens(r.tokens_estimated), r.seconds);
  }
  bool header = false;
  for (const RunResult& r : runs) {
    if (r.status.ok()) continue;
    if (!header) out << "\nfailed runs\n";
    header = true;
    out << "  " << r.input << ", " << IndexKindName(r.spec.index) << " at "
        << r.spec.budget_fraction << ": " << r.status << "\n";
  }
  for (const RunResult& r : runs) {
    double restricted = r.max_restricted_error;
    if (r.status.ok() && r.estimate_pages == 0 && !r.estimate_rest && std::isfinite(restricted) &&
        restricted > 1e-3) {
      out << "\nnote: " << r.input << " (" << IndexKindName(r.spec.index)
          << "): the output differs from exact attention over the attended tokens by "
          << Small(restricted) << ": more than rounding\n";
    }
    for (const workload::Needle& n : r.needles_missed) {
      out << "\nnote: " << r.input << " (" << IndexKindName(r.spec.index) << " at "
          << r.spec.budget_fraction << "): needle at " << n.key_position << " (KV head "
          << n.kv_head << ") not attended by the query at " << n.query_position << "\n";
    }
  }
  std::vector<std::string> notes = c.notes;
  for (const RunResult& r : runs) {
    for (const std::string& note : r.notes) {
      if (std::find(notes.begin(), notes.end(), note) == notes.end()) notes.push_back(note);
    }
  }
  for (const std::string& note : notes) out << "\nnote: " << note << "\n";
}

void PrintJson(const std::vector<RunResult>& runs, std::ostream& out) {
  out << "[";
  for (size_t i = 0; i < runs.size(); ++i) {
    out << (i == 0 ? "\n  " : ",\n  ");
    JsonObject object(out, 2);
    for (const Column& column : Columns(runs[i])) object.Raw(column.name, column.json);
    std::vector<std::string> notes;
    for (const std::string& note : runs[i].notes) notes.push_back(JsonString(note));
    object.Raw("notes", absl::StrCat("[", absl::StrJoin(notes, ", "), "]"));
    object.Close();
  }
  out << (runs.empty() ? "]\n" : "\n]\n");
}

void WriteCsv(const std::vector<RunResult>& runs, std::ostream& out) {
  std::vector<std::string> names;
  for (const Column& column : Columns(RunResult{})) names.push_back(column.name);
  out << absl::StrJoin(names, ",") << "\n";
  for (const RunResult& r : runs) {
    std::vector<std::string> fields;
    for (const Column& column : Columns(r)) fields.push_back(column.csv);
    out << absl::StrJoin(fields, ",") << "\n";
  }
}

absl::Status WriteCsvFile(const std::vector<RunResult>& runs, const std::string& path) {
  std::ofstream file(path);
  WriteCsv(runs, file);
  file.close();
  if (!file) return absl::InternalError(absl::StrCat("cannot write the CSV ", path));
  return absl::OkStatus();
}

}  // namespace kvtier::accuracy
