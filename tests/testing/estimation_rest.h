// Random cases for estimation's range and superset modes (kernels/estimation.h), as the wave
// index's rest uses them: per item a candidate range [begin, end) of its clusters, estimated
// whole (range mode), and a selection inside it (the retrieved clusters, ascending and
// distinct, in the batch's fixed-stride lists) that is taken out of that estimate (superset
// mode); the rest, range minus selection, is also listed in offsets addressing for a direct
// estimate to compare with. Shared by the host tests and the GPU tests. Header-only; no CUDA.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/estimation.h"
#include "tests/testing/estimation_lists.h"

namespace kvtier::testing_util {

struct RestLists {
  std::vector<int32_t> begin, end;                // [items]: the candidate ranges
  std::vector<int32_t> range_ids, range_offsets;  // the ranges as offsets lists
  std::vector<int32_t> rest_ids, rest_offsets;    // range minus selection, offsets lists
};

// Item specs for a rest batch: `clusters` each, every list of up to `stride` entries.
inline std::vector<EstimationItemSpec> RestItems(int items, int max_clusters, int stride,
                                                 std::mt19937_64& rng) {
  std::vector<EstimationItemSpec> out;
  for (int i = 0; i < items; ++i) {
    EstimationItemSpec s;
    s.clusters = 1 + static_cast<int>(rng() % static_cast<uint64_t>(max_clusters));
    s.count = std::min(stride, s.clusters);  // rewritten by MakeRestLists
    out.push_back(s);
  }
  return out;
}

// Rewrites `batch`'s fixed-stride lists (stride `stride`) into selections inside random
// candidate ranges and returns the ranges and rests. Item 0's range is all its clusters and
// its selection empty; item 1's selection, when the stride allows, its whole range; item 2's
// range is empty; the others random.
inline RestLists MakeRestLists(EstimationLists& batch, int stride, std::mt19937_64& rng) {
  RestLists r;
  r.range_offsets = {0};
  r.rest_offsets = {0};
  const int items = batch.num_items();
  for (int i = 0; i < items; ++i) {
    const size_t first = batch.count_at()[i];
    const size_t last = i + 1 < items ? batch.count_at()[i + 1] : batch.counts().size();
    const int clusters = static_cast<int>((last - first) / static_cast<size_t>(batch.parts()));
    int32_t b = 0, e = clusters;
    if (i == 2) {
      b = e = clusters / 2;
    } else if (i > 2) {
      b = static_cast<int32_t>(rng() % static_cast<uint64_t>(clusters + 1));
      e = b + static_cast<int32_t>(rng() % static_cast<uint64_t>(clusters - b + 1));
    }
    std::vector<int32_t> range(static_cast<size_t>(e - b));
    std::iota(range.begin(), range.end(), b);
    int32_t take = 0;
    if (i == 1) {
      take = std::min<int32_t>(stride, e - b);
    } else if (i != 0) {
      take = static_cast<int32_t>(rng() % static_cast<uint64_t>(std::min(stride, e - b) + 1));
    }
    std::vector<int32_t> chosen = range;
    std::shuffle(chosen.begin(), chosen.end(), rng);
    chosen.resize(static_cast<size_t>(take));
    std::sort(chosen.begin(), chosen.end());
    int32_t* row = batch.ids().data() + static_cast<size_t>(i) * stride;
    std::fill(row, row + stride, -1);
    std::copy(chosen.begin(), chosen.end(), row);
    batch.list_count()[i] = take;
    r.begin.push_back(b);
    r.end.push_back(e);
    r.range_ids.insert(r.range_ids.end(), range.begin(), range.end());
    r.range_offsets.push_back(static_cast<int32_t>(r.range_ids.size()));
    for (int32_t id : range) {
      if (!std::binary_search(chosen.begin(), chosen.end(), id)) r.rest_ids.push_back(id);
    }
    r.rest_offsets.push_back(static_cast<int32_t>(r.rest_ids.size()));
  }
  return r;
}

// `p` with no list and no exclusion: what AsRanges and AsOffsets start from.
inline EstimationParams WithoutLists(EstimationParams p) {
  p.cluster_ids = nullptr;
  p.cluster_offsets = nullptr;
  p.list_count = nullptr;
  p.list_stride = 0;
  p.exclude_ids = nullptr;
  p.exclude_count = nullptr;
  p.exclude_stride = 0;
  return p;
}

// `p` (a batch's Params) turned into the range mode over `begin` / `end`.
inline EstimationParams AsRanges(const EstimationParams& p, const int32_t* begin,
                                 const int32_t* end) {
  EstimationParams r = WithoutLists(p);
  r.range_begin = begin;
  r.range_end = end;
  return r;
}

// `p` turned into offsets lists (`ids`, `offsets`), without exclusion.
inline EstimationParams AsOffsets(const EstimationParams& p, const int32_t* ids,
                                  const int32_t* offsets) {
  EstimationParams r = WithoutLists(p);
  r.cluster_ids = ids;
  r.cluster_offsets = offsets;
  return r;
}

}  // namespace kvtier::testing_util
