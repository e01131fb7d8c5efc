// The Azure LLM inference CSV's data rows (trace_lines.h).
#include <cstdint>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "tools/workload/trace.h"
#include "tools/workload/trace_lines.h"

namespace kvtier::internal {
namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// `n` digits at text[at...] as a number; false when any is not a digit.
bool Digits(absl::string_view text, size_t at, size_t n, int64_t* value) {
  if (at + n > text.size()) return false;
  int64_t v = 0;
  for (size_t i = at; i < at + n; ++i) {
    if (!IsDigit(text[i])) return false;
    v = v * 10 + (text[i] - '0');
  }
  *value = v;
  return true;
}

// "YYYY-MM-DD HH:MM:SS[.f{1,9}]" as nanoseconds since the Unix epoch, the civil time read as UTC.
absl::StatusOr<int64_t> ParseTimestamp(absl::string_view text) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("TIMESTAMP \"", text, "\" ", why,
                                                   "; expected YYYY-MM-DD HH:MM:SS[.fraction]"));
  };
  int64_t year, month, day, hour, minute, second;
  if (text.size() < 19 || !Digits(text, 0, 4, &year) || text[4] != '-' ||
      !Digits(text, 5, 2, &month) || text[7] != '-' || !Digits(text, 8, 2, &day) ||
      text[10] != ' ' || !Digits(text, 11, 2, &hour) || text[13] != ':' ||
      !Digits(text, 14, 2, &minute) || text[16] != ':' || !Digits(text, 17, 2, &second)) {
    return bad("is not a date and time");
  }
  int64_t fraction_ns = 0;
  if (text.size() > 19) {
    const size_t digits = text.size() - 20;
    if (text[19] != '.' || digits < 1 || digits > 9) return bad("has a bad fraction of a second");
    int64_t fraction;
    if (!Digits(text, 20, digits, &fraction)) return bad("has a bad fraction of a second");
    fraction_ns = fraction;
    for (size_t i = digits; i < 9; ++i) fraction_ns *= 10;
  }
  // CivilSecond normalises out-of-range fields (Feb 30 becomes Mar 2): a changed field is an
  // impossible date or time.
  const absl::CivilSecond civil(year, static_cast<int>(month), static_cast<int>(day),
                                static_cast<int>(hour), static_cast<int>(minute),
                                static_cast<int>(second));
  if (civil.year() != year || civil.month() != month || civil.day() != day ||
      civil.hour() != hour || civil.minute() != minute || civil.second() != second) {
    return bad("is not a real date and time of day");
  }
  // Nanoseconds since 1970 in int64, and every difference of two of them, hold years 1970
  // to 2261.
  if (year < 1970 || year > 2261) return bad("is outside the years 1970 to 2261");
  const int64_t seconds = absl::ToUnixSeconds(absl::FromCivil(civil, absl::UTCTimeZone()));
  return seconds * 1000000000 + fraction_ns;
}

// A token count: digits only, in [1, kMaxTraceTokens].
absl::StatusOr<int64_t> ParseCount(absl::string_view field, absl::string_view name) {
  if (field.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " is empty"));
  int64_t value = 0;
  for (char c : field) {
    if (!IsDigit(c)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " \"", field, "\" is not a count (digits only)"));
    }
    value = value * 10 + (c - '0');
    if (value > kMaxTraceTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " \"", field, "\" is above ", kMaxTraceTokens));
    }
  }
  if (value < 1) return absl::InvalidArgumentError(absl::StrCat(name, " is 0; expected >= 1"));
  return value;
}

}  // namespace

absl::StatusOr<TraceLine> ParseAzureRow(absl::string_view line) {
  const std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
  if (fields.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "has ", fields.size(), " comma-separated fields; expected 3 (", kAzureHeader, ")"));
  }
  TraceLine row;
  absl::StatusOr<int64_t> time = ParseTimestamp(fields[0]);
  if (!time.ok()) return time.status();
  row.time_ns = *time;
  absl::StatusOr<int64_t> input = ParseCount(fields[1], "ContextTokens");
  if (!input.ok()) return input.status();
  absl::StatusOr<int64_t> output = ParseCount(fields[2], "GeneratedTokens");
  if (!output.ok()) return output.status();
  row.input_tokens = *input;
  row.output_tokens = *output;
  return row;
}

}  // namespace kvtier::internal
