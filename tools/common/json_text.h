// JSON text pieces the command-line tools print (kvtier-probe, kvtier-replay).
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace kvtier::tools {

// `s` as a JSON string literal, quotes included (control characters escaped).
std::string JsonString(absl::string_view s);

// `value` with 6 significant digits, or null for NaN and infinities (JSON has neither).
std::string JsonNumber(double value);

}  // namespace kvtier::tools
