// Trace readers (trace.h): lines, options, ordering and the request list; each format's line
// parser is in azure_trace.cc / mooncake_trace.cc.
#include "tools/workload/trace.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tools/workload/trace_lines.h"

namespace kvtier {
namespace {

absl::Status CheckOptions(const TraceOptions& o) {
  if (o.max_requests < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace: max_requests is ", o.max_requests, "; expected >= 0 (0: all)"));
  }
  if (!std::isfinite(o.time_scale) || o.time_scale <= 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace: time_scale is ", o.time_scale, "; expected a finite number > 0"));
  }
  if (o.max_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("trace: max_context is ", o.max_context, "; expected >= 0 (0: no limit)"));
  }
  return absl::OkStatus();
}

bool IsBlank(absl::string_view line) {
  for (char c : line) {
    if (c != ' ' && c != '\t') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<TraceFormat> ParseTraceFormat(absl::string_view name) {
  if (name == "azure") return TraceFormat::kAzureCsv;
  if (name == "mooncake") return TraceFormat::kMooncakeJsonl;
  return absl::InvalidArgumentError(
      absl::StrCat("trace format \"", name, "\" is not known; expected azure or mooncake"));
}

absl::StatusOr<TraceFormat> TraceFormatOfPath(absl::string_view path) {
  if (absl::EndsWithIgnoreCase(path, ".csv")) return TraceFormat::kAzureCsv;
  if (absl::EndsWithIgnoreCase(path, ".jsonl")) return TraceFormat::kMooncakeJsonl;
  return absl::InvalidArgumentError(
      absl::StrCat("trace ", path,
                   ": the extension names no format (.csv: azure, .jsonl: mooncake); give "
                   "--trace_format=azure|mooncake"));
}

absl::string_view TraceFormatName(TraceFormat format) {
  return format == TraceFormat::kAzureCsv ? "azure" : "mooncake";
}

absl::StatusOr<Trace> ParseTrace(absl::string_view text, TraceFormat format,
                                 const TraceOptions& options, absl::string_view source) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  Trace trace;
  trace.format = format;
  bool header_seen = format != TraceFormat::kAzureCsv;
  int64_t first_ns = 0, last_ns = 0;
  int64_t last_line = 0;
  int64_t line_number = 0;
  size_t at = 0;
  while (at < text.size()) {
    if (options.max_requests > 0 &&
        static_cast<int64_t>(trace.requests.size()) >= options.max_requests) {
      break;
    }
    size_t end = text.find('\n', at);
    if (end == absl::string_view::npos) end = text.size();
    absl::string_view line = text.substr(at, end - at);
    at = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (IsBlank(line)) continue;
    auto where = [&] { return absl::StrCat(source, ":", line_number, ": "); };
    if (!header_seen) {  // the Azure header: a file-level error, never skipped
      if (line != internal::kAzureHeader) {
        return absl::InvalidArgumentError(
            absl::StrCat(where(), "expected the header ", internal::kAzureHeader, " (Azure CSV)"));
      }
      header_seen = true;
      continue;
    }
    ++trace.data_lines;
    absl::StatusOr<internal::TraceLine> parsed = format == TraceFormat::kAzureCsv
                                                     ? internal::ParseAzureRow(line)
                                                     : internal::ParseMooncakeLine(line);
    if (parsed.ok() && !trace.requests.empty() && parsed->time_ns < last_ns) {
      parsed = absl::InvalidArgumentError(
          absl::StrCat("the time is ", (last_ns - parsed->time_ns) / 1e6, " ms before line ",
                       last_line, "'s; the trace must be in arrival order"));
    }
    if (!parsed.ok()) {
      const std::string error = absl::StrCat(where(), parsed.status().message());
      if (!options.skip_bad_lines) return absl::InvalidArgumentError(error);
      if (trace.bad_lines++ == 0) trace.first_bad_line = error;
      continue;
    }
    TraceRequest request;
    request.line = line_number;
    request.stated_input_tokens = parsed->input_tokens;
    request.input_tokens = parsed->input_tokens;
    request.output_tokens = parsed->output_tokens;
    request.hash_ids = std::move(parsed->hash_ids);
    if (options.max_context > 0 && request.input_tokens > options.max_context) {
      if (options.long_prompts == LongPrompts::kSkip) {
        ++trace.skipped;
        continue;
      }
      ++trace.clipped;
      request.input_tokens = options.max_context;
      if (!request.hash_ids.empty()) {
        request.hash_ids.resize(static_cast<size_t>(
            (options.max_context + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens));
      }
    }
    if (trace.requests.empty()) first_ns = parsed->time_ns;
    last_ns = parsed->time_ns;
    last_line = line_number;
    request.arrival_s = static_cast<double>(parsed->time_ns - first_ns) / 1e9 / options.time_scale;
    trace.requests.push_back(std::move(request));
  }
  if (!header_seen) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": empty; expected the header ", internal::kAzureHeader));
  }
  if (trace.data_lines == 0) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no requests (no data lines)"));
  }
  return trace;
}

absl::StatusOr<Trace> ReadTrace(const std::string& path, std::optional<TraceFormat> format,
                                const TraceOptions& options) {
  if (!format.has_value()) {
    absl::StatusOr<TraceFormat> from_path = TraceFormatOfPath(path);
    if (!from_path.ok()) return from_path.status();
    format = *from_path;
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    const int error = errno;
    const std::string message =
        absl::StrCat("trace ", path, ": cannot open: ", std::strerror(error));
    return error == ENOENT ? absl::NotFoundError(message) : absl::FailedPreconditionError(message);
  }
  std::ostringstream contents;
  contents << file.rdbuf();
  if (file.bad()) return absl::DataLossError(absl::StrCat("trace ", path, ": read failed"));
  return ParseTrace(contents.str(), *format, options, path);
}

}  // namespace kvtier
