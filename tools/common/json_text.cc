#include "tools/common/json_text.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvtier::tools {

std::string JsonString(absl::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string JsonNumber(double value) {
  if (!std::isfinite(value)) return "null";
  return absl::StrFormat("%.6g", value);
}

JsonObject& JsonObject::Raw(absl::string_view key, absl::string_view raw) {
  out_ << (first_ ? "{\n" : ",\n") << std::string(indent_ + 2, ' ') << JsonString(key) << ": "
       << raw;
  first_ = false;
  return *this;
}

JsonObject& JsonObject::Int(absl::string_view key, int64_t value) {
  return Raw(key, absl::StrCat(value));
}

void JsonObject::Close() {
  if (first_) {
    out_ << "{}";
  } else {
    out_ << "\n" << std::string(indent_, ' ') << "}";
  }
}

}  // namespace kvtier::tools
