// What the trace fuzz targets check on any input (tests/fuzz/*_trace_fuzz.cc): ParseTrace,
// under options taken from the input's first byte, either succeeds with a consistent request
// list or fails with InvalidArgument and a message; the line parser does the same on the
// whole input as one line. Anything else (a crash, a sanitizer report, another status, an
// inconsistent result) stops the fuzzer through __builtin_trap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "tools/workload/trace.h"
#include "tools/workload/trace_lines.h"

namespace kvtier::fuzz {

// Says which check failed, then traps (libFuzzer keeps the input as a crash-* file).
#define KVTIER_FUZZ_CHECK(condition)                                                     \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      __builtin_trap();                                                                  \
    }                                                                                    \
  } while (false)

inline void FuzzTrace(const uint8_t* data, size_t size, TraceFormat format) {
  if (size == 0) return;
  const uint8_t knobs = data[0];
  const absl::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  TraceOptions options;
  options.skip_bad_lines = (knobs & 1) != 0;
  options.long_prompts = (knobs & 2) != 0 ? LongPrompts::kSkip : LongPrompts::kClip;
  options.max_context = (knobs & 4) != 0 ? 600 : 0;
  options.max_requests = (knobs & 8) != 0 ? 3 : 0;
  options.time_scale = (knobs & 16) != 0 ? 7.5 : 1.0;

  const absl::StatusOr<Trace> trace = ParseTrace(text, format, options, "fuzz");
  if (!trace.ok()) {
    KVTIER_FUZZ_CHECK(trace.status().code() == absl::StatusCode::kInvalidArgument);
    KVTIER_FUZZ_CHECK(!trace.status().message().empty());
  } else {
    KVTIER_FUZZ_CHECK(trace->format == format);
    KVTIER_FUZZ_CHECK(options.max_requests == 0 ||
                      static_cast<int64_t>(trace->requests.size()) <= options.max_requests);
    KVTIER_FUZZ_CHECK(static_cast<int64_t>(trace->requests.size()) + trace->bad_lines +
                          trace->skipped <=
                      trace->data_lines);
    KVTIER_FUZZ_CHECK(options.skip_bad_lines || trace->bad_lines == 0);
    KVTIER_FUZZ_CHECK((trace->bad_lines > 0) == !trace->first_bad_line.empty());
    double last = 0.0;
    int64_t last_line = 0;
    for (const TraceRequest& r : trace->requests) {
      KVTIER_FUZZ_CHECK(r.arrival_s >= last && r.line > last_line);
      last = r.arrival_s;
      last_line = r.line;
      KVTIER_FUZZ_CHECK(r.input_tokens >= 1 && r.input_tokens <= r.stated_input_tokens);
      KVTIER_FUZZ_CHECK(r.stated_input_tokens <= kMaxTraceTokens);
      KVTIER_FUZZ_CHECK(r.output_tokens >= 1 && r.output_tokens <= kMaxTraceTokens);
      KVTIER_FUZZ_CHECK(options.max_context == 0 || r.input_tokens <= options.max_context);
      if (format == TraceFormat::kMooncakeJsonl) {
        KVTIER_FUZZ_CHECK(static_cast<int64_t>(r.hash_ids.size()) ==
                          (r.input_tokens + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens);
      } else {
        KVTIER_FUZZ_CHECK(r.hash_ids.empty());
      }
    }
  }

  const absl::StatusOr<internal::TraceLine> line = format == TraceFormat::kAzureCsv
                                                       ? internal::ParseAzureRow(text)
                                                       : internal::ParseMooncakeLine(text);
  if (!line.ok()) {
    KVTIER_FUZZ_CHECK(line.status().code() == absl::StatusCode::kInvalidArgument);
  } else {
    KVTIER_FUZZ_CHECK(line->input_tokens >= 1 && line->output_tokens >= 1);
  }
}

}  // namespace kvtier::fuzz
