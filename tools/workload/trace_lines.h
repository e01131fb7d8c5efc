// One line of a serving trace, as each format's parser reads it (trace.h's readers are built
// on these). Internal to tools/workload and its tests and fuzz targets.
#pragma once

#include <cstdint>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace kvtier::internal {

struct TraceLine {
  int64_t time_ns = 0;  // Azure: since the Unix epoch (the civil time read as UTC); Mooncake:
                        // since the trace's start
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  std::vector<int64_t> hash_ids;  // Mooncake only
};

inline constexpr absl::string_view kAzureHeader = "TIMESTAMP,ContextTokens,GeneratedTokens";

// "2023-11-16 18:15:46.6805900,374,44": a timestamp YYYY-MM-DD HH:MM:SS with 0 to 9 fractional
// digits (a real date and time of day, years 1970 to 2261), then the prompt and output token
// counts, each digits only in [1, kMaxTraceTokens]. InvalidArgument saying which field is wrong and
// how.
absl::StatusOr<TraceLine> ParseAzureRow(absl::string_view line);

// {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, ...]}: one
// JSON object (keys in any order, each once; other keys' values skipped, nested at most 32
// deep), timestamp a non-negative number of milliseconds, the lengths integers in
// [1, kMaxTraceTokens], hash_ids non-negative integers, ceil(input_length / 512) of them.
// InvalidArgument saying what is wrong and at which byte of the line.
absl::StatusOr<TraceLine> ParseMooncakeLine(absl::string_view line);

}  // namespace kvtier::internal
