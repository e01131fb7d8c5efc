#include "index/block_index.h"

#include "gtest/gtest.h"
#include "kernels/value_shift.h"

namespace kvtier::internal {
namespace {

IndexConfig Config() {
  IndexConfig c;
  c.dtype = DType::kBF16;
  c.head_dim = 128;
  c.group_size = 4;
  c.page_size = 16;
  c.max_pages = 2048;
  c.max_items = 64;
  c.softmax_scale = 0.088f;
  c.budget_pages = 64;
  c.max_segment_tokens = 4096;
  c.max_segments = 8;
  return c;
}

TEST(BlockIndexTest, PageBoundsKeepsOneBoundsArrayAndRefusesMassAndEstimation) {
  auto index = CreateBlockIndex(IndexKind::kPageBounds, Config());
  ASSERT_TRUE(index.ok()) << index.status();
  const SummaryLayout l = (*index)->layout();
  EXPECT_EQ(l.arrays, 1);
  EXPECT_EQ(l.bytes_per_page, 2 * 128 * 2);
  EXPECT_GT((*index)->workspace_bytes(), 0u);
  EXPECT_FALSE((*index)->estimates());
  EXPECT_FALSE((*index)->orders_segments());
  IndexConfig c = Config();
  c.mass_target = 0.9;
  EXPECT_EQ(CreateBlockIndex(IndexKind::kPageBounds, c).status().code(),
            absl::StatusCode::kInvalidArgument);
  c = Config();
  c.estimate_pages = 8;
  EXPECT_EQ(CreateBlockIndex(IndexKind::kPageBounds, c).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The wave index sizes every workspace it launches with (the CUDA kernels refuse a missing
// one, the host twins do not look), and its arrays fit the region without overlapping, the
// vector-read ones 16-byte aligned.
TEST(BlockIndexTest, WaveSizesItsWorkspacesAndLaysOutItsArrays) {
  IndexConfig c = Config();
  c.estimate_pages = 256;
  auto index = CreateBlockIndex(IndexKind::kWave, c);
  ASSERT_TRUE(index.ok()) << index.status();
  const BlockIndex& wave = **index;
  EXPECT_GT(wave.workspace_bytes(), 0u);
  EXPECT_GT(wave.segment_workspace_bytes(), 0u);
  EXPECT_TRUE(wave.estimates());
  EXPECT_EQ(wave.zone_stride(), 64 + 256);
  EXPECT_TRUE(wave.orders_segments());
  const SummaryLayout l = wave.layout();
  // Key means, mean values, key spreads, counts, positions; the per-item statistics.
  ASSERT_EQ(l.arrays, 6);
  EXPECT_EQ(l.bytes_per_page % 16, 0);
  // Two centroid parts a page: key means and mean values of 2 x D bf16, spreads and counts one
  // 4-byte scalar a part.
  EXPECT_EQ(l.stride[0], 2 * 128 * 2);
  EXPECT_EQ(l.stride[1], 2 * 128 * 2);
  EXPECT_EQ(l.stride[2], 2 * 4);
  EXPECT_EQ(l.stride[3], 2 * 4);
  for (int a = 0; a < 2; ++a) EXPECT_EQ(l.offset[a] % 16, 0) << a;  // vector-read arrays
  EXPECT_EQ(wave.scan_bytes_per_page(), l.stride[0] + l.stride[3]);
  // The statistics: one block an item (stride 0), 16-byte aligned, after the page arrays.
  EXPECT_EQ(l.stride[5], 0);
  EXPECT_EQ(l.offset[5] % 16, 0);
  EXPECT_LE(l.offset[5] + ValueKeyStatsBytes(128), int64_t{c.max_pages} * l.bytes_per_page);
  EXPECT_EQ(wave.estimate_bytes_per_item(), ValueKeyStatsBytes(128));
  for (int a = 0; a < l.arrays; ++a) {
    const int64_t end = l.offset[a] + int64_t{c.max_pages} * l.stride[a];
    EXPECT_LE(end, int64_t{c.max_pages} * l.bytes_per_page) << a;
    if (a + 1 < l.arrays) {
      EXPECT_LE(end, l.offset[a + 1]) << a;
    }
  }
  EXPECT_EQ(wave.position_array(), 4);
  c.budget_pages = 4000;
  c.estimate_pages = 200;
  EXPECT_EQ(CreateBlockIndex(IndexKind::kWave, c).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::internal
