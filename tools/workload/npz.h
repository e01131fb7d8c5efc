// A small reader of numpy arrays: `.npy` files and `.npz` archives (a zip of `.npy` files, as
// np.savez writes them). Enough for the learned-attention dumps in ../shared/data/attention and
// for test fixtures; not a general zip or numpy implementation.
//
// Supported:
//  - .npy format versions 1.0, 2.0 and 3.0; C order (Fortran order only where it is the same
//    thing: fewer than 2 dimensions); little-endian or byte-order-free element types:
//    bool (b1), int8/16/32/64 (i1..i8), uint8/16/32/64 (u1..u8), float16/32/64 (f2, f4, f8),
//    fixed-width unicode strings (U<n>, UTF-32LE, as numpy stores str) and byte strings (S<n>).
//  - .npz: stored (uncompressed) entries, zip64 end records and zip64 extra fields (numpy
//    writes every entry with force_zip64, so its local headers carry one). Every entry's
//    CRC-32 is checked when it is read.
// Not supported, each an Unimplemented error that says so: compressed entries
// (np.savez_compressed), encrypted entries, multi-disk archives, big-endian data, object and
// structured dtypes, Fortran-ordered arrays of 2 or more dimensions.
//
// Errors: every function returns a Status and never crashes on malformed or truncated input;
// messages name the file (or source), the entry and the byte offset where parsing failed.
//  - NotFound: the file cannot be opened, or the archive has no such key.
//  - InvalidArgument: the bytes are not a well-formed .npy / zip (truncated, bad magic, bad
//    header, sizes that do not add up), or an accessor is used on the wrong element type.
//  - DataLoss: an entry's CRC-32 does not match its bytes; or a read error.
//  - Unimplemented: a well-formed file using a feature listed above as not supported.
//  - OutOfRange: a value that does not fit the accessor's type (ToInt64 on a huge uint64).
//
// Thread safety: objects are immutable after construction; const methods may be called
// concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvtier::workload {

// Element type of an array, from the .npy 'descr' (byte order already resolved).
enum class NpyType : uint8_t {
  kBool,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt8,
  kUInt16,
  kUInt32,
  kUInt64,
  kFloat16,
  kFloat32,
  kFloat64,
  kUnicode,  // fixed width, item_bytes / 4 UTF-32LE code units per element
  kBytes,    // fixed width, item_bytes bytes per element
};
const char* NpyTypeName(NpyType type);

// One array: its element type, shape and raw element bytes in C order, little-endian.
class NpyArray {
 public:
  NpyArray() = default;  // an empty uint8 array of shape (0,)
  // `data` must hold product(shape) elements of `item_bytes` each, and item_bytes must be the
  // size of `type` (asserted): ParseNpy builds arrays this way.
  NpyArray(NpyType type, size_t item_bytes, std::vector<int64_t> shape, std::vector<uint8_t> data);

  NpyType type() const { return type_; }
  size_t item_bytes() const { return item_bytes_; }  // bytes per element
  // Dimensions, outermost first; empty for a 0-d (scalar) array.
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t num_elements() const;  // product of shape(); 1 for a 0-d array
  // The raw element bytes: num_elements() * item_bytes(), C order, little-endian.
  absl::Span<const uint8_t> data() const { return data_; }

  // "(8, 256, 64) <f2": for messages.
  std::string Describe() const;

  // Typed copies of the elements, in C order. InvalidArgument when the type does not fit:
  //  - Float16Bits: float16 only; the IEEE binary16 bit patterns (kernels/base/dtype.h
  //    converts them).
  //  - ToDouble: any float type, widened exactly.
  //  - ToInt64: bool and any integer type; OutOfRange for a uint64 above INT64_MAX.
  //  - ToUtf8: a unicode or bytes array with exactly one element (numpy stores a str as a 0-d
  //    'U' array), trailing NULs removed as numpy does; unicode is encoded to UTF-8
  //    (InvalidArgument for a code unit that is not a Unicode scalar value).
  absl::StatusOr<std::vector<uint16_t>> Float16Bits() const;
  absl::StatusOr<std::vector<double>> ToDouble() const;
  absl::StatusOr<std::vector<int64_t>> ToInt64() const;
  absl::StatusOr<std::string> ToUtf8() const;

 private:
  NpyType type_ = NpyType::kUInt8;
  size_t item_bytes_ = 1;
  std::vector<int64_t> shape_ = {0};  // default: an empty 1-d array
  std::vector<uint8_t> data_;
};

// Parses a whole .npy file held in `bytes` (header and data; trailing bytes are an error).
// `source` names it in error messages, with offsets counted from the start of `bytes`.
absl::StatusOr<NpyArray> ParseNpy(absl::Span<const uint8_t> bytes, absl::string_view source);

// Reads and parses the .npy file at `path`.
absl::StatusOr<NpyArray> ReadNpyFile(const std::string& path);

// An .npz archive held in memory. Open/FromBytes parse the zip's central directory and check
// that every entry's local header and data lie inside the archive; Get parses one entry.
class NpzArchive {
 public:
  // Reads the whole file at `path` (the dumps are a few MiB) and parses its directory.
  static absl::StatusOr<NpzArchive> Open(const std::string& path);
  // The same over bytes already in memory; `source` names them in error messages.
  static absl::StatusOr<NpzArchive> FromBytes(std::vector<uint8_t> bytes, std::string source);

  // The keys in archive order: entry names with their ".npy" suffix removed (as np.load
  // presents them); names without the suffix are kept whole.
  std::vector<std::string> Keys() const;
  bool Contains(absl::string_view key) const;

  // The array stored under `key`. NotFound when absent; Unimplemented for a compressed or
  // encrypted entry; DataLoss on a CRC mismatch; the .npy errors of ParseNpy otherwise.
  absl::StatusOr<NpyArray> Get(absl::string_view key) const;

  const std::string& source() const { return source_; }

 private:
  struct Entry {
    std::string name;  // as stored in the zip
    std::string key;   // name without ".npy"
    uint16_t method = 0;
    uint16_t flags = 0;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t uncompressed_size = 0;
    uint64_t data_offset = 0;  // of the entry's first data byte, past its local header
  };

  NpzArchive(std::vector<uint8_t> bytes, std::string source, std::vector<Entry> entries)
      : bytes_(std::move(bytes)), source_(std::move(source)), entries_(std::move(entries)) {}

  std::vector<uint8_t> bytes_;
  std::string source_;
  std::vector<Entry> entries_;
};

}  // namespace kvtier::workload
