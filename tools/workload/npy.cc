// .npy reader (npz.h). Every read of the input goes through an explicit bounds check first, so
// a truncated or corrupt file yields a Status, never an out-of-bounds access.
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status.h"
#include "tools/workload/npy_bytes.h"
#include "tools/workload/npz.h"

namespace kvtier::workload {
namespace {

using npy_internal::Fits;
using npy_internal::Load16;
using npy_internal::Load32;
using npy_internal::Load64;

// ---- .npy header -----------------------------------------------------------------------------

struct NpyDescr {
  NpyType type = NpyType::kUInt8;
  size_t item_bytes = 1;
};

// Parses a dtype string such as "<f2", "|u1", "<U326". `fail` builds InvalidArgument.
template <typename Fail>
absl::StatusOr<NpyDescr> ParseDescr(absl::string_view descr, const Fail& fail,
                                    absl::string_view source) {
  absl::string_view rest = descr;
  char order = '|';
  if (!rest.empty() && (rest[0] == '<' || rest[0] == '>' || rest[0] == '|' || rest[0] == '=')) {
    order = rest[0];
    rest.remove_prefix(1);
  }
  if (rest.empty()) return fail(absl::StrCat("'descr' '", descr, "' has no type"));
  const char kind = rest[0];
  rest.remove_prefix(1);
  if (rest.empty() || rest.size() > 9) {
    return fail(absl::StrCat("'descr' '", descr, "' has no element size (or one too long)"));
  }
  uint64_t size = 0;
  for (const char c : rest) {
    if (c < '0' || c > '9') {
      return fail(absl::StrCat("'descr' '", descr, "' is not <byte order><kind><size>"));
    }
    size = size * 10 + static_cast<uint64_t>(c - '0');
  }
  auto unsupported = [&](absl::string_view why) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": element type '", descr, "' is not supported: ", why));
  };
  NpyDescr out;
  switch (kind) {
    case 'b':
      if (size != 1) return unsupported("bool must have size 1");
      out.type = NpyType::kBool;
      break;
    case 'i':
    case 'u': {
      const bool is_signed = kind == 'i';
      if (size == 1) {
        out.type = is_signed ? NpyType::kInt8 : NpyType::kUInt8;
      } else if (size == 2) {
        out.type = is_signed ? NpyType::kInt16 : NpyType::kUInt16;
      } else if (size == 4) {
        out.type = is_signed ? NpyType::kInt32 : NpyType::kUInt32;
      } else if (size == 8) {
        out.type = is_signed ? NpyType::kInt64 : NpyType::kUInt64;
      } else {
        return unsupported("integers have size 1, 2, 4 or 8");
      }
      break;
    }
    case 'f':
      if (size == 2) {
        out.type = NpyType::kFloat16;
      } else if (size == 4) {
        out.type = NpyType::kFloat32;
      } else if (size == 8) {
        out.type = NpyType::kFloat64;
      } else {
        return unsupported("floats have size 2, 4 or 8 here (no extended precision)");
      }
      break;
    case 'U':
      out.type = NpyType::kUnicode;
      size *= 4;  // 'U<n>' counts UTF-32 code units
      break;
    case 'S':
      out.type = NpyType::kBytes;
      break;
    case 'O':
      return unsupported("object arrays hold Python pickles");
    case 'c':
    case 'M':
    case 'm':
    case 'V':
    case 'a':
      return unsupported("complex, datetime, void and legacy string types are not read");
    default:
      return fail(
          absl::StrCat("'descr' '", descr, "' has unknown kind '", std::string(1, kind), "'"));
  }
  out.item_bytes = static_cast<size_t>(size);
  if (order == '>' && out.item_bytes > 1 && out.type != NpyType::kBytes) {
    return unsupported("big-endian data");
  }
  return out;
}

// The header dict, e.g. "{'descr': '<f2', 'fortran_order': False, 'shape': (8, 256, 64), }".
// A tiny parser of exactly the Python literals numpy writes there.
class HeaderParser {
 public:
  HeaderParser(absl::string_view text, std::string where) : text_(text), where_(std::move(where)) {}

  absl::Status Parse(std::string* descr, bool* fortran_order, std::vector<int64_t>* shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    SkipSpace();
    if (!Consume('{')) return Fail("expected '{' starting the header dict");
    for (;;) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      KVTIER_RETURN_IF_ERROR(ParseString(&key));
      SkipSpace();
      if (!Consume(':')) return Fail(absl::StrCat("expected ':' after key '", key, "'"));
      SkipSpace();
      if (key == "descr") {
        if (Peek() == '[') {
          return absl::UnimplementedError(
              absl::StrCat(where_, ": structured dtypes (a list 'descr') are not supported"));
        }
        KVTIER_RETURN_IF_ERROR(ParseString(descr));
        have_descr = true;
      } else if (key == "fortran_order") {
        KVTIER_RETURN_IF_ERROR(ParseBool(fortran_order));
        have_order = true;
      } else if (key == "shape") {
        KVTIER_RETURN_IF_ERROR(ParseShape(shape));
        have_shape = true;
      } else {
        return Fail(absl::StrCat("unexpected key '", key,
                                 "'; a .npy header has 'descr', 'fortran_order', 'shape'"));
      }
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume('}')) break;
      return Fail("expected ',' or '}' after a value");
    }
    if (!have_descr || !have_order || !have_shape) {
      return Fail(absl::StrCat("missing key(s):", have_descr ? "" : " 'descr'",
                               have_order ? "" : " 'fortran_order'", have_shape ? "" : " 'shape'"));
    }
    SkipSpace();
    if (pos_ != text_.size()) return Fail("unexpected text after the header dict");
    return absl::OkStatus();
  }

 private:
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool Consume(char c) {
    if (Peek() != c || pos_ >= text_.size()) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  absl::Status Fail(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(where_, ": malformed header at character ", pos_, ": ", what));
  }
  absl::Status ParseString(std::string* out) {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') return Fail("expected a quoted string");
    ++pos_;
    const size_t begin = pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') return Fail("escapes in header strings are not supported");
      ++pos_;
    }
    if (pos_ >= text_.size()) return Fail("unterminated string");
    *out = std::string(text_.substr(begin, pos_ - begin));
    ++pos_;
    return absl::OkStatus();
  }
  absl::Status ParseBool(bool* out) {
    if (text_.substr(pos_, 4) == "True") {
      *out = true;
      pos_ += 4;
    } else if (text_.substr(pos_, 5) == "False") {
      *out = false;
      pos_ += 5;
    } else {
      return Fail("expected True or False");
    }
    return absl::OkStatus();
  }
  absl::Status ParseShape(std::vector<int64_t>* shape) {
    shape->clear();
    if (!Consume('(')) return Fail("expected '(' starting the shape tuple");
    for (;;) {
      SkipSpace();
      if (Consume(')')) break;
      if (Peek() < '0' || Peek() > '9') return Fail("expected a non-negative dimension");
      uint64_t dim = 0;
      while (Peek() >= '0' && Peek() <= '9') {
        dim = dim * 10 + static_cast<uint64_t>(Peek() - '0');
        if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / 10)) {
          return Fail("dimension too large");
        }
        ++pos_;
      }
      Consume('L');  // Python 2 long literals in old files
      shape->push_back(static_cast<int64_t>(dim));
      if (shape->size() > 32) return Fail("more than 32 dimensions");
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume(')')) break;
      return Fail("expected ',' or ')' in the shape tuple");
    }
    return absl::OkStatus();
  }

  absl::string_view text_;
  std::string where_;
  size_t pos_ = 0;
};

// Appends code point `c` to `out` as UTF-8.
void AppendUtf8(uint32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

}  // namespace

namespace npy_internal {

absl::StatusOr<std::vector<uint8_t>> ReadWholeFile(const std::string& path) {
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    const int error = errno;
    return absl::Status(absl::ErrnoToStatusCode(error),
                        absl::StrCat(path, ": cannot open: ", std::strerror(error)));
  }
  std::vector<uint8_t> bytes;
  constexpr size_t kChunk = size_t{1} << 20;
  for (;;) {
    const size_t old_size = bytes.size();
    bytes.resize(old_size + kChunk);
    const size_t got = std::fread(bytes.data() + old_size, 1, kChunk, file.get());
    bytes.resize(old_size + got);
    if (got < kChunk) break;
  }
  if (std::ferror(file.get())) {
    const int error = errno;
    return absl::DataLossError(
        absl::StrCat(path, ": read error after ", bytes.size(), " bytes: ", std::strerror(error)));
  }
  return bytes;
}

absl::StatusOr<NpyArray> ParseNpyAt(absl::Span<const uint8_t> bytes, absl::string_view source,
                                    uint64_t base) {
  const uint64_t size = bytes.size();
  auto fail = [&](uint64_t offset, const auto&... parts) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": offset ", base + offset, ": ", parts...));
  };
  static constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 8) {
    return fail(0, "only ", size, " bytes; a .npy file starts with 8 (magic and version)");
  }
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    return fail(0, "not a .npy array: the magic \\x93NUMPY is missing");
  }
  const int major = bytes[6], minor = bytes[7];
  uint64_t header_begin = 0, header_len = 0;
  if (major == 1) {
    if (size < 10) return fail(8, "truncated in the header length");
    header_begin = 10;
    header_len = Load16(bytes.data() + 8);
  } else if (major == 2 || major == 3) {
    if (size < 12) return fail(8, "truncated in the header length");
    header_begin = 12;
    header_len = Load32(bytes.data() + 8);
  } else {
    return absl::UnimplementedError(absl::StrCat(source, ": .npy format version ", major, ".",
                                                 minor, " is not supported (1.0, 2.0, 3.0 are)"));
  }
  if (!Fits(size, header_begin, header_len)) {
    return fail(header_begin, "truncated: the header needs ", header_len, " bytes, ",
                size - header_begin, " remain");
  }
  const absl::string_view header(reinterpret_cast<const char*>(bytes.data() + header_begin),
                                 header_len);
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  KVTIER_RETURN_IF_ERROR(
      HeaderParser(header, absl::StrCat(source, ": header at offset ", base + header_begin))
          .Parse(&descr, &fortran_order, &shape));
  KVTIER_ASSIGN_OR_RETURN(
      const NpyDescr type,
      ParseDescr(
          descr, [&](absl::string_view what) { return fail(header_begin, what); }, source));
  if (fortran_order && shape.size() >= 2) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": Fortran-ordered arrays of 2 or more dimensions are not supported"));
  }
  // Element count and byte count, refusing overflow.
  uint64_t elements = 1;
  for (const int64_t dim : shape) {
    const uint64_t d = static_cast<uint64_t>(dim);
    if (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d) {
      return fail(header_begin, "shape ", descr, " overflows 64 bits");
    }
    elements *= d;
  }
  if (type.item_bytes != 0 && elements > std::numeric_limits<uint64_t>::max() / type.item_bytes) {
    return fail(header_begin, "array size overflows 64 bits");
  }
  const uint64_t data_bytes = elements * type.item_bytes;
  const uint64_t data_begin = header_begin + header_len;
  const uint64_t available = size - data_begin;
  if (available != data_bytes) {
    return fail(data_begin, available < data_bytes ? "truncated: " : "trailing bytes: ", "shape (",
                absl::StrJoin(shape, ", "), ") of '", descr, "' needs ", data_bytes,
                " data bytes, ", available, " present");
  }
  std::vector<uint8_t> data(bytes.begin() + static_cast<ptrdiff_t>(data_begin), bytes.end());
  return NpyArray(type.type, type.item_bytes, std::move(shape), std::move(data));
}

}  // namespace npy_internal

using npy_internal::ParseNpyAt;
using npy_internal::ReadWholeFile;

// ---- NpyArray ---------------------------------------------------------------------------------

const char* NpyTypeName(NpyType type) {
  switch (type) {
    case NpyType::kBool:
      return "bool";
    case NpyType::kInt8:
      return "int8";
    case NpyType::kInt16:
      return "int16";
    case NpyType::kInt32:
      return "int32";
    case NpyType::kInt64:
      return "int64";
    case NpyType::kUInt8:
      return "uint8";
    case NpyType::kUInt16:
      return "uint16";
    case NpyType::kUInt32:
      return "uint32";
    case NpyType::kUInt64:
      return "uint64";
    case NpyType::kFloat16:
      return "float16";
    case NpyType::kFloat32:
      return "float32";
    case NpyType::kFloat64:
      return "float64";
    case NpyType::kUnicode:
      return "unicode";
    case NpyType::kBytes:
      return "bytes";
  }
  return "unknown";
}

NpyArray::NpyArray(NpyType type, size_t item_bytes, std::vector<int64_t> shape,
                   std::vector<uint8_t> data)
    : type_(type), item_bytes_(item_bytes), shape_(std::move(shape)), data_(std::move(data)) {
  assert(data_.size() == static_cast<uint64_t>(num_elements()) * item_bytes_);
  assert(type_ == NpyType::kUnicode ? item_bytes_ % 4 == 0
         : type_ == NpyType::kBytes ? true
         : type_ == NpyType::kFloat16 || type_ == NpyType::kInt16 || type_ == NpyType::kUInt16
             ? item_bytes_ == 2
         : type_ == NpyType::kFloat32 || type_ == NpyType::kInt32 || type_ == NpyType::kUInt32
             ? item_bytes_ == 4
         : type_ == NpyType::kFloat64 || type_ == NpyType::kInt64 || type_ == NpyType::kUInt64
             ? item_bytes_ == 8
             : item_bytes_ == 1);
}

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (const int64_t d : shape_) n *= d;  // ParseNpy checked that this does not overflow
  return n;
}

std::string NpyArray::Describe() const {
  std::string type = NpyTypeName(type_);
  if (type_ == NpyType::kUnicode) absl::StrAppend(&type, "[", item_bytes_ / 4, "]");
  if (type_ == NpyType::kBytes) absl::StrAppend(&type, "[", item_bytes_, "]");
  return absl::StrCat("(", absl::StrJoin(shape_, ", "), shape_.size() == 1 ? ",)" : ")", " ", type);
}

absl::StatusOr<std::vector<uint16_t>> NpyArray::Float16Bits() const {
  if (type_ != NpyType::kFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("Float16Bits: array is ", Describe(), "; expected float16"));
  }
  std::vector<uint16_t> out(data_.size() / 2);
  if (!out.empty()) std::memcpy(out.data(), data_.data(), out.size() * 2);
  return out;
}

absl::StatusOr<std::vector<double>> NpyArray::ToDouble() const {
  const size_t n = static_cast<size_t>(num_elements());
  std::vector<double> out(n);
  const uint8_t* p = data_.data();
  switch (type_) {
    case NpyType::kFloat16:
      for (size_t i = 0; i < n; ++i) out[i] = FP16ToFloat(Load16(p + 2 * i));
      return out;
    case NpyType::kFloat32:
      for (size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(Load32(p + 4 * i));
      return out;
    case NpyType::kFloat64:
      for (size_t i = 0; i < n; ++i) out[i] = std::bit_cast<double>(Load64(p + 8 * i));
      return out;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("ToDouble: array is ", Describe(), "; expected a float type"));
  }
}

absl::StatusOr<std::vector<int64_t>> NpyArray::ToInt64() const {
  const size_t n = static_cast<size_t>(num_elements());
  std::vector<int64_t> out(n);
  const uint8_t* p = data_.data();
  for (size_t i = 0; i < n; ++i) {
    switch (type_) {
      case NpyType::kBool:
        out[i] = p[i] != 0;
        break;
      case NpyType::kInt8:
        out[i] = static_cast<int8_t>(p[i]);
        break;
      case NpyType::kUInt8:
        out[i] = p[i];
        break;
      case NpyType::kInt16:
        out[i] = static_cast<int16_t>(Load16(p + 2 * i));
        break;
      case NpyType::kUInt16:
        out[i] = Load16(p + 2 * i);
        break;
      case NpyType::kInt32:
        out[i] = static_cast<int32_t>(Load32(p + 4 * i));
        break;
      case NpyType::kUInt32:
        out[i] = Load32(p + 4 * i);
        break;
      case NpyType::kInt64:
        out[i] = static_cast<int64_t>(Load64(p + 8 * i));
        break;
      case NpyType::kUInt64: {
        const uint64_t v = Load64(p + 8 * i);
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return absl::OutOfRangeError(
              absl::StrCat("ToInt64: element ", i, " is ", v, ", above INT64_MAX"));
        }
        out[i] = static_cast<int64_t>(v);
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("ToInt64: array is ", Describe(), "; expected bool or an integer type"));
    }
  }
  return out;
}

absl::StatusOr<std::string> NpyArray::ToUtf8() const {
  if (type_ != NpyType::kUnicode && type_ != NpyType::kBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("ToUtf8: array is ", Describe(), "; expected unicode or bytes"));
  }
  if (num_elements() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ToUtf8: array is ", Describe(), "; expected exactly one string"));
  }
  std::string out;
  if (type_ == NpyType::kBytes) {
    size_t n = data_.size();
    while (n > 0 && data_[n - 1] == 0) --n;
    out.assign(reinterpret_cast<const char*>(data_.data()), n);
    return out;
  }
  size_t units = data_.size() / 4;
  while (units > 0 && Load32(data_.data() + 4 * (units - 1)) == 0) --units;
  for (size_t i = 0; i < units; ++i) {
    const uint32_t c = Load32(data_.data() + 4 * i);
    if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
      return absl::InvalidArgumentError(absl::StrCat("ToUtf8: code unit ", i, " is 0x",
                                                     absl::Hex(c), ", not a Unicode scalar value"));
    }
    AppendUtf8(c, &out);
  }
  return out;
}

absl::StatusOr<NpyArray> ParseNpy(absl::Span<const uint8_t> bytes, absl::string_view source) {
  return ParseNpyAt(bytes, source, 0);
}

absl::StatusOr<NpyArray> ReadNpyFile(const std::string& path) {
  KVTIER_ASSIGN_OR_RETURN(const std::vector<uint8_t> bytes, ReadWholeFile(path));
  return ParseNpy(bytes, path);
}

}  // namespace kvtier::workload
