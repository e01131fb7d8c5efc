// Loading and validating a learned-attention dump (attention_dump.h).
#include "tools/workload/attention_dump.h"

#include <cassert>
#include <cmath>
#include <limits>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status.h"

namespace kvtier::workload {
namespace {

// ---- Minimal JSON: a document flattened to "a.b.c" -> scalar --------------------------------

struct JsonScalar {
  enum class Kind : uint8_t { kNumber, kString, kBool, kNull };
  Kind kind = Kind::kNull;
  double number = 0.0;
  std::string text;  // kString: the decoded string
};

// Recursive descent over RFC 8259 JSON; objects become dotted paths, arrays "[i]". Enough for
// the dumps' meta; depth is capped so that a hostile string cannot exhaust the stack.
class JsonFlattener {
 public:
  explicit JsonFlattener(absl::string_view text) : text_(text) {}

  absl::StatusOr<std::map<std::string, JsonScalar>> Run() {
    SkipSpace();
    if (Peek() != '{') return Fail("the document is not a JSON object");
    KVTIER_RETURN_IF_ERROR(Value("", 0));
    SkipSpace();
    if (pos_ != text_.size()) return Fail("text after the JSON document");
    return std::move(out_);
  }

 private:
  static constexpr int kMaxDepth = 32;

  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  absl::Status Fail(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("meta JSON, character ", pos_, ": ", what));
  }

  absl::Status Value(const std::string& path, int depth) {
    if (depth > kMaxDepth) return Fail("nested too deeply");
    SkipSpace();
    const char c = Peek();
    if (c == '{') {
      ++pos_;
      SkipSpace();
      if (Peek() == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      for (;;) {
        SkipSpace();
        std::string key;
        KVTIER_RETURN_IF_ERROR(String(&key));
        SkipSpace();
        if (Peek() != ':') return Fail("expected ':' after an object key");
        ++pos_;
        KVTIER_RETURN_IF_ERROR(Value(path.empty() ? key : absl::StrCat(path, ".", key), depth + 1));
        SkipSpace();
        if (Peek() == ',') {
          ++pos_;
          continue;
        }
        if (Peek() == '}') {
          ++pos_;
          return absl::OkStatus();
        }
        return Fail("expected ',' or '}' in an object");
      }
    }
    if (c == '[') {
      ++pos_;
      SkipSpace();
      if (Peek() == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      for (int i = 0;; ++i) {
        KVTIER_RETURN_IF_ERROR(Value(absl::StrCat(path, "[", i, "]"), depth + 1));
        SkipSpace();
        if (Peek() == ',') {
          ++pos_;
          continue;
        }
        if (Peek() == ']') {
          ++pos_;
          return absl::OkStatus();
        }
        return Fail("expected ',' or ']' in an array");
      }
    }
    JsonScalar scalar;
    if (c == '"') {
      scalar.kind = JsonScalar::Kind::kString;
      KVTIER_RETURN_IF_ERROR(String(&scalar.text));
    } else if (text_.substr(pos_, 4) == "true" || text_.substr(pos_, 5) == "false") {
      scalar.kind = JsonScalar::Kind::kBool;
      scalar.number = c == 't' ? 1.0 : 0.0;
      pos_ += c == 't' ? 4 : 5;
    } else if (text_.substr(pos_, 4) == "null") {
      pos_ += 4;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      const size_t begin = pos_;
      while (pos_ < text_.size() &&
             ((text_[pos_] >= '0' && text_[pos_] <= '9') || text_[pos_] == '-' ||
              text_[pos_] == '+' || text_[pos_] == '.' || text_[pos_] == 'e' ||
              text_[pos_] == 'E')) {
        ++pos_;
      }
      scalar.kind = JsonScalar::Kind::kNumber;
      if (!absl::SimpleAtod(text_.substr(begin, pos_ - begin), &scalar.number)) {
        return Fail("malformed number");
      }
    } else {
      return Fail("expected a JSON value");
    }
    out_[path] = std::move(scalar);
    return absl::OkStatus();
  }

  absl::Status String(std::string* out) {
    if (Peek() != '"') return Fail("expected a string");
    ++pos_;
    out->clear();
    for (;;) {
      if (pos_ >= text_.size()) return Fail("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return absl::OkStatus();
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= text_.size()) return Fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          // Kept as the escape text: kvtier reads no field that needs non-ASCII.
          if (pos_ + 4 > text_.size()) return Fail("truncated \\u escape");
          absl::StrAppend(out, "\\u", text_.substr(pos_, 4));
          pos_ += 4;
          break;
        }
        default:
          return Fail("unknown escape");
      }
    }
  }

  absl::string_view text_;
  size_t pos_ = 0;
  std::map<std::string, JsonScalar> out_;
};

// The integer at `path`: required ones must exist; absent optional ones leave *out unchanged.
absl::Status JsonInt(const std::map<std::string, JsonScalar>& json, const std::string& path,
                     bool required, int* out) {
  const auto it = json.find(path);
  if (it == json.end()) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("meta: no field '", path, "'"));
  }
  const JsonScalar& v = it->second;
  if (v.kind != JsonScalar::Kind::kNumber || v.number != std::floor(v.number) ||
      std::abs(v.number) > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("meta: field '", path, "' is not an integer that fits 32 bits"));
  }
  *out = static_cast<int>(v.number);
  return absl::OkStatus();
}

void JsonDouble(const std::map<std::string, JsonScalar>& json, const std::string& path,
                double* out) {
  const auto it = json.find(path);
  if (it != json.end() && it->second.kind == JsonScalar::Kind::kNumber) *out = it->second.number;
}

absl::StatusOr<AttentionDumpMeta> ParseMeta(std::string text) {
  KVTIER_ASSIGN_OR_RETURN(const auto json, JsonFlattener(text).Run());
  AttentionDumpMeta meta;
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "layer", true, &meta.layer));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "tokens", true, &meta.tokens));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "queries", true, &meta.queries));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.hq", true, &meta.model.q_heads));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.hkv", true, &meta.model.kv_heads));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.hd", true, &meta.model.head_dim));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.vocab", false, &meta.model.vocab));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.d", false, &meta.model.width));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.layers", false, &meta.model.layers));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.ffn", false, &meta.model.ffn));
  KVTIER_RETURN_IF_ERROR(JsonInt(json, "model.ctx", false, &meta.model.context));
  JsonDouble(json, "model.rope_base", &meta.model.rope_base);
  JsonDouble(json, "bpb", &meta.bits_per_byte);
  if (const auto it = json.find("name");
      it != json.end() && it->second.kind == JsonScalar::Kind::kString) {
    meta.name = it->second.text;
  }
  meta.json = std::move(text);
  return meta;
}

// An int dimension, refusing those that do not fit int.
absl::StatusOr<int> Dim(const NpyArray& a, size_t i, absl::string_view key) {
  const int64_t d = a.shape()[i];
  if (d > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", key, "' dimension ", i, " is ", d, "; too large"));
  }
  return static_cast<int>(d);
}

}  // namespace

absl::StatusOr<AttentionDump> AttentionDump::Load(const std::string& path) {
  KVTIER_ASSIGN_OR_RETURN(const NpzArchive archive, NpzArchive::Open(path));
  return FromArchive(archive);
}

absl::StatusOr<AttentionDump> AttentionDump::FromArchive(const NpzArchive& archive) {
  auto invalid = [&](const auto&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(archive.source(), ": ", parts...));
  };
  KVTIER_ASSIGN_OR_RETURN(const NpyArray k, archive.Get("k"));
  KVTIER_ASSIGN_OR_RETURN(const NpyArray v, archive.Get("v"));
  KVTIER_ASSIGN_OR_RETURN(const NpyArray q, archive.Get("q"));
  KVTIER_ASSIGN_OR_RETURN(const NpyArray q_pos, archive.Get("q_pos"));
  KVTIER_ASSIGN_OR_RETURN(const NpyArray meta_array, archive.Get("meta"));

  for (const auto& [key, array] :
       {std::pair<const char*, const NpyArray*>{"k", &k}, {"v", &v}, {"q", &q}}) {
    if (array->type() != NpyType::kFloat16 || array->shape().size() != 3) {
      return invalid("'", key, "' is ", array->Describe(), "; expected a 3-d float16 array");
    }
  }
  if (k.shape() != v.shape()) {
    return invalid("'k' is ", k.Describe(), " but 'v' is ", v.Describe(), "; expected equal");
  }
  AttentionDump dump;
  KVTIER_ASSIGN_OR_RETURN(dump.kv_heads_, Dim(k, 0, "k"));
  KVTIER_ASSIGN_OR_RETURN(dump.tokens_, Dim(k, 1, "k"));
  KVTIER_ASSIGN_OR_RETURN(dump.head_dim_, Dim(k, 2, "k"));
  KVTIER_ASSIGN_OR_RETURN(dump.q_heads_, Dim(q, 0, "q"));
  KVTIER_ASSIGN_OR_RETURN(dump.num_queries_, Dim(q, 1, "q"));
  if (dump.kv_heads_ < 1 || dump.tokens_ < 1 || dump.head_dim_ < 1) {
    return invalid("'k' is ", k.Describe(), "; expected every dimension >= 1");
  }
  if (q.shape()[2] != dump.head_dim_) {
    return invalid("'q' is ", q.Describe(), " but 'k' is ", k.Describe(),
                   "; expected the same head_dim (last dimension)");
  }
  if (dump.q_heads_ < 1 || dump.q_heads_ % dump.kv_heads_ != 0) {
    return invalid("'q' has ", dump.q_heads_, " heads and 'k' ", dump.kv_heads_,
                   "; expected a positive multiple (GQA)");
  }
  if (q_pos.shape().size() != 1 || q_pos.shape()[0] != dump.num_queries_) {
    return invalid("'q_pos' is ", q_pos.Describe(), "; expected (", dump.num_queries_,
                   ",), one position per query of 'q'");
  }
  KVTIER_ASSIGN_OR_RETURN(const std::vector<int64_t> positions, q_pos.ToInt64());
  dump.q_pos_.reserve(positions.size());
  for (size_t i = 0; i < positions.size(); ++i) {
    if (positions[i] < 0 || positions[i] >= dump.tokens_) {
      return invalid("q_pos[", i, "] is ", positions[i], "; expected in [0, ", dump.tokens_,
                     ") (tokens)");
    }
    dump.q_pos_.push_back(static_cast<int32_t>(positions[i]));
  }

  KVTIER_ASSIGN_OR_RETURN(std::string meta_text, meta_array.ToUtf8());
  absl::StatusOr<AttentionDumpMeta> meta = ParseMeta(std::move(meta_text));
  if (!meta.ok()) return invalid(meta.status().message());
  const AttentionDumpMeta& m = *meta;
  auto mismatch = [&](absl::string_view field, int64_t in_meta, absl::string_view array,
                      int64_t in_array) {
    return invalid("meta ", field, " is ", in_meta, " but ", array, " is ", in_array);
  };
  if (m.tokens != dump.tokens_)
    return mismatch("tokens", m.tokens, "k's token count", dump.tokens_);
  if (m.queries != dump.num_queries_) {
    return mismatch("queries", m.queries, "q's query count", dump.num_queries_);
  }
  if (m.model.q_heads != dump.q_heads_) {
    return mismatch("model.hq", m.model.q_heads, "q's head count", dump.q_heads_);
  }
  if (m.model.kv_heads != dump.kv_heads_) {
    return mismatch("model.hkv", m.model.kv_heads, "k's head count", dump.kv_heads_);
  }
  if (m.model.head_dim != dump.head_dim_) {
    return mismatch("model.hd", m.model.head_dim, "k's head_dim", dump.head_dim_);
  }
  if (m.layer < 0 || (m.model.layers > 0 && m.layer >= m.model.layers)) {
    return invalid("meta layer is ", m.layer, "; expected in [0, ", m.model.layers,
                   ") (model.layers)");
  }
  dump.meta_ = std::move(meta).value();

  KVTIER_ASSIGN_OR_RETURN(dump.keys_, k.Float16Bits());
  KVTIER_ASSIGN_OR_RETURN(dump.values_, v.Float16Bits());
  KVTIER_ASSIGN_OR_RETURN(dump.queries_, q.Float16Bits());
  return dump;
}

const uint16_t* AttentionDump::key(int kv_head, int token) const {
  assert(kv_head >= 0 && kv_head < kv_heads_ && token >= 0 && token < tokens_);
  return keys_.data() + (static_cast<size_t>(kv_head) * tokens_ + token) * head_dim_;
}

const uint16_t* AttentionDump::value(int kv_head, int token) const {
  assert(kv_head >= 0 && kv_head < kv_heads_ && token >= 0 && token < tokens_);
  return values_.data() + (static_cast<size_t>(kv_head) * tokens_ + token) * head_dim_;
}

const uint16_t* AttentionDump::query(int q_head, int index) const {
  assert(q_head >= 0 && q_head < q_heads_ && index >= 0 && index < num_queries_);
  return queries_.data() + (static_cast<size_t>(q_head) * num_queries_ + index) * head_dim_;
}

}  // namespace kvtier::workload
