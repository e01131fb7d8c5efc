// What the .npy reader (npy.cc) and the .npz archive (npz.cc) share: bounds checks,
// little-endian loads, reading a whole file, and parsing .npy bytes found inside an archive.
// Internal to tools/workload.
#pragma once

#include <bit>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "tools/workload/npz.h"

namespace kvtier::workload::npy_internal {

// The reader copies little-endian bytes straight into host integers and floats.
static_assert(std::endian::native == std::endian::little,
              "the .npy reader assumes a little-endian host");

// Whether [offset, offset + n) lies inside a buffer of `size` bytes (no overflow).
inline bool Fits(uint64_t size, uint64_t offset, uint64_t n) {
  return offset <= size && n <= size - offset;
}

// Little-endian loads; the caller has checked Fits.
inline uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t Load32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
inline uint64_t Load64(const uint8_t* p) {
  return static_cast<uint64_t>(Load32(p)) | (static_cast<uint64_t>(Load32(p + 4)) << 32);
}

// The file's bytes; the errno's code and message when it cannot be opened, DataLoss when a read
// fails.
absl::StatusOr<std::vector<uint8_t>> ReadWholeFile(const std::string& path);

// Parses .npy bytes; offsets in messages are base + offset into `bytes`.
absl::StatusOr<NpyArray> ParseNpyAt(absl::Span<const uint8_t> bytes, absl::string_view source,
                                    uint64_t base);

}  // namespace kvtier::workload::npy_internal
