// .npz reader (npz.h): a zip archive of .npy files, stored (uncompressed) as numpy writes them.
// Every read of the input goes through an explicit bounds check first, so a truncated or
// corrupt file yields a Status, never an out-of-bounds access.
#include "tools/workload/npz.h"

#include <array>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/base/status.h"
#include "tools/workload/npy_bytes.h"

namespace kvtier::workload {
namespace {

using npy_internal::Fits;
using npy_internal::Load16;
using npy_internal::Load32;
using npy_internal::Load64;
using npy_internal::ParseNpyAt;
using npy_internal::ReadWholeFile;

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
