// ReferenceTokenPack, the host twin of the token pack, against a plain per-element loop on
// fresh random inputs: pages at shuffled slots of one pool whose rows hold earlier content
// (which rows outside the run must keep, byte for byte); runs starting and ending inside
// pages, single-token and single-page runs, odd page sizes and head counts; validation.
#include "kernels/token_pack.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"

namespace kvtier {
namespace {

// 16-byte aligned storage of 16-bit elements.
struct alignas(16) Vec16 {
  uint16_t e[8];
};

struct PackCase {
  DType dtype = DType::kBF16;
  int32_t heads = 8;
  int32_t head_dim = 128;
  int32_t page_size = 16;
  int32_t tokens = 0;
  int64_t first_position = 0;
  uint64_t seed = 1;
};

std::string Describe(const PackCase& c) {
  return absl::StrCat(DTypeName(c.dtype), " H ", c.heads, " D ", c.head_dim, " P ", c.page_size,
                      ", ", c.tokens, " tokens from position ", c.first_position);
}

// A run and its destination: k and v random, the pool's pages (K and V interleaved at
// shuffled slots) full of random earlier content.
struct PackSetup {
  explicit PackSetup(const PackCase& c) : spec(c) {
    std::mt19937_64 rng(c.seed);
    const int64_t row = c.head_dim;
    const int64_t values = int64_t{c.tokens} * c.heads * row;
    k.resize((values + 7) / 8);
    v.resize((values + 7) / 8);
    for (auto* a : {&k, &v}) {
      for (Vec16& x : *a) {
        for (uint16_t& e : x.e) e = static_cast<uint16_t>(rng());
      }
    }
    num_pages = TokenPackPages(c.first_position, c.tokens, c.page_size);
    const int64_t entries = num_pages * c.heads;
    page_values = int64_t{c.page_size} * row;
    pool.resize((2 * entries * page_values + 7) / 8);
    for (Vec16& x : pool) {
      for (uint16_t& e : x.e) e = static_cast<uint16_t>(rng());
    }
    std::vector<int64_t> slot(2 * entries);
    std::iota(slot.begin(), slot.end(), 0);
    std::shuffle(slot.begin(), slot.end(), rng);
    for (int64_t e = 0; e < entries; ++e) {
      k_pages.push_back(Pool() + slot[2 * e] * page_values);
      v_pages.push_back(Pool() + slot[2 * e + 1] * page_values);
    }
  }

  uint16_t* Pool() { return pool.empty() ? nullptr : pool.front().e; }
  const uint16_t* K() const { return k.empty() ? nullptr : k.front().e; }
  const uint16_t* V() const { return v.empty() ? nullptr : v.front().e; }

  TokenPackParams Params() {
    TokenPackParams p;
    p.dtype = spec.dtype;
    p.num_kv_heads = spec.heads;
    p.head_dim = spec.head_dim;
    p.page_size = spec.page_size;
    p.num_tokens = spec.tokens;
    p.first_position = spec.first_position;
    p.k = K();
    p.v = V();
    p.k_pages = k_pages.data();
    p.v_pages = v_pages.data();
    return p;
  }

  // The pool after the pack, by the plain loop (element by element, on a copy).
  std::vector<Vec16> Expected() const {
    std::vector<Vec16> out = pool;
    const uint16_t* base = pool.front().e;
    uint16_t* dst = out.front().e;
    const int64_t row = spec.head_dim;
    for (int64_t t = 0; t < spec.tokens; ++t) {
      const int64_t position = spec.first_position + t;
      const int64_t page = position / spec.page_size - spec.first_position / spec.page_size;
      for (int64_t h = 0; h < spec.heads; ++h) {
        const int64_t entry = page * spec.heads + h;
        for (int64_t d = 0; d < row; ++d) {
          const int64_t at = (position % spec.page_size) * row + d;
          dst[static_cast<const uint16_t*>(k_pages[entry]) - base + at] =
              K()[(t * spec.heads + h) * row + d];
          dst[static_cast<const uint16_t*>(v_pages[entry]) - base + at] =
              V()[(t * spec.heads + h) * row + d];
        }
      }
    }
    return out;
  }

  PackCase spec;
  std::vector<Vec16> k, v, pool;
  int64_t num_pages = 0;
  int64_t page_values = 0;
  std::vector<void*> k_pages, v_pages;
};

bool SameBytes(const std::vector<Vec16>& a, const std::vector<Vec16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(Vec16)) == 0;
}

TEST(TokenPackTest, PagesOfARun) {
  EXPECT_EQ(TokenPackPages(0, 0, 16), 0);
  EXPECT_EQ(TokenPackPages(5, 0, 16), 0);
  EXPECT_EQ(TokenPackPages(0, 1, 16), 1);
  EXPECT_EQ(TokenPackPages(0, 16, 16), 1);
  EXPECT_EQ(TokenPackPages(0, 17, 16), 2);
  EXPECT_EQ(TokenPackPages(15, 1, 16), 1);
  EXPECT_EQ(TokenPackPages(15, 2, 16), 2);
  EXPECT_EQ(TokenPackPages(17, 31, 16), 2);
  EXPECT_EQ(TokenPackPages(17, 32, 16), 3);
  EXPECT_EQ(TokenPackPages(7, 3, 1), 3);
}

TEST(TokenPackTest, TwinMatchesPlainLoop) {
  std::vector<PackCase> cases = {
      {DType::kBF16, 8, 128, 16, 1000, 0},   // whole pages, last one partial
      {DType::kBF16, 8, 128, 16, 1, 0},      // one token
      {DType::kFP16, 2, 128, 16, 5, 3},      // inside one page, both ends partial
      {DType::kBF16, 4, 64, 32, 2, 31},      // two tokens across a page boundary
      {DType::kFP16, 1, 64, 1, 37, 5},       // one token a page
      {DType::kBF16, 3, 256, 7, 50, 12},     // odd page size and head count
      {DType::kFP16, 5, 96, 17, 300, 1000},  // D 96: the twin's rows of 192 bytes
      {DType::kBF16, 2, 64, 64, 128, 64},    // exactly two pages, page-aligned start
      {DType::kBF16, 8, 128, 16, 4096 + 7, 16 * 1000 + 9},
      {DType::kFP16, 2, 64, 16, 40, (int64_t{1} << 40) + 13},  // positions beyond 32 bits
  };
  uint64_t seed = 10;
  for (PackCase& c : cases) {
    c.seed = seed++;
    SCOPED_TRACE(Describe(c));
    PackSetup setup(c);
    const std::vector<Vec16> want = setup.Expected();
    const absl::Status status = ReferenceTokenPack(setup.Params());
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_TRUE(SameBytes(setup.pool, want));
  }
}

// Packing a prompt in pieces equals packing it at once.
TEST(TokenPackTest, PiecesEqualWholeRun) {
  PackCase whole{DType::kBF16, 4, 64, 16, 203, 9, 77};
  PackSetup a(whole);
  ASSERT_TRUE(ReferenceTokenPack(a.Params()).ok());
  PackSetup b(whole);  // same seed: same inputs and earlier content
  int64_t done = 0;
  for (int32_t piece : {1, 6, 16, 30, 150}) {
    TokenPackParams p = b.Params();
    p.num_tokens = piece;
    p.first_position = whole.first_position + done;
    const int64_t skip = (p.first_position / 16 - whole.first_position / 16) * whole.heads;
    p.k = b.K() + done * whole.heads * whole.head_dim;
    p.v = b.V() + done * whole.heads * whole.head_dim;
    p.k_pages = b.k_pages.data() + skip;
    p.v_pages = b.v_pages.data() + skip;
    ASSERT_TRUE(ReferenceTokenPack(p).ok());
    done += piece;
  }
  ASSERT_EQ(done, whole.tokens);
  EXPECT_TRUE(SameBytes(a.pool, b.pool));
}

TEST(TokenPackTest, NoTokensReadsAndWritesNothing) {
  TokenPackParams p;
  p.num_kv_heads = 8;
  p.head_dim = 128;
  p.page_size = 16;
  p.num_tokens = 0;
  p.first_position = 123;  // every pointer null: none is read
  EXPECT_TRUE(ReferenceTokenPack(p).ok());
}

// Every invalid field: InvalidArgument naming it, and nothing written (the bad page entry is
// the last one, so a twin that wrote before checking would show).
TEST(TokenPackTest, RejectsInvalidParametersAndWritesNothing) {
  struct Case {
    std::string expected;
    std::function<void(PackSetup&, TokenPackParams&)> mutate;
  };
  const std::vector<Case> cases = {
      {"dtype is fp32", [](PackSetup&, TokenPackParams& p) { p.dtype = DType::kFP32; }},
      {"num_kv_heads is 0", [](PackSetup&, TokenPackParams& p) { p.num_kv_heads = 0; }},
      {"head_dim is 0", [](PackSetup&, TokenPackParams& p) { p.head_dim = 0; }},
      {"head_dim is 4", [](PackSetup&, TokenPackParams& p) { p.head_dim = 4; }},
      {"page_size is 0", [](PackSetup&, TokenPackParams& p) { p.page_size = 0; }},
      {"num_tokens is -1", [](PackSetup&, TokenPackParams& p) { p.num_tokens = -1; }},
      {"first_position is -1", [](PackSetup&, TokenPackParams& p) { p.first_position = -1; }},
      {"first_position is 9223372036854775800",
       [](PackSetup&, TokenPackParams& p) { p.first_position = INT64_MAX - 7; }},
      {"k is null", [](PackSetup&, TokenPackParams& p) { p.k = nullptr; }},
      {"v is null", [](PackSetup&, TokenPackParams& p) { p.v = nullptr; }},
      {"k_pages is null", [](PackSetup&, TokenPackParams& p) { p.k_pages = nullptr; }},
      {"v_pages is null", [](PackSetup&, TokenPackParams& p) { p.v_pages = nullptr; }},
      {"16-byte aligned", [](PackSetup& s, TokenPackParams& p) { p.k = s.K() + 1; }},
      {"16-byte aligned", [](PackSetup& s, TokenPackParams& p) { p.v = s.V() + 4; }},
      {"v_pages[11] (page 3, KV head 2) is null",
       [](PackSetup& s, TokenPackParams&) { s.v_pages.back() = nullptr; }},
      {"k_pages[11] (page 3, KV head 2) is not 16-byte aligned",
       [](PackSetup& s, TokenPackParams&) {
         s.k_pages.back() = static_cast<uint16_t*>(s.k_pages.back()) + 1;
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.expected);
    PackSetup setup(PackCase{DType::kBF16, 3, 64, 16, 40, 10, 5});  // pages 0..3
    ASSERT_EQ(setup.k_pages.size(), 12u);
    const std::vector<Vec16> before = setup.pool;
    TokenPackParams p = setup.Params();
    c.mutate(setup, p);
    const absl::Status status = ReferenceTokenPack(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(c.expected), absl::string_view::npos) << status;
    EXPECT_TRUE(SameBytes(setup.pool, before));
  }
}

}  // namespace
}  // namespace kvtier
