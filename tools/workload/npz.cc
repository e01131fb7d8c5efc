// .npy / .npz reader. Every read of the input goes through an explicit bounds check first, so
// a truncated or corrupt file yields a Status, never an out-of-bounds access.
#include "tools/workload/npz.h"

#include <array>
#include <bit>
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

namespace kvtier::workload {
namespace {

// The reader copies little-endian bytes straight into host integers and floats.
static_assert(std::endian::native == std::endian::little, "npz.cc assumes a little-endian host");

// ---- Bytes ---------------------------------------------------------------------------------

// Whether [offset, offset + n) lies inside a buffer of `size` bytes (no overflow).
bool Fits(uint64_t size, uint64_t offset, uint64_t n) {
  return offset <= size && n <= size - offset;
}

// Little-endian loads; the caller has checked Fits.
uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Load32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t Load64(const uint8_t* p) {
  return static_cast<uint64_t>(Load32(p)) | (static_cast<uint64_t>(Load32(p + 4)) << 32);
}

// CRC-32 (IEEE 802.3, reflected, as zip uses), one table lookup per byte.
constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

uint32_t Crc32(absl::Span<const uint8_t> bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (const uint8_t b : bytes) c = kCrcTable[(c ^ b) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

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

// Parses .npy bytes; offsets in messages are base + offset into `bytes`.
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

// ---- zip ------------------------------------------------------------------------------------

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEndBytes = 22;
constexpr uint64_t kZip64LocatorBytes = 20;
constexpr uint64_t kZip64EndBytes = 56;
constexpr uint64_t kCentralHeaderBytes = 46;
constexpr uint64_t kLocalHeaderBytes = 30;

}  // namespace

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

// ---- NpzArchive -------------------------------------------------------------------------------

absl::StatusOr<NpzArchive> NpzArchive::Open(const std::string& path) {
  KVTIER_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadWholeFile(path));
  return FromBytes(std::move(bytes), path);
}

absl::StatusOr<NpzArchive> NpzArchive::FromBytes(std::vector<uint8_t> bytes, std::string source) {
  const uint8_t* const b = bytes.data();
  const uint64_t size = bytes.size();
  auto fail = [&](uint64_t offset, const auto&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": offset ", offset, ": ", parts...));
  };
  auto unsupported = [&](const auto&... parts) {
    return absl::UnimplementedError(absl::StrCat(source, ": ", parts...));
  };

  // End of central directory: the last 22 bytes, unless a comment (up to 64 KiB) follows it.
  if (size < kEndBytes) {
    return fail(0, "only ", size,
                " bytes; a zip archive ends with a 22-byte end record (truncated, or not .npz)");
  }
  uint64_t end = size;  // offset of the end record; `size` means not found
  const uint64_t lowest = size - kEndBytes > 0xFFFF ? size - kEndBytes - 0xFFFF : 0;
  for (uint64_t pos = size - kEndBytes + 1; pos-- > lowest;) {
    if (Load32(b + pos) == kEndSig && pos + kEndBytes + Load16(b + pos + 20) <= size) {
      end = pos;
      break;
    }
  }
  if (end == size) {
    return fail(size, "no zip end-of-central-directory record (truncated, or not .npz)");
  }
  uint64_t disk = Load16(b + end + 4);
  uint64_t cd_disk = Load16(b + end + 6);
  uint64_t disk_entries = Load16(b + end + 8);
  uint64_t entries = Load16(b + end + 10);
  uint64_t cd_size = Load32(b + end + 12);
  uint64_t cd_offset = Load32(b + end + 16);
  uint64_t cd_limit = end;  // the central directory ends before the end records

  const bool has_locator =
      end >= kZip64LocatorBytes && Load32(b + end - kZip64LocatorBytes) == kZip64LocatorSig;
  const bool needs_zip64 = disk == 0xFFFF || cd_disk == 0xFFFF || disk_entries == 0xFFFF ||
                           entries == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF;
  if (has_locator) {
    const uint64_t locator = end - kZip64LocatorBytes;
    const uint64_t z64 = Load64(b + locator + 8);
    if (Load32(b + locator + 16) > 1) return unsupported("multi-disk zip archives");
    if (!Fits(locator, z64, kZip64EndBytes) || Load32(b + z64) != kZip64EndSig) {
      return fail(locator, "zip64 locator points at offset ", z64,
                  ", where there is no zip64 end record");
    }
    disk = Load32(b + z64 + 16);
    cd_disk = Load32(b + z64 + 20);
    disk_entries = Load64(b + z64 + 24);
    entries = Load64(b + z64 + 32);
    cd_size = Load64(b + z64 + 40);
    cd_offset = Load64(b + z64 + 48);
    cd_limit = z64;
  } else if (needs_zip64) {
    return fail(end, "the end record defers to zip64 fields, but there is no zip64 locator");
  }
  if (disk != 0 || cd_disk != 0 || disk_entries != entries) {
    return unsupported("multi-disk zip archives");
  }
  if (!Fits(cd_limit, cd_offset, cd_size)) {
    return fail(end, "central directory [", cd_offset, ", +", cd_size,
                ") does not fit before the end record at ", cd_limit, " (truncated?)");
  }
  if (entries > cd_size / kCentralHeaderBytes) {
    return fail(end, entries, " entries cannot fit a central directory of ", cd_size, " bytes");
  }

  std::vector<Entry> out;
  out.reserve(static_cast<size_t>(entries));
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < entries; ++i) {
    if (!Fits(cd_end, pos, kCentralHeaderBytes) || Load32(b + pos) != kCentralHeaderSig) {
      return fail(pos, "central directory entry ", i, " of ", entries, " is missing or corrupt");
    }
    Entry e;
    e.flags = Load16(b + pos + 8);
    e.method = Load16(b + pos + 10);
    e.crc32 = Load32(b + pos + 16);
    e.compressed_size = Load32(b + pos + 20);
    e.uncompressed_size = Load32(b + pos + 24);
    const uint64_t name_len = Load16(b + pos + 28);
    const uint64_t extra_len = Load16(b + pos + 30);
    const uint64_t comment_len = Load16(b + pos + 32);
    uint64_t entry_disk = Load16(b + pos + 34);
    uint64_t local = Load32(b + pos + 42);
    const uint64_t name_at = pos + kCentralHeaderBytes;
    if (!Fits(cd_end, name_at, name_len + extra_len + comment_len)) {
      return fail(pos, "central directory entry ", i, " runs past the directory's end");
    }
    e.name.assign(reinterpret_cast<const char*>(b + name_at), name_len);
    // zip64 extra field (id 1): 8-byte values for exactly the fields saturated above, in
    // this order.
    for (uint64_t x = name_at + name_len; x < name_at + name_len + extra_len;) {
      const uint64_t extras_end = name_at + name_len + extra_len;
      if (!Fits(extras_end, x, 4) || !Fits(extras_end, x + 4, Load16(b + x + 2))) {
        return fail(x, "entry '", e.name, "': malformed extra field");
      }
      const uint64_t id = Load16(b + x), len = Load16(b + x + 2);
      if (id == 1) {
        uint64_t at = x + 4;
        auto take64 = [&](uint64_t* field) -> bool {
          if (at + 8 > x + 4 + len) return false;
          *field = Load64(b + at);
          at += 8;
          return true;
        };
        bool ok = true;
        if (e.uncompressed_size == 0xFFFFFFFF) ok = ok && take64(&e.uncompressed_size);
        if (e.compressed_size == 0xFFFFFFFF) ok = ok && take64(&e.compressed_size);
        if (local == 0xFFFFFFFF) ok = ok && take64(&local);
        if (entry_disk == 0xFFFF) {
          ok = ok && at + 4 <= x + 4 + len;
          if (ok) entry_disk = Load32(b + at);
        }
        if (!ok) return fail(x, "entry '", e.name, "': zip64 extra field too short");
      }
      x += 4 + len;
    }
    if (entry_disk != 0) return unsupported("multi-disk zip archives");
    // Local header: its own name and extra lengths place the data.
    if (!Fits(cd_offset, local, kLocalHeaderBytes) || Load32(b + local) != kLocalHeaderSig) {
      return fail(local, "entry '", e.name, "': no local file header here");
    }
    const uint64_t local_name_len = Load16(b + local + 26);
    const uint64_t local_extra_len = Load16(b + local + 28);
    if (!Fits(cd_offset, local + kLocalHeaderBytes, local_name_len + local_extra_len)) {
      return fail(local, "entry '", e.name, "': local header runs into the central directory");
    }
    if (absl::string_view(reinterpret_cast<const char*>(b + local + kLocalHeaderBytes),
                          local_name_len) != e.name) {
      return fail(local, "entry '", e.name, "': local header names a different file");
    }
    e.data_offset = local + kLocalHeaderBytes + local_name_len + local_extra_len;
    if (!Fits(cd_offset, e.data_offset, e.compressed_size)) {
      return fail(e.data_offset, "entry '", e.name, "': its ", e.compressed_size,
                  " data bytes run past the data area (truncated?)");
    }
    constexpr absl::string_view kSuffix = ".npy";
    e.key = e.name;
    if (e.key.size() >= kSuffix.size() &&
        absl::string_view(e.key).substr(e.key.size() - kSuffix.size()) == kSuffix) {
      e.key.resize(e.key.size() - kSuffix.size());
    }
    for (const Entry& other : out) {
      if (other.key == e.key) return fail(pos, "duplicate key '", e.key, "'");
    }
    out.push_back(std::move(e));
    pos = name_at + name_len + extra_len + comment_len;
  }
  return NpzArchive(std::move(bytes), std::move(source), std::move(out));
}

std::vector<std::string> NpzArchive::Keys() const {
  std::vector<std::string> keys;
  keys.reserve(entries_.size());
  for (const Entry& e : entries_) keys.push_back(e.key);
  return keys;
}

bool NpzArchive::Contains(absl::string_view key) const {
  for (const Entry& e : entries_) {
    if (e.key == key) return true;
  }
  return false;
}

absl::StatusOr<NpyArray> NpzArchive::Get(absl::string_view key) const {
  const Entry* entry = nullptr;
  for (const Entry& e : entries_) {
    if (e.key == key) entry = &e;
  }
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(source_, ": no key '", key, "'; keys: ", absl::StrJoin(Keys(), ", ")));
  }
  const std::string where = absl::StrCat(source_, ": entry '", entry->name, "'");
  if (entry->flags & 1) return absl::UnimplementedError(absl::StrCat(where, " is encrypted"));
  if (entry->method == 8) {
    return absl::UnimplementedError(absl::StrCat(
        where,
        " is compressed (deflate); only stored entries are read: write the archive with "
        "np.savez, not np.savez_compressed"));
  }
  if (entry->method != 0) {
    return absl::UnimplementedError(absl::StrCat(where, " is compressed (zip method ",
                                                 entry->method, "); only stored entries are read"));
  }
  if (entry->compressed_size != entry->uncompressed_size) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is stored but its sizes differ (",
                                                   entry->compressed_size, " and ",
                                                   entry->uncompressed_size, ")"));
  }
  const absl::Span<const uint8_t> data(bytes_.data() + entry->data_offset,
                                       static_cast<size_t>(entry->compressed_size));
  const uint32_t crc = Crc32(data);
  if (crc != entry->crc32) {
    return absl::DataLossError(absl::StrCat(where, " at offset ", entry->data_offset,
                                            ": CRC-32 is 0x", absl::Hex(crc), ", directory says 0x",
                                            absl::Hex(entry->crc32), " (corrupt file)"));
  }
  return ParseNpyAt(data, where, entry->data_offset);
}

}  // namespace kvtier::workload
