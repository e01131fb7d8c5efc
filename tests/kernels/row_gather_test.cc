// ReferenceRowGather, the host twin of the row gather, against a plain per-byte loop on fresh
// random inputs: rows of random bytes, destinations and positions filled with poison first
// (every destination row and every position entry must be written; the guard entries past
// each positions array must not), random permutations per KV head, segments at the start, in
// the middle, at the end, covering the whole piece and empty; one array or two (K and V);
// validation, each error naming its field and writing nothing.
#include "kernels/row_gather.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "tests/testing/poison.h"
#include "tests/testing/row_gather_cases.h"

namespace kvtier {
namespace {

using testing_util::Describe;
using testing_util::GatherCase;
using testing_util::IsPoisoned;
using testing_util::kPoisonByte;
using testing_util::Poisoned;

// 16-byte aligned storage.
struct alignas(16) Vec16 {
  uint8_t b[16];
};

constexpr int32_t kGuard = 3;  // int32 entries past each positions array that stay poisoned

// One gather's host arrays: random sources, poisoned destinations and positions.
struct GatherSetup {
  GatherSetup(const GatherCase& c, uint64_t seed) : spec(c) {
    std::mt19937_64 rng(seed);
    const size_t vectors = static_cast<size_t>(c.tokens) * c.heads * c.row_bytes / 16;
    for (int a = 0; a < 2; ++a) {
      src[a].resize(std::max<size_t>(vectors, 1));
      for (Vec16& v : src[a]) {
        for (uint8_t& x : v.b) x = static_cast<uint8_t>(rng());
      }
      Vec16 poison;
      std::memset(poison.b, kPoisonByte, 16);
      dst[a].assign(std::max<size_t>(vectors, 1), poison);
    }
    order.resize(static_cast<size_t>(c.heads));
    positions.resize(static_cast<size_t>(c.heads));
    for (int32_t h = 0; h < c.heads; ++h) {
      order[h].resize(static_cast<size_t>(std::max(c.segment_tokens, 1)));
      std::iota(order[h].begin(), order[h].begin() + c.segment_tokens, 0);
      std::shuffle(order[h].begin(), order[h].begin() + c.segment_tokens, rng);
      positions[h].assign(static_cast<size_t>(c.segment_tokens + kGuard), Poisoned<int32_t>());
    }
    for (int32_t h = 0; h < c.heads; ++h) {
      order_ptr.push_back(order[h].data());
      position_ptr.push_back(positions[h].data());
    }
  }

  RowGatherParams Params() {
    RowGatherParams p;
    p.num_tokens = spec.tokens;
    p.num_heads = spec.heads;
    p.row_bytes = spec.row_bytes;
    p.segment_begin = spec.segment_begin;
    p.segment_tokens = spec.segment_tokens;
    p.src[0] = src[0].data();
    p.dst[0] = dst[0].data();
    if (spec.two_arrays) {
      p.src[1] = src[1].data();
      p.dst[1] = dst[1].data();
    }
    p.order = order_ptr.data();
    if (spec.positions) p.positions = position_ptr.data();
    p.position_base = spec.position_base;
    return p;
  }

  // The destination bytes by the definition, byte by byte: row (t, h) of dst is row
  // (segment_begin + order[h][t - segment_begin], h) of src inside the segment, else (t, h).
  std::vector<Vec16> Expected(int a) const {
    std::vector<Vec16> out = dst[a];
    if (a == 1 && !spec.two_arrays) return out;  // untouched
    const auto* s = src[a].front().b;
    auto* d = out.front().b;
    for (int64_t t = 0; t < spec.tokens; ++t) {
      for (int64_t h = 0; h < spec.heads; ++h) {
        int64_t from = t;
        if (t >= spec.segment_begin && t < spec.segment_begin + spec.segment_tokens) {
          from = spec.segment_begin + order[h][t - spec.segment_begin];
        }
        for (int64_t b = 0; b < spec.row_bytes; ++b) {
          d[(t * spec.heads + h) * spec.row_bytes + b] =
              s[(from * spec.heads + h) * spec.row_bytes + b];
        }
      }
    }
    return out;
  }

  GatherCase spec;
  std::vector<Vec16> src[2], dst[2];
  std::vector<std::vector<int32_t>> order, positions;
  std::vector<const int32_t*> order_ptr;
  std::vector<int32_t*> position_ptr;
};

bool SameBytes(const std::vector<Vec16>& a, const std::vector<Vec16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(Vec16)) == 0;
}

const std::vector<GatherCase>& Cases() {
  static const std::vector<GatherCase> cases = {
      {64, 8, 256, 16, 32},                      // bf16 D 128, segment in the middle
      {64, 8, 256, 0, 64},                       // the whole piece
      {100, 2, 128, 0, 48},                      // at the start
      {100, 2, 512, 52, 48, false},              // at the end, D 256 bf16 (or D 128 fp32), K only
      {33, 3, 16, 5, 17, true, false},           // 16-byte rows, odd sizes, no positions
      {40, 1, 1024, 8, 16, true, true, 4096},    // D 256 fp32: 64 vectors a row
      {17, 5, 48, 0, 0},                         // empty segment: a plain copy
      {1, 4, 128, 0, 1},                         // one token
      {256, 4, 192, 16, 224, true, true, 1000},  // 192-byte rows (D 96)
      {50, 2, 128, 10, 32, true, true, (int64_t{1} << 30)},
  };
  return cases;
}

TEST(RowGatherTest, TwinMatchesPlainLoop) {
  uint64_t seed = 1;
  for (const GatherCase& c : Cases()) {
    SCOPED_TRACE(Describe(c));
    GatherSetup setup(c, seed++);
    const std::vector<Vec16> want_k = setup.Expected(0), want_v = setup.Expected(1);
    const absl::Status status = ReferenceRowGather(setup.Params());
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_TRUE(SameBytes(setup.dst[0], want_k));
    EXPECT_TRUE(SameBytes(setup.dst[1], want_v));
    // Every destination row written (the sources are random, so a row left poisoned shows).
    for (int a = 0; a < (c.two_arrays ? 2 : 1); ++a) {
      size_t poisoned = 0;
      for (const Vec16& v : setup.dst[a]) poisoned += IsPoisoned(v) ? 1 : 0;
      EXPECT_EQ(poisoned, 0u) << "array " << a;
    }
    for (int32_t h = 0; h < c.heads; ++h) {
      for (int32_t t = 0; t < c.segment_tokens + kGuard; ++t) {
        const int32_t got = setup.positions[h][t];
        if (!c.positions || t >= c.segment_tokens) {
          EXPECT_TRUE(IsPoisoned(got)) << "positions[" << h << "][" << t << "] written";
        } else {
          EXPECT_EQ(got, c.position_base + setup.order[h][t] + 1)
              << "positions[" << h << "][" << t << "]";
        }
      }
    }
  }
}

// Gathering is a permutation inside the segment: gathering with the inverse order restores
// the source rows.
TEST(RowGatherTest, InverseOrderRestoresTheRows) {
  const GatherCase c{96, 4, 256, 16, 64, true, false};
  GatherSetup forward(c, 77);
  ASSERT_TRUE(ReferenceRowGather(forward.Params()).ok());
  GatherSetup back(c, 78);
  for (int32_t h = 0; h < c.heads; ++h) {
    for (int32_t t = 0; t < c.segment_tokens; ++t) back.order[h][forward.order[h][t]] = t;
  }
  back.src[0] = forward.dst[0];
  back.src[1] = forward.dst[1];
  ASSERT_TRUE(ReferenceRowGather(back.Params()).ok());
  EXPECT_TRUE(SameBytes(back.dst[0], forward.src[0]));
  EXPECT_TRUE(SameBytes(back.dst[1], forward.src[1]));
  EXPECT_FALSE(SameBytes(forward.dst[0], forward.src[0])) << "the order moved nothing";
}

TEST(RowGatherTest, NoTokensReadsAndWritesNothing) {
  RowGatherParams p;
  p.num_tokens = 0;
  p.num_heads = 8;
  p.row_bytes = 256;  // every pointer null: none is read
  EXPECT_TRUE(ReferenceRowGather(p).ok());
}

// Every invalid field: InvalidArgument naming it, and nothing written (dst and positions keep
// their poison; a bad order entry is the last one of the last head).
TEST(RowGatherTest, RejectsInvalidParametersAndWritesNothing) {
  struct Case {
    std::string expected;
    std::function<void(GatherSetup&, RowGatherParams&)> mutate;
  };
  const std::vector<Case> cases = {
      {"num_tokens is -1", [](GatherSetup&, RowGatherParams& p) { p.num_tokens = -1; }},
      {"num_heads is 0", [](GatherSetup&, RowGatherParams& p) { p.num_heads = 0; }},
      {"row_bytes is 0", [](GatherSetup&, RowGatherParams& p) { p.row_bytes = 0; }},
      {"row_bytes is 24", [](GatherSetup&, RowGatherParams& p) { p.row_bytes = 24; }},
      {"row_bytes is -16", [](GatherSetup&, RowGatherParams& p) { p.row_bytes = -16; }},
      {"segment [-1, 6) is not inside the 40 rows",
       [](GatherSetup&, RowGatherParams& p) { p.segment_begin = -1; }},
      {"segment [8, 41) is not inside the 40 rows",
       [](GatherSetup&, RowGatherParams& p) { p.segment_tokens = 33; }},
      {"segment [8, 7) is not inside",
       [](GatherSetup&, RowGatherParams& p) { p.segment_tokens = -1; }},
      {"position_base is -2", [](GatherSetup&, RowGatherParams& p) { p.position_base = -2; }},
      {"src[0] and dst[0] must be set",
       [](GatherSetup&, RowGatherParams& p) { p.src[0] = nullptr; }},
      {"src[0] and dst[0] must be set",
       [](GatherSetup&, RowGatherParams& p) { p.dst[0] = nullptr; }},
      {"src[1] and dst[1] must both be set",
       [](GatherSetup&, RowGatherParams& p) { p.dst[1] = nullptr; }},
      {"src[1] and dst[1] must both be set",
       [](GatherSetup&, RowGatherParams& p) { p.src[1] = nullptr; }},
      {"src[0] / dst[0] must be 16-byte aligned",
       [](GatherSetup&, RowGatherParams& p) { p.src[0] = static_cast<const char*>(p.src[0]) + 8; }},
      {"src[1] / dst[1] must be 16-byte aligned",
       [](GatherSetup&, RowGatherParams& p) { p.dst[1] = static_cast<char*>(p.dst[1]) + 4; }},
      {"order is null", [](GatherSetup&, RowGatherParams& p) { p.order = nullptr; }},
      {"order[2] is null", [](GatherSetup& s, RowGatherParams&) { s.order_ptr[2] = nullptr; }},
      {"positions[2] is null",
       [](GatherSetup& s, RowGatherParams&) { s.position_ptr[2] = nullptr; }},
      {"order[2][6] is 7; expected in [0, 7)",
       [](GatherSetup& s, RowGatherParams&) { s.order[2][6] = 7; }},
      {"order[2][6] is -1; expected in [0, 7)",
       [](GatherSetup& s, RowGatherParams&) { s.order[2][6] = -1; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    GatherSetup setup(GatherCase{40, 3, 64, 8, 7, true, true, 100}, 5);
    RowGatherParams p = setup.Params();
    c.mutate(setup, p);
    const std::vector<Vec16> before_k = setup.dst[0], before_v = setup.dst[1];
    const std::vector<std::vector<int32_t>> before_positions = setup.positions;
    const absl::Status status = ReferenceRowGather(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(c.expected), absl::string_view::npos) << status;
    EXPECT_TRUE(SameBytes(setup.dst[0], before_k));
    EXPECT_TRUE(SameBytes(setup.dst[1], before_v));
    EXPECT_EQ(setup.positions, before_positions);
  }
}

}  // namespace
}  // namespace kvtier
