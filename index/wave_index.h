// The clustered ("wave") index, after RetroInfer. At prefill the cold tokens of each segment
// (one KV head of a prefill piece, up to max_segment_tokens) are clustered on the GPU by
// spherical k-means and stored cluster by cluster (SegmentBatch's order), so that each page
// holds the keys of one or two neighbouring clusters; a page is the block. Per page the index
// keeps a split centroid (block_summary.h: the page's tokens in two parts by 2-means, each
// with its mean key, mean value, per-channel key variance and count) and the stored tokens'
// positions. Two parts let a page that straddles two clusters, or hides one outlier key (a
// needle), be scored by what it holds rather than by an average of it. Pages that leave the
// window during decode join in position order with the same summary: assignment to the
// nearest clusters would need a page of one cluster, and a token's page is fixed when its
// position is; the split then groups a position-ordered page's tokens by key instead.
//
// Selection: each page's estimated attention mass, sum over parts of n e^{q.c / sqrt(D)},
// softmax-normalised and summed over the query group (block_select.h, kCentroid), in one
// scoring pass for the batch: the top budget_pages (or the fewest reaching mass_target,
// capped) are attended exactly; the next ones up to budget_pages + estimate_pages in all form
// the estimation zone (kernels/estimation.h, with the spread correction), merged by LSE.
// An estimated part's mean value m counts as m + s * scale C q / s_bar (kernels/value_shift.h):
// the values that q favours among keys spread s around the part's mean, C the item's pooled
// cross-covariance of value and key deviations from their part means and s_bar its pooled key
// spread. The sums behind C (D x D fp32, a stride-0 summary array: one block an item, zeroed
// when a sequence takes the slot) gain each page once, when its summary is written complete
// (prefill's full pages, and each page that a decode step completes).
// With a budget that covers every candidate page nothing is estimated and attention is exact.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "index/block_index.h"

namespace kvtier::internal {

absl::StatusOr<std::unique_ptr<BlockIndex>> CreateWaveIndex(const IndexConfig& config);

}  // namespace kvtier::internal
