// Real serving traces (../shared/data/traces/README.md gives the formats): request arrivals
// with prompt and output lengths, read from the Azure LLM inference CSV or the Mooncake
// conversation JSONL, for trace replay. The readers are strict: a line that does not follow
// its format is an error naming the source, the line number and what was wrong, unless the
// caller asks to skip and count such lines. Nothing here allocates device memory or depends on
// the runtime; the same code runs under the fuzz targets (tests/fuzz).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace kvtier {

// Tokens of one Mooncake hash block: hash_ids[i] names prompt tokens [512 i, 512 (i + 1)).
inline constexpr int64_t kMooncakeBlockTokens = 512;
// The longest prompt or output a line may state (int32, as the runtime counts tokens).
inline constexpr int64_t kMaxTraceTokens = 2147483647;

enum class TraceFormat { kAzureCsv, kMooncakeJsonl };

// What to do with a prompt longer than TraceOptions::max_context.
enum class LongPrompts { kClip, kSkip };

struct TraceOptions {
  int64_t max_requests = 0;  // 0: every request; N > 0: the first N kept (skipped ones not counted)
  double time_scale = 1.0;   // finite, > 0: arrivals come time_scale times faster
  int64_t max_context = 0;   // 0: no limit; N > 0: longer prompts are clipped to N or skipped
  LongPrompts long_prompts = LongPrompts::kClip;
  bool skip_bad_lines = false;  // false: the first malformed line is an error
};

struct TraceRequest {
  int64_t line = 0;                 // 1-based line of the source it came from
  double arrival_s = 0.0;           // after the first kept request, divided by time_scale
  int64_t input_tokens = 0;         // prompt tokens, >= 1 (after clipping)
  int64_t output_tokens = 0;        // tokens to generate, >= 1
  int64_t stated_input_tokens = 0;  // the prompt as the trace states it (before clipping)
  // Mooncake: the prompt's block hashes (a shared prefix shares its leading ids), clipped
  // with the prompt to ceil(input_tokens / 512); empty for Azure.
  std::vector<int64_t> hash_ids;
};

struct Trace {
  TraceFormat format = TraceFormat::kAzureCsv;
  std::vector<TraceRequest> requests;  // in arrival order (arrival_s non-decreasing)
  int64_t data_lines = 0;              // lines read (not the header, not blank lines)
  int64_t bad_lines = 0;               // malformed lines skipped (skip_bad_lines)
  std::string first_bad_line;          // the first skipped line's error, when bad_lines > 0
  int64_t clipped = 0;                 // prompts clipped to max_context
  int64_t skipped = 0;                 // prompts longer than max_context skipped
};

// "azure" or "mooncake"; InvalidArgument naming the accepted names otherwise.
absl::StatusOr<TraceFormat> ParseTraceFormat(absl::string_view name);
// From the path's extension: .csv is Azure, .jsonl Mooncake; InvalidArgument otherwise (the
// message says to pass the format).
absl::StatusOr<TraceFormat> TraceFormatOfPath(absl::string_view path);
absl::string_view TraceFormatName(TraceFormat format);

// Parses a whole trace held in memory; `source` names it in errors ("source:line: what").
// InvalidArgument for bad options, a missing or wrong Azure header, a source without data
// lines, or (without skip_bad_lines) the first malformed line: a field missing, extra or of the
// wrong type, a count outside [1, kMaxTraceTokens], an impossible timestamp, a timestamp
// earlier than the previous kept request's, or Mooncake hash_ids whose length is not
// ceil(input_length / 512). Lines end with \n or \r\n; the last may lack it.
absl::StatusOr<Trace> ParseTrace(absl::string_view text, TraceFormat format,
                                 const TraceOptions& options, absl::string_view source);

// Reads and parses the file at `path` (format from its extension when not given). NotFound or
// the OS's error for a file that cannot be read, then ParseTrace's errors.
absl::StatusOr<Trace> ReadTrace(const std::string& path, std::optional<TraceFormat> format,
                                const TraceOptions& options);

}  // namespace kvtier
