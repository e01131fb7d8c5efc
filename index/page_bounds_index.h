// The page-bounds index (Quest): per page the per-channel maximum and minimum of its keys
// (block_summary.h), scored by the upper bound sum_h sum_i max(q_hi max_i, q_hi min_i) and
// selected top-k (block_select.h). A bound is not a mass: no mass target, no estimation zone.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "index/block_index.h"

namespace kvtier::internal {

// InvalidArgument for a mass target or an estimation zone (the wave index has both).
absl::StatusOr<std::unique_ptr<BlockIndex>> CreatePageBoundsIndex(const IndexConfig& config);

}  // namespace kvtier::internal
