// What the block-selection tests (kernels/block_select.h) share on the host: the settings a
// test batch fixes (also the GPU tests' batches, block_select_gpu.h), and the oracle of the
// host tests (block_select_test.cc, split_centroid_test.cc): the twin's scores of one item,
// the selection a full sort of them gives, and the check of a selection against it.
// Header-only; no CUDA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "kernels/block_select.h"

namespace kvtier::testing_util {

// The settings a batch of summaries and queries fixes: how blocks are scored, and the shape.
struct BlockSelectShape {
  BlockScoreKind kind;
  int parts;  // kCentroid: centroids a block, 1 or 2 (block_summary.h)
  DType dtype;
  int dim;    // D
  int group;  // G

  // The parameters of one call with these settings (softmax scale 1 / sqrt(D)); the caller
  // sets the arrays.
  BlockSelectParams Settings(int num_items, int max_blocks, BlockSelectMode mode, int k,
                             float mass_target) const {
    BlockSelectParams p;
    p.kind = kind;
    p.mode = mode;
    p.dtype = dtype;
    p.head_dim = dim;
    p.group_size = group;
    p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(dim));
    p.num_items = num_items;
    p.centroid_parts = parts;
    p.max_blocks = max_blocks;
    p.k = k;
    p.mass_target = mass_target;
    return p;
  }
};

// The selection a full sort of `scores` (candidates begin, begin + 1, ...) gives: score
// descending (NaN first), index ascending; the first k, or the shortest prefix reaching
// `target` fixed-point mass (internal::FixedMass). Ascending.
inline std::vector<int32_t> SortSelect(const std::vector<float>& scores, int begin, int k,
                                       uint64_t target) {
  std::vector<int> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](int r) {
    return std::isnan(scores[r]) ? std::numeric_limits<double>::infinity()
                                 : static_cast<double>(scores[r]);
  };
  std::sort(order.begin(), order.end(),
            [&](int a, int b) { return key(a) != key(b) ? key(a) > key(b) : a < b; });
  std::vector<int32_t> chosen;
  uint64_t mass = 0;
  for (int r : order) {
    if (static_cast<int>(chosen.size()) >= k || mass >= target) break;
    chosen.push_back(begin + r);
    mass += internal::FixedMass(scores[r]);
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// Item i's scores under the twin (ReferenceBlockScores), one per candidate of
// [block_begin[i], block_end[i]), NaN-poisoned first; a failing call is a test failure.
inline std::vector<float> TwinScores(const BlockSelectParams& p, int i) {
  std::vector<float> scores(static_cast<size_t>(p.block_end[i] - p.block_begin[i]),
                            std::numeric_limits<float>::quiet_NaN());
  const absl::Status status = ReferenceBlockScores(p, i, scores.data());
  EXPECT_TRUE(status.ok()) << status;
  return scores;
}

// Expects item i's row of p.selected and p.num_selected[i] (after a call with `p`) to be
// `want`: the same count, then want's blocks and -1 up to p.k.
inline void ExpectSelection(const BlockSelectParams& p, int i, const std::vector<int32_t>& want) {
  ASSERT_EQ(p.num_selected[i], static_cast<int>(want.size())) << "item " << i;
  for (int j = 0; j < p.k; ++j) {
    ASSERT_EQ(p.selected[static_cast<size_t>(i) * p.k + j],
              j < static_cast<int>(want.size()) ? want[j] : -1)
        << "item " << i << " entry " << j;
  }
}

}  // namespace kvtier::testing_util
