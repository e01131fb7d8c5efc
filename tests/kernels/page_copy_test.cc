// ReferencePageCopy, the host twin of the zero-copy page load: it is the oracle of the GPU
// test, so it is checked here against an independent expectation built page by page.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/page_copy.h"
#include "tests/testing/aligned_bytes.h"

namespace kvtier {
namespace {

constexpr uint8_t kPoison = 0xFF;

// A batch: `num_pages` distinct random pages of a source arena of random bytes go to
// distinct random slots of a poisoned destination arena that has more slots than the batch,
// so a write to a wrong slot, a missing write and a write past a page all show.
struct Batch {
  Batch(int64_t page_bytes, int64_t num_source_pages, int64_t num_slots, int64_t num_pages,
        uint32_t seed)
      : page_bytes(page_bytes),
        source(static_cast<size_t>(page_bytes * num_source_pages)),
        dest(static_cast<size_t>(page_bytes * num_slots)) {
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < source.size(); ++i) source.data()[i] = std::byte(rng() & 0xFF);
    std::memset(dest.data(), kPoison, dest.size());
    std::vector<int64_t> pages(num_source_pages), slots(num_slots);
    std::iota(pages.begin(), pages.end(), 0);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    std::shuffle(slots.begin(), slots.end(), rng);
    for (int64_t i = 0; i < num_pages; ++i) {
      source_page.push_back(pages[i]);
      slot.push_back(slots[i]);
      src.push_back(source.data() + pages[i] * page_bytes);
      dst.push_back(dest.data() + slots[i] * page_bytes);
    }
  }

  PageCopyParams params() const {
    PageCopyParams p;
    p.src = src.data();
    p.dst = dst.data();
    p.num_pages = static_cast<int64_t>(src.size());
    p.page_bytes = page_bytes;
    return p;
  }

  // The destination arena as it must be after the copy.
  std::vector<std::byte> Expected() {
    std::vector<std::byte> expected(dest.size(), std::byte{kPoison});
    for (size_t i = 0; i < slot.size(); ++i) {
      for (int64_t b = 0; b < page_bytes; ++b) {
        expected[slot[i] * page_bytes + b] = source.data()[source_page[i] * page_bytes + b];
      }
    }
    return expected;
  }

  bool DestUntouched() {
    return std::all_of(dest.data(), dest.data() + dest.size(),
                       [](std::byte b) { return b == std::byte{kPoison}; });
  }

  std::vector<std::byte> DestBytes() {
    return std::vector<std::byte>(dest.data(), dest.data() + dest.size());
  }

  int64_t page_bytes;
  AlignedBytes source;
  AlignedBytes dest;
  std::vector<int64_t> source_page;
  std::vector<int64_t> slot;
  std::vector<const void*> src;
  std::vector<void*> dst;
};

// Fresh inputs every run; the seed is printed with any failure so it can be replayed.
uint32_t FreshSeed() { return std::random_device{}(); }

class ReferencePageCopySizes : public ::testing::TestWithParam<int64_t> {};

TEST_P(ReferencePageCopySizes, CopiesRandomPagesIntoShuffledSlots) {
  const int64_t page_bytes = GetParam();
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  Batch batch(page_bytes, /*num_source_pages=*/64, /*num_slots=*/48, /*num_pages=*/40, seed);
  ASSERT_TRUE(ReferencePageCopy(batch.params()).ok());
  EXPECT_EQ(batch.DestBytes(), batch.Expected());
}

INSTANTIATE_TEST_SUITE_P(PageSizes, ReferencePageCopySizes,
                         ::testing::Values(16, 512, 4096, 4112, 32768),
                         [](const ::testing::TestParamInfo<int64_t>& info) {
                           return std::to_string(info.param) + "B";
                         });

// Enough bytes for the oneTBB path (more than one task's worth).
TEST(ReferencePageCopy, LargeBatchMatches) {
  const uint32_t seed = FreshSeed();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  Batch batch(/*page_bytes=*/4096, /*num_source_pages=*/4096, /*num_slots=*/3000,
              /*num_pages=*/2500, seed);
  ASSERT_TRUE(ReferencePageCopy(batch.params()).ok());
  EXPECT_EQ(batch.DestBytes(), batch.Expected());
}

TEST(ReferencePageCopy, ZeroPagesIsANoOp) {
  PageCopyParams params;
  params.num_pages = 0;
  params.page_bytes = 4096;
  EXPECT_TRUE(ReferencePageCopy(params).ok());  // null arrays are fine with no pages
}

// Each bad parameter: InvalidArgument and every destination byte still poisoned.
TEST(ReferencePageCopy, BadParamsAreRejectedAndWriteNothing) {
  Batch batch(/*page_bytes=*/512, /*num_source_pages=*/16, /*num_slots=*/16, /*num_pages=*/8,
              /*seed=*/3);
  auto expect_rejected = [&](const PageCopyParams& params, const char* what) {
    const absl::Status status = ReferencePageCopy(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << what << ": " << status;
    EXPECT_TRUE(batch.DestUntouched()) << what;
  };

  for (int64_t bad_size : {int64_t{0}, int64_t{-16}, int64_t{8}, int64_t{100}, int64_t{520}}) {
    PageCopyParams params = batch.params();
    params.page_bytes = bad_size;
    expect_rejected(params, "page_bytes not a positive multiple of 16");
  }
  {
    PageCopyParams params = batch.params();
    params.num_pages = -1;
    expect_rejected(params, "negative num_pages");
  }
  {
    PageCopyParams params = batch.params();
    params.num_pages = std::numeric_limits<int64_t>::max() / 256;
    expect_rejected(params, "byte count overflows");
  }
  {
    PageCopyParams params = batch.params();
    params.src = nullptr;
    expect_rejected(params, "null src array");
  }
  {
    PageCopyParams params = batch.params();
    params.dst = nullptr;
    expect_rejected(params, "null dst array");
  }
  {
    // A misaligned pointer array (its first entry is still valid memory of the array).
    std::vector<std::byte> raw((batch.src.size() + 1) * sizeof(void*));
    std::memcpy(raw.data() + 4, batch.src.data(), batch.src.size() * sizeof(void*));
    PageCopyParams params = batch.params();
    params.src = reinterpret_cast<const void* const*>(raw.data() + 4);
    expect_rejected(params, "misaligned src array");
  }
  // Bad entries, last in the list, so that a twin copying before checking would show.
  {
    std::vector<const void*> src = batch.src;
    src.back() = nullptr;
    PageCopyParams params = batch.params();
    params.src = src.data();
    expect_rejected(params, "null source page");
  }
  {
    std::vector<const void*> src = batch.src;
    src.back() = static_cast<const std::byte*>(src.back()) + 8;
    PageCopyParams params = batch.params();
    params.src = src.data();
    expect_rejected(params, "misaligned source page");
  }
  {
    std::vector<void*> dst = batch.dst;
    dst.back() = static_cast<std::byte*>(dst.back()) + 4;
    PageCopyParams params = batch.params();
    params.dst = dst.data();
    expect_rejected(params, "misaligned destination page");
  }
}

TEST(ReferencePageCopy, ErrorSaysWhatWasExpected) {
  PageCopyParams params;
  params.num_pages = 1;
  params.page_bytes = 100;
  const absl::Status status = ReferencePageCopy(params);
  EXPECT_NE(status.message().find("multiple of 16"), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace kvtier
