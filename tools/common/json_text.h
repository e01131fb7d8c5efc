// JSON text pieces the command-line tools print (kvtier-probe, kvtier-replay,
// kvtier-accuracy).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/strings/string_view.h"

namespace kvtier::tools {

// `s` as a JSON string literal, quotes included (control characters escaped).
std::string JsonString(absl::string_view s);

// `value` with 6 significant digits, or null for NaN and infinities (JSON has neither).
std::string JsonNumber(double value);

// Writes one JSON object to `out` as `"key": value` pairs, one a line, indented by `indent`
// spaces (nested objects: Raw(key, "") then a JsonObject of indent + 2). Close() ends it
// ("{}" when nothing was written). Not thread-safe; `out` must outlive it.
class JsonObject {
 public:
  JsonObject(std::ostream& out, int indent) : out_(out), indent_(indent) {}
  // `raw` is written as it is: a number, a literal, an array or "" before a nested object.
  JsonObject& Raw(absl::string_view key, absl::string_view raw);
  JsonObject& Num(absl::string_view key, double value) { return Raw(key, JsonNumber(value)); }
  JsonObject& Int(absl::string_view key, int64_t value);
  JsonObject& Str(absl::string_view key, absl::string_view value) {
    return Raw(key, JsonString(value));
  }
  JsonObject& Bool(absl::string_view key, bool value) { return Raw(key, value ? "true" : "false"); }
  void Close();

 private:
  std::ostream& out_;
  int indent_;
  bool first_ = true;
};

}  // namespace kvtier::tools
