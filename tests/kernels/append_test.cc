// ReferenceAppend and ReferenceWriteBack, the host twins of the append and write-back
// kernels, against expectations built element by element: random rows of random tokens land
// in poisoned window pages, exactly one row per (sequence, KV head); write-back copies the
// listed pages and skips entries without a destination; bad input is rejected untouched.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/append.h"
#include "kernels/base/dtype.h"

namespace kvtier {
namespace {

constexpr uint16_t kPoison = 0xFFFF;  // a NaN in bf16 and fp16

// 16-byte aligned storage of 16-bit elements.
class AlignedElements {
 public:
  explicit AlignedElements(size_t count) : chunks_((count * 2 + 15) / 16), count_(count) {}
  uint16_t* data() { return reinterpret_cast<uint16_t*>(chunks_.data()); }
  size_t size() const { return count_; }

 private:
  struct alignas(16) Chunk {
    std::byte b[16];
  };
  std::vector<Chunk> chunks_;
  size_t count_;
};

void FillRandom(AlignedElements& e, std::mt19937_64& rng) {
  // Random finite bf16/fp16 patterns, never zero: low exponent bits keep them finite.
  for (size_t i = 0; i < e.size(); ++i)
    e.data()[i] = static_cast<uint16_t>(0x1000 | (rng() & 0x3FFF));
}

struct AppendCase {
  DType dtype;
  int32_t batch, heads, head_dim, page_size;
};

class AppendTwinTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(AppendTwinTest, WritesOneRowPerSequenceAndHead) {
  const AppendCase c = GetParam();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  const int32_t entries = c.batch * c.heads;
  const size_t page_elems = static_cast<size_t>(c.page_size) * c.head_dim;
  // More pages than entries, in a shuffled assignment, so a write to the wrong page shows.
  const int32_t num_pages = entries + 3;
  AlignedElements k_new(entries * c.head_dim), v_new(entries * c.head_dim);
  AlignedElements k_arena(num_pages * page_elems), v_arena(num_pages * page_elems);
  FillRandom(k_new, rng);
  FillRandom(v_new, rng);
  std::fill(k_arena.data(), k_arena.data() + k_arena.size(), kPoison);
  std::fill(v_arena.data(), v_arena.data() + v_arena.size(), kPoison);
  std::vector<int32_t> page_of(num_pages);
  for (int32_t i = 0; i < num_pages; ++i) page_of[i] = i;
  std::shuffle(page_of.begin(), page_of.end(), rng);
  std::vector<void*> k_pages(entries), v_pages(entries);
  for (int32_t e = 0; e < entries; ++e) {
    k_pages[e] = k_arena.data() + page_of[e] * page_elems;
    v_pages[e] = v_arena.data() + page_of[e] * page_elems;
  }
  std::vector<int32_t> rows(c.batch);
  for (int32_t& r : rows) r = static_cast<int32_t>(rng() % c.page_size);

  AppendParams p;
  p.dtype = c.dtype;
  p.batch = c.batch;
  p.num_kv_heads = c.heads;
  p.head_dim = c.head_dim;
  p.page_size = c.page_size;
  p.k_new = k_new.data();
  p.v_new = v_new.data();
  p.k_pages = k_pages.data();
  p.v_pages = v_pages.data();
  p.rows = rows.data();
  ASSERT_TRUE(ReferenceAppend(p).ok());

  for (int32_t page = 0; page < num_pages; ++page) {
    int32_t entry = -1;
    for (int32_t e = 0; e < entries; ++e) {
      if (page_of[e] == page) entry = e;
    }
    for (int32_t row = 0; row < c.page_size; ++row) {
      const bool written = entry >= 0 && rows[entry / c.heads] == row;
      for (int32_t d = 0; d < c.head_dim; ++d) {
        const size_t at = page * page_elems + static_cast<size_t>(row) * c.head_dim + d;
        const uint16_t k_expected = written ? k_new.data()[entry * c.head_dim + d] : kPoison;
        const uint16_t v_expected = written ? v_new.data()[entry * c.head_dim + d] : kPoison;
        ASSERT_EQ(k_arena.data()[at], k_expected) << "page " << page << " row " << row;
        ASSERT_EQ(v_arena.data()[at], v_expected) << "page " << page << " row " << row;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AppendTwinTest,
                         ::testing::Values(AppendCase{DType::kBF16, 5, 8, 128, 16},
                                           AppendCase{DType::kFP16, 3, 2, 64, 16},
                                           AppendCase{DType::kBF16, 1, 1, 256, 32},
                                           AppendCase{DType::kFP16, 4, 3, 8, 1}));

TEST(AppendTest, InvalidInputIsRejectedAndWritesNothing) {
  AlignedElements k_new(2 * 64), v_new(2 * 64), page(16 * 64 * 4);
  std::fill(page.data(), page.data() + page.size(), kPoison);
  std::vector<void*> k_pages = {page.data(), page.data() + 16 * 64};
  std::vector<void*> v_pages = {page.data() + 2 * 16 * 64, page.data() + 3 * 16 * 64};
  std::vector<int32_t> rows = {3, 15};
  AppendParams good;
  good.dtype = DType::kBF16;
  good.batch = 2;
  good.num_kv_heads = 1;
  good.head_dim = 64;
  good.page_size = 16;
  good.k_new = k_new.data();
  good.v_new = v_new.data();
  good.k_pages = k_pages.data();
  good.v_pages = v_pages.data();
  good.rows = rows.data();
  struct Case {
    std::string needle;
    AppendParams p;
  };
  std::vector<Case> cases(9, Case{"", good});
  cases[0].needle = "dtype";
  cases[0].p.dtype = DType::kFP32;
  cases[1].needle = "head_dim";
  cases[1].p.head_dim = 4;  // 8-byte rows
  cases[2].needle = "page_size";
  cases[2].p.page_size = 0;
  cases[3].needle = "num_kv_heads";
  cases[3].p.num_kv_heads = 0;
  cases[4].needle = "batch";
  cases[4].p.batch = -1;
  cases[5].needle = "rows";
  cases[5].p.rows = nullptr;
  cases[6].needle = "k_new";
  cases[6].p.k_new = reinterpret_cast<const std::byte*>(k_new.data()) + 2;
  cases[7].needle = "v_pages";
  cases[7].p.v_pages = nullptr;
  cases[8].needle = "rows[1]";
  std::vector<int32_t> bad_rows = {3, 16};
  cases[8].p.rows = bad_rows.data();
  for (const Case& c : cases) {
    const absl::Status status = ReferenceAppend(c.p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.needle << ": " << status;
    EXPECT_NE(std::string(status.message()).find(c.needle), std::string::npos) << status;
  }
  for (size_t i = 0; i < page.size(); ++i) ASSERT_EQ(page.data()[i], kPoison) << i;
  good.batch = 0;
  EXPECT_TRUE(ReferenceAppend(good).ok());
}

TEST(WriteBackTest, CopiesListedPagesAndSkipsNullDestinations) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  constexpr int32_t kEntries = 40;
  constexpr size_t kPageElems = 16 * 128;  // 4 KiB bf16 pages
  AlignedElements window(2 * kEntries * kPageElems), frames(2 * kEntries * kPageElems);
  FillRandom(window, rng);
  std::fill(frames.data(), frames.data() + frames.size(), kPoison);
  std::vector<const void*> k_src(kEntries), v_src(kEntries);
  std::vector<void*> k_dst(kEntries), v_dst(kEntries);
  std::vector<int32_t> frame_of(kEntries);
  for (int32_t i = 0; i < kEntries; ++i) frame_of[i] = i;
  std::shuffle(frame_of.begin(), frame_of.end(), rng);
  std::vector<bool> listed(kEntries);
  for (int32_t i = 0; i < kEntries; ++i) {
    listed[i] = rng() % 3 != 0;
    k_src[i] = window.data() + (2 * i) * kPageElems;
    v_src[i] = window.data() + (2 * i + 1) * kPageElems;
    k_dst[i] = listed[i] ? frames.data() + (2 * frame_of[i]) * kPageElems : nullptr;
    v_dst[i] = frames.data() + (2 * frame_of[i] + 1) * kPageElems;
  }
  WriteBackParams p;
  p.num_pages = kEntries;
  p.page_bytes = kPageElems * 2;
  p.k_src = k_src.data();
  p.v_src = v_src.data();
  p.k_dst = k_dst.data();
  p.v_dst = v_dst.data();
  ASSERT_TRUE(ReferenceWriteBack(p).ok());
  for (int32_t i = 0; i < kEntries; ++i) {
    for (int kv = 0; kv < 2; ++kv) {
      const uint16_t* got = frames.data() + (2 * frame_of[i] + kv) * kPageElems;
      const uint16_t* src = window.data() + (2 * i + kv) * kPageElems;
      for (size_t e = 0; e < kPageElems; ++e) {
        ASSERT_EQ(got[e], listed[i] ? src[e] : kPoison) << "entry " << i << " kv " << kv;
      }
    }
  }
}

TEST(WriteBackTest, InvalidInputIsRejected) {
  WriteBackParams p;
  p.num_pages = 1;
  p.page_bytes = 100;
  EXPECT_EQ(ReferenceWriteBack(p).code(), absl::StatusCode::kInvalidArgument);
  p.page_bytes = 4096;
  EXPECT_EQ(ReferenceWriteBack(p).code(), absl::StatusCode::kInvalidArgument);  // null arrays
  p.num_pages = -1;
  EXPECT_EQ(ReferenceWriteBack(p).code(), absl::StatusCode::kInvalidArgument);
  p.num_pages = 0;
  EXPECT_TRUE(ReferenceWriteBack(p).ok());
}

}  // namespace
}  // namespace kvtier
