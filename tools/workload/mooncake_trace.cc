// The Mooncake JSONL's lines (trace_lines.h): a small strict JSON reader for one flat object,
// enough for the four keys the format has; other keys' values of any JSON type are skipped.
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <system_error>
#include <type_traits>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "tools/workload/trace.h"
#include "tools/workload/trace_lines.h"

namespace kvtier::internal {
namespace {

constexpr int kMaxDepth = 32;  // nesting of a skipped value

// A cursor over one line; every error names the byte where it was found.
class JsonLine {
 public:
  explicit JsonLine(absl::string_view text) : text_(text) {}

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(what, " at byte ", at_ + 1));
  }
  void SkipSpace() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t')) ++at_;
  }
  bool AtEnd() const { return at_ >= text_.size(); }
  char Peek() const { return AtEnd() ? '\0' : text_[at_]; }
  bool Consume(char c) {
    SkipSpace();
    if (Peek() != c) return false;
    ++at_;
    return true;
  }

  // A string's contents (escapes decoded; \u escapes kept as '?', enough for key names).
  absl::Status String(std::string* out) {
    SkipSpace();
    if (Peek() != '"') return Error("expected a string");
    ++at_;
    out->clear();
    while (true) {
      if (AtEnd()) return Error("unterminated string");
      const char c = text_[at_++];
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return Error("control character in a string");
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (AtEnd()) return Error("unterminated string");
      const char e = text_[at_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
          out->push_back(' ');
          break;
        case 'u':
          for (int i = 0; i < 4; ++i, ++at_) {
            if (AtEnd() || !std::isxdigit(static_cast<unsigned char>(text_[at_]))) {
              return Error("bad \\u escape");
            }
          }
          out->push_back('?');
          break;
        default:
          return Error("bad escape in a string");
      }
    }
  }

  // A JSON number's text (grammar checked): -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?
  absl::Status NumberText(absl::string_view* out, bool* integer) {
    SkipSpace();
    const size_t start = at_;
    auto digits = [&] {
      const size_t from = at_;
      while (!AtEnd() && Peek() >= '0' && Peek() <= '9') ++at_;
      return at_ - from;
    };
    if (Peek() == '-') ++at_;
    if (Peek() == '0') {
      ++at_;
    } else if (digits() == 0) {
      at_ = start;
      return Error("expected a number");
    }
    *integer = true;
    if (Peek() == '.') {
      ++at_;
      *integer = false;
      if (digits() == 0) return Error("expected digits after the decimal point");
    }
    if (Peek() == 'e' || Peek() == 'E') {
      ++at_;
      *integer = false;
      if (Peek() == '+' || Peek() == '-') ++at_;
      if (digits() == 0) return Error("expected digits in the exponent");
    }
    *out = text_.substr(start, at_ - start);
    return absl::OkStatus();
  }

  // A number into *value (the whole text read by from_chars; an integral T takes no fraction
  // or exponent), which `accept` must take; `name` and `expected` for errors.
  template <typename T, typename Accept>
  absl::Status Number(absl::string_view name, T* value, Accept accept, absl::string_view expected) {
    const size_t start = (SkipSpace(), at_);
    absl::string_view text;
    bool integer = false;
    if (!NumberText(&text, &integer).ok()) return Error(absl::StrCat(name, " is not a number"));
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
    if ((std::is_integral_v<T> && !integer) || ec != std::errc() ||
        end != text.data() + text.size() || !accept(*value)) {
      at_ = start;
      return Error(absl::StrCat(name, " is ", text, "; expected ", expected));
    }
    return absl::OkStatus();
  }
  absl::Status Integer(absl::string_view name, int64_t min, int64_t max, int64_t* value) {
    return Number(
        name, value, [&](int64_t v) { return v >= min && v <= max; },
        absl::StrCat("an integer in [", min, ", ", max, "]"));
  }
  absl::Status NonNegative(absl::string_view name, double* value) {
    return Number(
        name, value, [](double v) { return std::isfinite(v) && v >= 0.0; }, "a finite number >= 0");
  }

  // Any JSON value, discarded.
  absl::Status SkipValue(int depth) {
    if (depth > kMaxDepth) return Error("values nested too deep");
    SkipSpace();
    const char c = Peek();
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      ++at_;
      if (Consume(close)) return absl::OkStatus();
      do {
        if (c == '{') {
          std::string key;
          if (absl::Status s = String(&key); !s.ok()) return s;
          if (!Consume(':')) return Error("expected ':'");
        }
        if (absl::Status s = SkipValue(depth + 1); !s.ok()) return s;
      } while (Consume(','));
      if (!Consume(close))
        return Error(absl::StrCat("expected ',' or '", std::string(1, close), "'"));
      return absl::OkStatus();
    }
    for (absl::string_view word : {"true", "false", "null"}) {
      if (text_.substr(at_, word.size()) == word) {
        at_ += word.size();
        return absl::OkStatus();
      }
    }
    absl::string_view number;
    bool integer = false;
    return NumberText(&number, &integer);
  }

 private:
  absl::string_view text_;
  size_t at_ = 0;
};

}  // namespace

absl::StatusOr<TraceLine> ParseMooncakeLine(absl::string_view line) {
  JsonLine json(line);
  if (!json.Consume('{')) return json.Error("expected a JSON object ('{')");
  TraceLine out;
  double timestamp_ms = 0.0;
  enum Key { kTimestamp, kInput, kOutput, kHashIds, kKeys };
  constexpr absl::string_view kNames[kKeys] = {"timestamp", "input_length", "output_length",
                                               "hash_ids"};
  bool seen[kKeys] = {};
  if (!json.Consume('}')) {
    do {
      std::string key;
      if (absl::Status s = json.String(&key); !s.ok()) return s;
      if (!json.Consume(':')) return json.Error("expected ':'");
      int k = 0;
      while (k < kKeys && kNames[k] != key) ++k;
      if (k == kKeys) {
        if (absl::Status s = json.SkipValue(1); !s.ok()) return s;
        continue;
      }
      if (seen[k]) return json.Error(absl::StrCat("\"", key, "\" appears twice"));
      seen[k] = true;
      absl::Status s;
      switch (k) {
        case kTimestamp:
          s = json.NonNegative("timestamp", &timestamp_ms);
          break;
        case kInput:
          s = json.Integer("input_length", 1, kMaxTraceTokens, &out.input_tokens);
          break;
        case kOutput:
          s = json.Integer("output_length", 1, kMaxTraceTokens, &out.output_tokens);
          break;
        case kHashIds:
          if (!json.Consume('[')) return json.Error("hash_ids is not an array");
          if (json.Consume(']')) break;
          do {
            int64_t id = 0;
            s = json.Integer("a hash id", 0, INT64_MAX, &id);
            if (!s.ok()) return s;
            out.hash_ids.push_back(id);
          } while (json.Consume(','));
          if (!json.Consume(']')) return json.Error("expected ',' or ']' in hash_ids");
          break;
      }
      if (!s.ok()) return s;
    } while (json.Consume(','));
    if (!json.Consume('}')) return json.Error("expected ',' or '}'");
  }
  json.SkipSpace();
  if (!json.AtEnd()) return json.Error("text after the object");
  for (int k = 0; k < kKeys; ++k) {
    if (!seen[k]) return absl::InvalidArgumentError(absl::StrCat("\"", kNames[k], "\" is missing"));
  }
  const int64_t blocks = (out.input_tokens + kMooncakeBlockTokens - 1) / kMooncakeBlockTokens;
  if (static_cast<int64_t>(out.hash_ids.size()) != blocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("hash_ids has ", out.hash_ids.size(), " ids; input_length ", out.input_tokens,
                     " needs ceil(input_length / ", kMooncakeBlockTokens, ") = ", blocks));
  }
  // Milliseconds to nanoseconds; a timestamp beyond int64 nanoseconds (292 years) is refused.
  if (timestamp_ms > 9.2e12) {
    return absl::InvalidArgumentError(
        absl::StrCat("timestamp ", timestamp_ms, " ms is beyond 9.2e12 ms (292 years)"));
  }
  out.time_ns = static_cast<int64_t>(std::llround(timestamp_ms * 1e6));
  return out;
}

}  // namespace kvtier::internal
