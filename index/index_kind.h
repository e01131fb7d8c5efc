// The kinds of block index (index/block_index.h) that Options can choose.
#pragma once

#include <cstdint>

namespace kvtier {

// The block index that picks, each decode step, what the query attends beyond the hot set
// (index/block_index.h).
enum class IndexKind : uint8_t {
  // Per page, the per-channel minimum and maximum of its keys (Quest); top-k selection only.
  kPageBounds,
  // Clustered (RetroInfer's wave index): at prefill the cold keys of each segment are
  // clustered on the GPU and their tokens laid out cluster by cluster, so that every page
  // holds keys of one or two neighbouring clusters; per page block the centroid, mean value
  // and token count; selection by estimated attention mass (top-k or mass target) and an
  // estimation zone.
  kWave,
};

// "page_bounds", "wave"; "unknown" otherwise.
const char* IndexKindName(IndexKind kind);

}  // namespace kvtier
