// The .npy/.npz reader (npz.h) on archives written byte by byte here, malformed and truncated
// inputs included; the learned-attention dump loader (attention_dump.h) on small archives and
// on the real dumps; and, on the real dumps, the README's captured-mass figures reproduced at
// kernel level: the page-bounds index of kernels/block_summary.h and kernels/block_select.h
// against the README's "bounds 2%" column, and the true best pages against its "oracle 2%".
#include "tools/workload/attention_dump.h"
#include "tests/testing/attention_dumps.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status.h"
#include "kernels/block_select.h"
#include "tbb/parallel_for.h"
#include "tools/workload/npz.h"

namespace kvtier::workload {
namespace {

using ::testing::HasSubstr;

// ---- Writing .npy and .npz bytes ------------------------------------------------------------

void Put16(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 2; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void Put32(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void Put64(std::vector<uint8_t>* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void PutBytes(std::vector<uint8_t>* out, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  out->insert(out->end(), p, p + n);
}
void PutString(std::vector<uint8_t>* out, const std::string& s) {
  PutBytes(out, s.data(), s.size());
}

// Bitwise CRC-32, written independently of the reader's table version.
uint32_t TestCrc32(const std::vector<uint8_t>& bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (const uint8_t b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

// A .npy file as numpy writes it: magic, version, header length, the dict padded with spaces
// and a newline to a multiple of 64 bytes, then the data. `header` is the dict text.
std::vector<uint8_t> NpyWithHeader(const std::string& header, const std::vector<uint8_t>& data,
                                   int version = 1) {
  const size_t prefix = version == 1 ? 10 : 12;
  std::string padded = header;
  while ((prefix + padded.size() + 1) % 64 != 0) padded.push_back(' ');
  padded.push_back('\n');
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(version), 0};
  if (version == 1) {
    Put16(&out, padded.size());
  } else {
    Put32(&out, padded.size());
  }
  PutString(&out, padded);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> Npy(const std::string& descr, const std::string& shape,
                         const std::vector<uint8_t>& data, int version = 1) {
  return NpyWithHeader(
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': ", shape, ", }"),
      data, version);
}

template <typename T>
std::vector<uint8_t> Raw(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// numpy's str scalar: UTF-32LE code units padded with NULs to `width`.
std::vector<uint8_t> Utf32(const std::u32string& s, size_t width) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i < width; ++i) Put32(&out, i < s.size() ? s[i] : 0);
  return out;
}

struct ZipEntry {
  std::string name;
  std::vector<uint8_t> data;
  uint16_t method = 0;  // 0 stored; 8 marks it deflated (the bytes are not actually deflated)
};

// A zip archive of `entries`, laid out as Python's zipfile writes one. With `zip64`, every
// local header carries a zip64 extra field (as np.savez's force_zip64 writes), the central
// directory defers sizes and offsets to zip64 extras, and zip64 end records precede the end
// record.
std::vector<uint8_t> Zip(const std::vector<ZipEntry>& entries, bool zip64 = false) {
  std::vector<uint8_t> out;
  std::vector<uint64_t> offsets;
  for (const ZipEntry& e : entries) {
    offsets.push_back(out.size());
    Put32(&out, 0x04034b50);
    Put16(&out, zip64 ? 45 : 20);
    Put16(&out, 0);  // flags
    Put16(&out, e.method);
    Put16(&out, 0);     // time
    Put16(&out, 0x21);  // date
    Put32(&out, TestCrc32(e.data));
    Put32(&out, zip64 ? 0xFFFFFFFF : e.data.size());
    Put32(&out, zip64 ? 0xFFFFFFFF : e.data.size());
    Put16(&out, e.name.size());
    Put16(&out, zip64 ? 20 : 0);
    PutString(&out, e.name);
    if (zip64) {
      Put16(&out, 1);
      Put16(&out, 16);
      Put64(&out, e.data.size());
      Put64(&out, e.data.size());
    }
    out.insert(out.end(), e.data.begin(), e.data.end());
  }
  const uint64_t cd_offset = out.size();
  for (size_t i = 0; i < entries.size(); ++i) {
    const ZipEntry& e = entries[i];
    Put32(&out, 0x02014b50);
    Put16(&out, zip64 ? 45 : 20);
    Put16(&out, zip64 ? 45 : 20);
    Put16(&out, 0);
    Put16(&out, e.method);
    Put16(&out, 0);
    Put16(&out, 0x21);
    Put32(&out, TestCrc32(e.data));
    Put32(&out, zip64 ? 0xFFFFFFFF : e.data.size());
    Put32(&out, zip64 ? 0xFFFFFFFF : e.data.size());
    Put16(&out, e.name.size());
    Put16(&out, zip64 ? 28 : 0);
    Put16(&out, 0);  // comment
    Put16(&out, 0);  // disk
    Put16(&out, 0);  // internal attributes
    Put32(&out, 0);  // external attributes
    Put32(&out, zip64 ? 0xFFFFFFFF : offsets[i]);
    PutString(&out, e.name);
    if (zip64) {
      Put16(&out, 1);
      Put16(&out, 24);
      Put64(&out, e.data.size());
      Put64(&out, e.data.size());
      Put64(&out, offsets[i]);
    }
  }
  const uint64_t cd_size = out.size() - cd_offset;
  if (zip64) {
    const uint64_t z64 = out.size();
    Put32(&out, 0x06064b50);
    Put64(&out, 44);
    Put16(&out, 45);
    Put16(&out, 45);
    Put32(&out, 0);
    Put32(&out, 0);
    Put64(&out, entries.size());
    Put64(&out, entries.size());
    Put64(&out, cd_size);
    Put64(&out, cd_offset);
    Put32(&out, 0x07064b50);
    Put32(&out, 0);
    Put64(&out, z64);
    Put32(&out, 1);
  }
  Put32(&out, 0x06054b50);
  Put16(&out, 0);
  Put16(&out, 0);
  Put16(&out, zip64 ? 0xFFFF : entries.size());
  Put16(&out, zip64 ? 0xFFFF : entries.size());
  Put32(&out, zip64 ? 0xFFFFFFFF : cd_size);
  Put32(&out, zip64 ? 0xFFFFFFFF : cd_offset);
  Put16(&out, 0);  // comment
  return out;
}

// A small archive of several types, used by the reader tests.
std::vector<ZipEntry> SampleEntries() {
  return {
      {"half.npy",
       Npy("<f2", "(2, 3)", Raw<uint16_t>({0x3C00, 0xC000, 0x3800, 0x7C00, 0x0001, 0x8000}))},
      {"ints.npy", Npy("<i4", "(4,)", Raw<int32_t>({-1, 0, 7, 2147483647}))},
      {"doubles.npy", Npy("<f8", "(1, 2)", Raw<double>({0.25, -1e300}))},
      {"meta.npy", Npy("<U5", "()", Utf32(U"{\"a\"}", 5))},
  };
}

absl::StatusOr<NpzArchive> Archive(const std::vector<ZipEntry>& entries, bool zip64 = false) {
  return NpzArchive::FromBytes(Zip(entries, zip64), "test.npz");
}

// ---- The .npy / .npz reader -----------------------------------------------------------------

TEST(NpzTest, ReadsStoredArchive) {
  for (const bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64 ? "zip64" : "zip");
    auto archive = Archive(SampleEntries(), zip64);
    ASSERT_TRUE(archive.ok()) << archive.status();
    EXPECT_THAT(archive->Keys(), ::testing::ElementsAre("half", "ints", "doubles", "meta"));
    EXPECT_TRUE(archive->Contains("ints"));
    EXPECT_FALSE(archive->Contains("ints.npy"));

    auto half = archive->Get("half");
    ASSERT_TRUE(half.ok()) << half.status();
    EXPECT_EQ(half->type(), NpyType::kFloat16);
    EXPECT_EQ(half->shape(), (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(half->Describe(), "(2, 3) float16");
    EXPECT_EQ(*half->Float16Bits(),
              (std::vector<uint16_t>{0x3C00, 0xC000, 0x3800, 0x7C00, 0x0001, 0x8000}));
    auto as_double = half->ToDouble();
    ASSERT_TRUE(as_double.ok());
    EXPECT_EQ((*as_double)[1], -2.0);
    EXPECT_EQ((*as_double)[4], std::ldexp(1.0, -24));  // smallest subnormal
    EXPECT_TRUE(std::isinf((*as_double)[3]));

    auto ints = archive->Get("ints");
    ASSERT_TRUE(ints.ok()) << ints.status();
    EXPECT_EQ(ints->Describe(), "(4,) int32");
    EXPECT_EQ(*ints->ToInt64(), (std::vector<int64_t>{-1, 0, 7, 2147483647}));
    EXPECT_EQ(ints->ToDouble().status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ints->Float16Bits().status().code(), absl::StatusCode::kInvalidArgument);

    auto doubles = archive->Get("doubles");
    ASSERT_TRUE(doubles.ok()) << doubles.status();
    EXPECT_EQ(*doubles->ToDouble(), (std::vector<double>{0.25, -1e300}));

    auto meta = archive->Get("meta");
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_TRUE(meta->shape().empty());
    EXPECT_EQ(meta->num_elements(), 1);
    EXPECT_EQ(*meta->ToUtf8(), "{\"a\"}");
    EXPECT_EQ(meta->ToInt64().status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(NpzTest, ReadsEveryElementTypeAndVersion) {
  struct Case {
    std::string descr;
    std::vector<uint8_t> data;  // two elements
    NpyType type;
    std::vector<int64_t> as_int;  // empty: not an integer type
  };
  const std::vector<Case> cases = {
      {"|b1", {1, 0}, NpyType::kBool, {1, 0}},
      {"|i1", {0xFF, 5}, NpyType::kInt8, {-1, 5}},
      {"|u1", {0xFF, 5}, NpyType::kUInt8, {255, 5}},
      {"<i2", Raw<int16_t>({-300, 2}), NpyType::kInt16, {-300, 2}},
      {"<u2", Raw<uint16_t>({65535, 2}), NpyType::kUInt16, {65535, 2}},
      {"<u4", Raw<uint32_t>({4000000000u, 2}), NpyType::kUInt32, {4000000000LL, 2}},
      {"<i8", Raw<int64_t>({-(int64_t{1} << 40), 2}), NpyType::kInt64, {-(int64_t{1} << 40), 2}},
      {"<u8", Raw<uint64_t>({uint64_t{1} << 40, 2}), NpyType::kUInt64, {int64_t{1} << 40, 2}},
      {"=i4", Raw<int32_t>({-3, 2}), NpyType::kInt32, {-3, 2}},
      {"<f4", Raw<float>({1.5f, -2.0f}), NpyType::kFloat32, {}},
      {"|S3", {'a', 'b', 'c', 'd', 0, 0}, NpyType::kBytes, {}},
  };
  for (const Case& c : cases) {
    for (const int version : {1, 2, 3}) {
      SCOPED_TRACE(absl::StrCat(c.descr, " v", version));
      auto array = ParseNpy(Npy(c.descr, "(2,)", c.data, version), "case.npy");
      ASSERT_TRUE(array.ok()) << array.status();
      EXPECT_EQ(array->type(), c.type);
      EXPECT_EQ(array->shape(), (std::vector<int64_t>{2}));
      EXPECT_EQ(std::vector<uint8_t>(array->data().begin(), array->data().end()), c.data);
      if (!c.as_int.empty()) {
        EXPECT_EQ(*array->ToInt64(), c.as_int);
      }
    }
  }
  // Empty arrays and an empty dimension.
  auto empty = ParseNpy(Npy("<f4", "(3, 0, 2)", {}), "empty.npy");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->num_elements(), 0);
  EXPECT_TRUE(empty->ToDouble()->empty());
  // A uint64 above INT64_MAX does not fit ToInt64.
  auto huge = ParseNpy(Npy("<u8", "(1,)", Raw<uint64_t>({~uint64_t{0}})), "huge.npy");
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ(huge->ToInt64().status().code(), absl::StatusCode::kOutOfRange);
  // A bytes scalar, a non-ASCII str and a str holding an invalid code unit.
  auto bytes = ParseNpy(Npy("|S4", "()", {'h', 'i', 0, 0}), "s.npy");
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes->ToUtf8(), "hi");
  auto text = ParseNpy(Npy("<U3", "()", Utf32(U"\u00e9\u20ac\U0001F600", 3)), "u.npy");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text->ToUtf8(), "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  auto surrogate = ParseNpy(Npy("<U1", "()", Utf32(U"\xD800", 1)), "bad_u.npy");
  ASSERT_TRUE(surrogate.ok());
  EXPECT_EQ(surrogate->ToUtf8().status().code(), absl::StatusCode::kInvalidArgument);
  // Fortran order is fine where it means nothing.
  auto fortran_1d = ParseNpy(
      NpyWithHeader("{'descr': '<i4', 'fortran_order': True, 'shape': (2,), }", Raw<int>({1, 2})),
      "f.npy");
  ASSERT_TRUE(fortran_1d.ok()) << fortran_1d.status();
}

TEST(NpzTest, MalformedNpyGivesClearErrors) {
  struct Case {
    std::vector<uint8_t> bytes;
    absl::StatusCode code;
    std::string message;  // a substring of the error
  };
  const std::vector<uint8_t> two_f4 = Raw<float>({1, 2});
  std::vector<uint8_t> bad_magic = Npy("<f4", "(2,)", two_f4);
  bad_magic[1] = 'X';
  std::vector<uint8_t> version4 = Npy("<f4", "(2,)", two_f4);
  version4[6] = 4;
  std::vector<uint8_t> long_header = Npy("<f4", "(2,)", two_f4);
  long_header[8] = 0xFF;
  long_header[9] = 0x7F;
  const std::vector<Case> cases = {
      {{0x93, 'N', 'U'}, absl::StatusCode::kInvalidArgument, "only 3 bytes"},
      {bad_magic, absl::StatusCode::kInvalidArgument, "magic"},
      {version4, absl::StatusCode::kUnimplemented, "version 4.0"},
      {long_header, absl::StatusCode::kInvalidArgument, "truncated: the header needs"},
      {Npy("<f4", "(3,)", two_f4), absl::StatusCode::kInvalidArgument, "truncated: shape (3)"},
      {Npy("<f4", "(1,)", two_f4), absl::StatusCode::kInvalidArgument, "trailing bytes"},
      {Npy(">f4", "(2,)", two_f4), absl::StatusCode::kUnimplemented, "big-endian"},
      {Npy("<c8", "(1,)", two_f4), absl::StatusCode::kUnimplemented, "'<c8' is not supported"},
      {Npy("|O", "(1,)", {}), absl::StatusCode::kInvalidArgument, "no element size"},
      {Npy("|O8", "(1,)", two_f4), absl::StatusCode::kUnimplemented, "pickles"},
      {Npy("<f3", "(1,)", two_f4), absl::StatusCode::kUnimplemented, "floats have size"},
      {Npy("<x4", "(2,)", two_f4), absl::StatusCode::kInvalidArgument, "unknown kind"},
      {Npy("<f4", "(-2,)", two_f4), absl::StatusCode::kInvalidArgument, "non-negative"},
      {Npy("<f4", "(2, 99999999999999999999)", two_f4), absl::StatusCode::kInvalidArgument,
       "too large"},
      {Npy("<f4", "(4294967296, 4294967296)", two_f4), absl::StatusCode::kInvalidArgument,
       "overflows"},
      {NpyWithHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }", two_f4),
       absl::StatusCode::kUnimplemented, "Fortran"},
      {NpyWithHeader("{'descr': '<f4', 'shape': (2,), }", two_f4),
       absl::StatusCode::kInvalidArgument, "missing key(s): 'fortran_order'"},
      {NpyWithHeader("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", two_f4),
       absl::StatusCode::kInvalidArgument, "True or False"},
      {NpyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", two_f4),
       absl::StatusCode::kInvalidArgument, "unexpected key 'x'"},
      {NpyWithHeader("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", two_f4),
       absl::StatusCode::kUnimplemented, "structured"},
      {NpyWithHeader("{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }", two_f4),
       absl::StatusCode::kInvalidArgument, "malformed header"},
      {NpyWithHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", two_f4),
       absl::StatusCode::kInvalidArgument, "expected ',' or '}'"},
      {NpyWithHeader("", two_f4), absl::StatusCode::kInvalidArgument, "expected '{'"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    auto array = ParseNpy(cases[i].bytes, "bad.npy");
    ASSERT_FALSE(array.ok());
    EXPECT_EQ(array.status().code(), cases[i].code) << array.status();
    EXPECT_THAT(std::string(array.status().message()), HasSubstr(cases[i].message));
    EXPECT_THAT(std::string(array.status().message()), HasSubstr("bad.npy"));
  }
}

TEST(NpzTest, MalformedArchivesGiveClearErrors) {
  // Too short, not a zip.
  auto tiny = NpzArchive::FromBytes({1, 2, 3}, "tiny.npz");
  EXPECT_EQ(tiny.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tiny.status().message()), HasSubstr("tiny.npz"));
  auto npy = NpzArchive::FromBytes(Npy("<f4", "(40,)", std::vector<uint8_t>(160)), "npy.npz");
  EXPECT_EQ(npy.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(npy.status().message()), HasSubstr("no zip end-of-central-directory"));

  // A missing key names the keys there are.
  auto archive = Archive(SampleEntries());
  ASSERT_TRUE(archive.ok());
  auto missing = archive->Get("k");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("half, ints, doubles, meta"));

  // A compressed entry: the archive opens, that entry is Unimplemented and says why; the
  // stored one beside it still reads.
  std::vector<ZipEntry> entries = SampleEntries();
  entries[1].method = 8;
  auto compressed = Archive(entries);
  ASSERT_TRUE(compressed.ok()) << compressed.status();
  auto deflated = compressed->Get("ints");
  EXPECT_EQ(deflated.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(deflated.status().message()), HasSubstr("compressed"));
  EXPECT_THAT(std::string(deflated.status().message()), HasSubstr("'ints.npy'"));
  EXPECT_TRUE(compressed->Get("half").ok());

  // A truncated .npy inside a well-formed archive: the .npy error, with the entry's name and
  // the offset within the archive.
  entries = SampleEntries();
  entries[0].data.resize(entries[0].data.size() - 2);
  auto short_entry = Archive(entries);
  ASSERT_TRUE(short_entry.ok());
  auto half = short_entry->Get("half");
  EXPECT_EQ(half.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(half.status().message()),
              HasSubstr("test.npz: entry 'half.npy': offset 166: truncated"));  // 30 + 8 + 128

  // Duplicate keys.
  entries = SampleEntries();
  entries[1].name = "half.npy";
  EXPECT_EQ(Archive(entries).status().code(), absl::StatusCode::kInvalidArgument);

  // Files that do not exist or cannot be read.
  auto absent = NpzArchive::Open("/nonexistent/kvtier/dump.npz");
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(absent.status().message()), HasSubstr("/nonexistent/kvtier/dump.npz"));
  EXPECT_FALSE(NpzArchive::Open("/").ok());
}

TEST(NpzTest, EveryTruncationIsAnError) {
  for (const int version : {1, 2}) {
    const std::vector<uint8_t> npy = Npy("<f4", "(2, 2)", Raw<float>({1, 2, 3, 4}), version);
    for (size_t n = 0; n < npy.size(); ++n) {
      auto array = ParseNpy(absl::MakeConstSpan(npy.data(), n), "cut.npy");
      ASSERT_FALSE(array.ok()) << "prefix of " << n << " bytes parsed";
      EXPECT_EQ(array.status().code(), absl::StatusCode::kInvalidArgument) << array.status();
      EXPECT_THAT(std::string(array.status().message()), HasSubstr("cut.npy"));
    }
  }
  for (const bool zip64 : {false, true}) {
    const std::vector<uint8_t> whole = Zip(SampleEntries(), zip64);
    for (size_t n = 0; n < whole.size(); ++n) {
      auto archive =
          NpzArchive::FromBytes(std::vector<uint8_t>(whole.begin(), whole.begin() + n), "cut.npz");
      ASSERT_FALSE(archive.ok()) << "prefix of " << n << " bytes opened";
      EXPECT_EQ(archive.status().code(), absl::StatusCode::kInvalidArgument) << archive.status();
      EXPECT_THAT(std::string(archive.status().message()), HasSubstr("cut.npz: offset "));
    }
  }
}

TEST(NpzTest, CorruptBytesGiveErrorsNotCrashes) {
  // Every byte of the archive flipped in turn: opening and reading every key either succeeds
  // or returns an error; a flipped data byte is caught by the CRC. ASan checks the reads.
  for (const bool zip64 : {false, true}) {
    const std::vector<uint8_t> whole = Zip(SampleEntries(), zip64);
    int data_loss = 0;
    for (size_t i = 0; i < whole.size(); ++i) {
      for (const uint8_t mask : {uint8_t{0xFF}, uint8_t{0x01}, uint8_t{0x80}}) {
        std::vector<uint8_t> bytes = whole;
        bytes[i] ^= mask;
        auto archive = NpzArchive::FromBytes(std::move(bytes), "flip.npz");
        if (!archive.ok()) continue;
        for (const std::string& key : archive->Keys()) {
          auto array = archive->Get(key);
          if (!array.ok() && array.status().code() == absl::StatusCode::kDataLoss) ++data_loss;
        }
      }
    }
    EXPECT_GT(data_loss, 0);
  }
}

TEST(NpzTest, ReadsFilesFromDisk) {
  const std::string dir = ::testing::TempDir();
  const std::string npz_path = dir + "/kvtier_npz_test.npz";
  const std::string npy_path = dir + "/kvtier_npz_test.npy";
  {
    const std::vector<uint8_t> zip = Zip(SampleEntries(), /*zip64=*/true);
    std::ofstream(npz_path, std::ios::binary)
        .write(reinterpret_cast<const char*>(zip.data()), static_cast<std::streamsize>(zip.size()));
    const std::vector<uint8_t> npy = SampleEntries()[1].data;
    std::ofstream(npy_path, std::ios::binary)
        .write(reinterpret_cast<const char*>(npy.data()), static_cast<std::streamsize>(npy.size()));
  }
  auto archive = NpzArchive::Open(npz_path);
  ASSERT_TRUE(archive.ok()) << archive.status();
  EXPECT_EQ(archive->source(), npz_path);
  EXPECT_EQ(*archive->Get("ints")->ToInt64(), (std::vector<int64_t>{-1, 0, 7, 2147483647}));
  auto npy = ReadNpyFile(npy_path);
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_EQ(npy->shape(), (std::vector<int64_t>{4}));
  std::remove(npz_path.c_str());
  std::remove(npy_path.c_str());
}

// ---- AttentionDump on small archives --------------------------------------------------------

// A dump of random-free, recognisable values: element (h, t, d) of k is fp16 of h + t / 64 +
// d / 4096 (so a wrong stride shows), v its negation, q likewise.
struct SmallDump {
  int kv_heads = 2, q_heads = 4, tokens = 40, queries = 3, dim = 8;
  std::string k_shape, v_shape, q_shape, q_pos_shape;
  std::vector<int32_t> q_pos = {37, 38, 39};
  std::string meta;
  std::string k_descr = "<f2";

  std::vector<uint16_t> Values(int heads, int rows, float sign) const {
    std::vector<uint16_t> out;
    for (int h = 0; h < heads; ++h) {
      for (int t = 0; t < rows; ++t) {
        for (int d = 0; d < dim; ++d)
          out.push_back(FloatToFP16(sign * (h + t / 64.0f + d / 4096.0f)));
      }
    }
    return out;
  }
  std::string DefaultMeta() const {
    return absl::StrCat("{\"name\": \"small\", \"layer\": 1, \"tokens\": ", tokens,
                        ", \"queries\": ", queries,
                        ", \"bpb\": 1.5, \"model\": {\"vocab\": 256, \"d\": 32, \"layers\": 2, "
                        "\"hq\": ",
                        q_heads, ", \"hkv\": ", kv_heads, ", \"hd\": ", dim,
                        ", \"ffn\": 64, \"rope_base\": 10000.0, \"ctx\": 64}, \"layout\": "
                        "\"q [Hq, queries, hd]\\n\\u00e9\"}");
  }
  std::vector<ZipEntry> Entries() const {
    auto shape3 = [](int a, int b, int c) { return absl::StrCat("(", a, ", ", b, ", ", c, ")"); };
    const std::string m = meta.empty() ? DefaultMeta() : meta;
    std::u32string m32(m.begin(), m.end());
    return {
        {"q.npy", Npy("<f2", q_shape.empty() ? shape3(q_heads, queries, dim) : q_shape,
                      Raw(Values(q_heads, queries, 0.5f)))},
        {"k.npy", Npy(k_descr, k_shape.empty() ? shape3(kv_heads, tokens, dim) : k_shape,
                      Raw(Values(kv_heads, tokens, 1.0f)))},
        {"v.npy", Npy("<f2", v_shape.empty() ? shape3(kv_heads, tokens, dim) : v_shape,
                      Raw(Values(kv_heads, tokens, -1.0f)))},
        {"q_pos.npy",
         Npy("<i4", q_pos_shape.empty() ? absl::StrCat("(", q_pos.size(), ",)") : q_pos_shape,
             Raw(q_pos))},
        {"meta.npy", Npy(absl::StrCat("<U", m32.size()), "()", Utf32(m32, m32.size()))},
    };
  }
  absl::StatusOr<AttentionDump> Load() const {
    KVTIER_ASSIGN_OR_RETURN(NpzArchive archive, Archive(Entries(), /*zip64=*/true));
    return AttentionDump::FromArchive(archive);
  }
};

TEST(AttentionDumpTest, LoadsSmallDump) {
  const SmallDump spec;
  auto dump = spec.Load();
  ASSERT_TRUE(dump.ok()) << dump.status();
  EXPECT_EQ(dump->kv_heads(), 2);
  EXPECT_EQ(dump->q_heads(), 4);
  EXPECT_EQ(dump->group_size(), 2);
  EXPECT_EQ(dump->kv_head_of(3), 1);
  EXPECT_EQ(dump->tokens(), 40);
  EXPECT_EQ(dump->num_queries(), 3);
  EXPECT_EQ(dump->head_dim(), 8);
  EXPECT_FLOAT_EQ(dump->softmax_scale(), 1.0f / std::sqrt(8.0f));
  EXPECT_EQ(dump->keys().size(), 2u * 40 * 8);
  EXPECT_EQ(dump->values().size(), 2u * 40 * 8);
  EXPECT_EQ(dump->queries().size(), 4u * 3 * 8);
  EXPECT_EQ(std::vector<int32_t>(dump->query_positions().begin(), dump->query_positions().end()),
            spec.q_pos);
  EXPECT_EQ(FP16ToFloat(dump->key(1, 32)[4]), FP16ToFloat(FloatToFP16(1.5f + 4 / 4096.0f)));
  EXPECT_EQ(FP16ToFloat(dump->value(1, 32)[4]), -FP16ToFloat(FloatToFP16(1.5f + 4 / 4096.0f)));
  EXPECT_EQ(FP16ToFloat(dump->query(3, 2)[0]), FP16ToFloat(FloatToFP16(0.5f * (3 + 2 / 64.0f))));
  const AttentionDumpMeta& meta = dump->meta();
  EXPECT_EQ(meta.name, "small");
  EXPECT_EQ(meta.layer, 1);
  EXPECT_EQ(meta.tokens, 40);
  EXPECT_EQ(meta.queries, 3);
  EXPECT_EQ(meta.bits_per_byte, 1.5);
  EXPECT_EQ(meta.model.vocab, 256);
  EXPECT_EQ(meta.model.width, 32);
  EXPECT_EQ(meta.model.layers, 2);
  EXPECT_EQ(meta.model.q_heads, 4);
  EXPECT_EQ(meta.model.kv_heads, 2);
  EXPECT_EQ(meta.model.head_dim, 8);
  EXPECT_EQ(meta.model.ffn, 64);
  EXPECT_EQ(meta.model.rope_base, 10000.0);
  EXPECT_EQ(meta.model.context, 64);
  EXPECT_THAT(meta.json, HasSubstr("\"layout\""));
}

TEST(AttentionDumpTest, InconsistentShapesAreInvalidArgument) {
  struct Case {
    std::string what;
    SmallDump spec;
    std::string message;
  };
  std::vector<Case> cases;
  auto add = [&](std::string what, auto edit, std::string message) {
    SmallDump spec;
    edit(spec);
    cases.push_back({std::move(what), std::move(spec), std::move(message)});
  };
  add(
      "v differs from k", [](SmallDump& s) { s.v_shape = "(2, 20, 16)"; }, "expected equal");
  add(
      "k is 2-d", [](SmallDump& s) { s.k_shape = "(80, 8)"; }, "expected a 3-d float16 array");
  add(
      "k is float32",
      [](SmallDump& s) {
        s.k_descr = "<f4";
        s.k_shape = "(1, 40, 8)";
      },
      "expected a 3-d float16 array");
  add(
      "q head_dim", [](SmallDump& s) { s.q_shape = "(4, 6, 4)"; }, "the same head_dim");
  add(
      "q heads", [](SmallDump& s) { s.q_shape = "(3, 4, 8)"; }, "positive multiple");
  add(
      "q_pos length",
      [](SmallDump& s) {
        s.q_pos = {37, 38};
      },
      "one position per query");
  add(
      "q_pos 2-d", [](SmallDump& s) { s.q_pos_shape = "(3, 1)"; }, "one position per query");
  add(
      "q_pos range",
      [](SmallDump& s) {
        s.q_pos = {37, 38, 40};
      },
      "q_pos[2] is 40");
  add(
      "q_pos negative",
      [](SmallDump& s) {
        s.q_pos = {-1, 38, 39};
      },
      "q_pos[0] is -1");
  add(
      "meta tokens",
      [](SmallDump& s) {
        s.meta = s.DefaultMeta();
        s.meta.replace(s.meta.find("\"tokens\": 40"), 12, "\"tokens\": 41");
      },
      "meta tokens is 41");
  add(
      "meta hkv",
      [](SmallDump& s) {
        s.meta = s.DefaultMeta();
        s.meta.replace(s.meta.find("\"hkv\": 2"), 8, "\"hkv\": 1");
      },
      "meta model.hkv is 1");
  add(
      "meta layer",
      [](SmallDump& s) {
        s.meta = s.DefaultMeta();
        s.meta.replace(s.meta.find("\"layer\": 1"), 10, "\"layer\": 2");
      },
      "meta layer is 2");
  add(
      "meta missing hd",
      [](SmallDump& s) {
        s.meta = s.DefaultMeta();
        s.meta.replace(s.meta.find("\"hd\""), 4, "\"HD\"");
      },
      "no field 'model.hd'");
  add(
      "meta fractional",
      [](SmallDump& s) {
        s.meta = s.DefaultMeta();
        s.meta.replace(s.meta.find("\"queries\": 3"), 12, "\"queries\": 3.5");
      },
      "not an integer");
  add(
      "meta not JSON", [](SmallDump& s) { s.meta = "{\"layer\": 1,"; }, "meta JSON");
  add(
      "meta not object", [](SmallDump& s) { s.meta = "[1, 2]"; }, "not a JSON object");
  add(
      "meta too deep", [](SmallDump& s) { s.meta = std::string(100, '[') + std::string(100, ']'); },
      "not a JSON object");
  add(
      "meta too deep in object",
      [](SmallDump& s) {
        s.meta = "{\"a\": " + std::string(100, '[') + std::string(100, ']') + "}";
      },
      "nested too deeply");
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto dump = c.spec.Load();
    ASSERT_FALSE(dump.ok());
    EXPECT_EQ(dump.status().code(), absl::StatusCode::kInvalidArgument) << dump.status();
    EXPECT_THAT(std::string(dump.status().message()), HasSubstr(c.message));
    EXPECT_THAT(std::string(dump.status().message()), HasSubstr("test.npz"));
  }
  // A missing array is NotFound, naming the key.
  SmallDump spec;
  std::vector<ZipEntry> entries = spec.Entries();
  entries.erase(entries.begin() + 3);
  auto archive = Archive(entries);
  ASSERT_TRUE(archive.ok());
  auto dump = AttentionDump::FromArchive(*archive);
  EXPECT_EQ(dump.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(dump.status().message()), HasSubstr("'q_pos'"));
}

// ---- The real dumps -------------------------------------------------------------------------

// The README's table: captured attention mass at a 2% page budget.
using testing_util::DumpPath;
using testing_util::DumpsPresent;
using testing_util::kReadme;
using testing_util::ReadmeRow;

TEST(AttentionDumpTest, LoadsEveryDump) {
  std::string why;
  if (!DumpsPresent(&why)) GTEST_SKIP() << why;
  for (const ReadmeRow& row : kReadme) {
    SCOPED_TRACE(row.dump);
    auto dump = AttentionDump::Load(DumpPath(row.dump));
    ASSERT_TRUE(dump.ok()) << dump.status();
    const bool short_context = std::string(row.dump).find("8k") != std::string::npos;
    const int tokens = short_context ? 8192 : 24576;
    EXPECT_EQ(dump->kv_heads(), 2);
    EXPECT_EQ(dump->q_heads(), 8);
    EXPECT_EQ(dump->head_dim(), 64);
    EXPECT_EQ(dump->tokens(), tokens);
    EXPECT_EQ(dump->num_queries(), 256);
    EXPECT_EQ(dump->keys().size(), size_t{2} * tokens * 64);
    EXPECT_EQ(dump->values().size(), size_t{2} * tokens * 64);
    EXPECT_EQ(dump->queries().size(), size_t{8} * 256 * 64);
    // The last 256 positions, in order.
    for (int i = 0; i < 256; ++i) EXPECT_EQ(dump->query_positions()[i], tokens - 256 + i);
    const AttentionDumpMeta& meta = dump->meta();
    EXPECT_EQ(meta.name + "_L" + std::to_string(meta.layer), row.dump);
    EXPECT_EQ(meta.model.layers, 8);
    EXPECT_EQ(meta.model.width, 512);
    EXPECT_EQ(meta.model.vocab, 256);
    EXPECT_EQ(meta.model.context, short_context ? 8192 : 32768);
    EXPECT_EQ(meta.model.rope_base, short_context ? 1e4 : 5e5);
    EXPECT_GT(meta.bits_per_byte, 0.5);
    EXPECT_LT(meta.bits_per_byte, 4.0);
    // Finite fp16 everywhere.
    for (const auto data : {dump->keys(), dump->values(), dump->queries()}) {
      EXPECT_EQ(std::count_if(data.begin(), data.end(),
                              [](uint16_t b) { return (b & 0x7C00u) == 0x7C00u; }),
                0);
    }
  }
}

// ---- Captured attention mass, README protocol -----------------------------------------------
//
// The README's protocol, read as follows. Where it is ambiguous, each choice below is the one
// that reproduces the README's oracle 2% column: with it, all seven oracle figures and all
// seven bounds figures round to the README's three decimals (the other readings tried, listed
// after each choice, move single figures by up to 0.003 and, for the sampling, 0.017).
//  - A query at position p attends causally to n = p + 1 tokens, in 16-token pages from
//    token 0 (page j holds tokens [16j, 16j + 16)).
//  - Hot set: the first 64 tokens (pages 0..3) and the last 1024 tokens, widened to whole
//    pages: every page holding one of the last 1024 tokens is hot, so the window starts at
//    16 * floor((n - 1024) / 16). (Not: the window's boundary page partly hot with its older
//    tokens a candidate, or never attended.)
//  - Candidates: the pages between the sink and the window, [4, floor((n - 1024) / 16)); none
//    overlaps the hot set, so the budget never pays for hot tokens.
//  - Budget: floor(0.02 * n / 16) pages per KV head (10 at 8K tokens, 30 at 24K). (Not
//    rounded to nearest or up.)
//  - Per KV head, its G = 4 query heads choose together: bounds by the sum of the 4 heads'
//    page-bounds scores (the host twins of the summary and selection kernels, top k), the
//    oracle by the sum of the 4 heads' exact attention masses on each page.
//  - Captured mass of a head: its exact softmax mass (double, scale 1/sqrt(64)) on the hot
//    set plus the chosen pages; averaged over the 4 heads, both KV heads and 32 queries.
//  - The 32 queries: every 8th of the 256, starting with the first (indices 0, 8, ..., 248,
//    numpy's arange(0, 256, 8)). (Not: linspace(0, 255, 32), nor 7, 15, ..., 255.)
constexpr int kPageSize = 16;
constexpr int kSinkTokens = 64;
constexpr int kWindowTokens = 1024;
constexpr int kSampledQueries = 32;
constexpr double kBudgetShare = 0.02;

struct MassFigures {
  double hot = 0.0;     // hot set alone
  double oracle = 0.0;  // hot set + the budget's true best pages
  double bounds = 0.0;  // hot set + the page-bounds index's pages
};

MassFigures MeasureCapturedMass(const AttentionDump& dump) {
  const int dim = dump.head_dim(), group = dump.group_size(), kv_heads = dump.kv_heads();
  const int tokens = dump.tokens();
  const int pages = (tokens + kPageSize - 1) / kPageSize;

  // Page bounds of every page of every KV head, by the host twin of the summary kernel.
  std::vector<uint16_t> bounds;
  const absl::Status summarized = testing_util::DumpPageBounds(dump, kPageSize, &bounds);
  EXPECT_TRUE(summarized.ok()) << summarized;

  // One item per (sampled query, KV head).
  const int stride = dump.num_queries() / kSampledQueries;
  struct Item {
    int query = 0;  // index into the dump's queries
    int kv_head = 0;
    int n = 0;             // causal context: tokens 0..n-1
    int window_begin = 0;  // first token of the (page-aligned) recent window
    int cand_begin = 0;    // candidate pages [cand_begin, cand_end)
    int cand_end = 0;
    int budget = 0;                                // pages
    std::vector<int32_t> selected;                 // by the page-bounds index
    double hot = 0.0, oracle = 0.0, bounds = 0.0;  // captured mass summed over the G heads
  };
  std::vector<Item> work;
  for (int s = 0; s < kSampledQueries; ++s) {
    for (int h = 0; h < kv_heads; ++h) {
      Item it;
      it.query = s * stride;
      it.kv_head = h;
      it.n = dump.query_positions()[it.query] + 1;
      it.cand_begin = kSinkTokens / kPageSize;
      it.cand_end = std::max(it.cand_begin, (it.n - kWindowTokens) / kPageSize);
      it.window_begin = it.cand_end * kPageSize;
      it.budget = static_cast<int>(std::floor(kBudgetShare * it.n / kPageSize));
      work.push_back(std::move(it));
    }
  }

  // The page-bounds index's choice: one ReferenceBlockSelect per sampled query with its KV
  // heads as items (the budget, a per-call k, may change from one query to the next).
  for (size_t first = 0; first < work.size(); first += kv_heads) {
    const int k = work[first].budget;
    std::vector<uint16_t> q(static_cast<size_t>(kv_heads) * group * dim);
    std::vector<int32_t> begin(kv_heads), end(kv_heads);
    std::vector<const void*> item_bounds(kv_heads);
    for (int h = 0; h < kv_heads; ++h) {
      const Item& it = work[first + h];
      for (int g = 0; g < group; ++g) {
        std::copy_n(dump.query(h * group + g, it.query), dim,
                    q.begin() + (static_cast<size_t>(h) * group + g) * dim);
      }
      begin[h] = it.cand_begin;
      end[h] = it.cand_end;
      item_bounds[h] = bounds.data() + static_cast<size_t>(h) * pages * 2 * dim;
    }
    std::vector<int32_t> selected(static_cast<size_t>(kv_heads) * k, -7), count(kv_heads, -7);
    BlockSelectParams params;
    params.kind = BlockScoreKind::kPageBounds;
    params.mode = BlockSelectMode::kTopK;
    params.dtype = DType::kFP16;
    params.head_dim = dim;
    params.group_size = group;
    params.num_items = kv_heads;
    params.max_blocks = pages;
    params.k = k;
    params.q = q.data();
    params.block_begin = begin.data();
    params.block_end = end.data();
    params.bounds = item_bounds.data();
    params.selected = selected.data();
    params.num_selected = count.data();
    const absl::Status status = ReferenceBlockSelect(params);
    EXPECT_TRUE(status.ok()) << status;
    for (int h = 0; h < kv_heads; ++h) {
      Item& it = work[first + h];
      EXPECT_EQ(count[h], std::min(k, it.cand_end - it.cand_begin));
      const auto row = selected.begin() + static_cast<ptrdiff_t>(h) * k;
      it.selected.assign(row, row + std::clamp(count[h], 0, k));
      for (const int32_t j : it.selected) {
        EXPECT_TRUE(j >= it.cand_begin && j < it.cand_end) << "selected page " << j;
      }
    }
  }

  // Exact attention in double, item by item: each head's softmax over the causal context,
  // its mass on the hot set, and the candidate pages' masses summed over the group.
  std::vector<float> keys(dump.keys().size());  // exact widening, once
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = FP16ToFloat(dump.keys()[i]);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  tbb::parallel_for(0, static_cast<int>(work.size()), [&](int i) {
    Item& it = work[i];
    std::vector<double> page_mass(it.cand_end, 0.0);
    std::vector<double> p(it.n);
    std::vector<double> q(dim);
    for (int g = 0; g < group; ++g) {
      const uint16_t* qh = dump.query(it.kv_head * group + g, it.query);
      for (int d = 0; d < dim; ++d) q[d] = FP16ToFloat(qh[d]);
      double max_logit = -std::numeric_limits<double>::infinity();
      for (int t = 0; t < it.n; ++t) {
        const float* kt = keys.data() + (static_cast<size_t>(it.kv_head) * tokens + t) * dim;
        double dot = 0.0;
        for (int d = 0; d < dim; ++d) dot += q[d] * kt[d];
        p[t] = scale * dot;
        max_logit = std::max(max_logit, p[t]);
      }
      double z = 0.0;
      for (int t = 0; t < it.n; ++t) z += (p[t] = std::exp(p[t] - max_logit));
      for (int t = 0; t < it.n; ++t) {
        if (t < kSinkTokens || t >= it.window_begin) {
          it.hot += p[t] / z;
        } else {
          page_mass[t / kPageSize] += p[t] / z;
        }
      }
    }
    // The oracle: the budget's pages of largest true mass (ties to the lower page).
    std::vector<int32_t> best(it.cand_end - it.cand_begin);
    std::iota(best.begin(), best.end(), it.cand_begin);
    const int k = std::min(it.budget, static_cast<int>(best.size()));
    std::partial_sort(best.begin(), best.begin() + k, best.end(), [&](int32_t a, int32_t b) {
      return page_mass[a] != page_mass[b] ? page_mass[a] > page_mass[b] : a < b;
    });
    best.resize(k);
    it.oracle = it.hot;
    for (const int32_t j : best) it.oracle += page_mass[j];
    it.bounds = it.hot;
    for (const int32_t j : it.selected) it.bounds += page_mass[j];
  });

  MassFigures figures;
  for (const Item& it : work) {
    // The oracle's pages are the best k by the very sum both are scored by.
    EXPECT_LE(it.bounds, it.oracle + 1e-12);
    figures.hot += it.hot;
    figures.oracle += it.oracle;
    figures.bounds += it.bounds;
  }
  const double norm = static_cast<double>(work.size()) * group;
  figures.hot /= norm;
  figures.oracle /= norm;
  figures.bounds /= norm;
  return figures;
}

// The README's figures hold at kernel level: kvtier's page-bounds summaries and selection
// capture within 0.02 of the README's "bounds 2%" column (issue 4's criterion), and the true
// best pages within 0.02 of its "oracle 2%". Measured (this protocol; README in brackets):
//   dump             oracle 2%        bounds 2%
//   code_dev8k_L2    0.9300 [0.930]   0.9236 [0.924]
//   code_dev8k_L6    0.8783 [0.878]   0.8638 [0.864]
//   prose_dev8k_L2   0.9238 [0.924]   0.9171 [0.917]
//   prose_dev8k_L6   0.9195 [0.920]   0.9107 [0.911]
//   prose_dev_L7     0.9217 [0.922]   0.9040 [0.904]
//   prose_dev_L1     0.5858 [0.586]   0.5549 [0.555]
//   code_dev_L4      0.6410 [0.641]   0.6151 [0.615]
TEST(AttentionDumpTest, PageBoundsReproducesReadme) {
  std::string why;
  if (!DumpsPresent(&why)) GTEST_SKIP() << why;
  constexpr double kTolerance = 0.02;
  std::printf("%-16s %8s %8s %9s %8s %9s\n", "dump", "hot", "oracle", "[README]", "bounds",
              "[README]");
  for (const ReadmeRow& row : kReadme) {
    SCOPED_TRACE(row.dump);
    auto dump = AttentionDump::Load(DumpPath(row.dump));
    ASSERT_TRUE(dump.ok()) << dump.status();
    const MassFigures f = MeasureCapturedMass(*dump);
    std::printf("%-16s %8.4f %8.4f %9.3f %8.4f %9.3f\n", row.dump, f.hot, f.oracle, row.oracle_2,
                f.bounds, row.bounds_2);
    EXPECT_NEAR(f.bounds, row.bounds_2, kTolerance);
    EXPECT_NEAR(f.oracle, row.oracle_2, kTolerance);
    EXPECT_LE(f.hot, f.bounds);
    EXPECT_LE(f.bounds, f.oracle);
  }
}

}  // namespace
}  // namespace kvtier::workload
