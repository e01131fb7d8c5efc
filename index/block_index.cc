#include "index/block_index.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "index/page_bounds_index.h"
#include "index/wave_index.h"

namespace kvtier {

const char* IndexKindName(IndexKind kind) {
  switch (kind) {
    case IndexKind::kPageBounds:
      return "page_bounds";
    case IndexKind::kWave:
      return "wave";
  }
  return "unknown";
}

}  // namespace kvtier

namespace kvtier::internal {

absl::Status BlockIndex::Estimate(StepBackend&, const EstimateBatch&, cudaStream_t) const {
  return absl::UnimplementedError(
      absl::StrCat("index ", IndexKindName(kind()), " has no estimation zone"));
}

absl::Status BlockIndex::OrderSegments(StepBackend&, const SegmentBatch&, cudaStream_t) const {
  return absl::UnimplementedError(
      absl::StrCat("index ", IndexKindName(kind()), " keeps pages in position order"));
}

absl::StatusOr<std::unique_ptr<BlockIndex>> CreateBlockIndex(IndexKind kind,
                                                             const IndexConfig& config) {
  switch (kind) {
    case IndexKind::kPageBounds:
      return CreatePageBoundsIndex(config);
    case IndexKind::kWave:
      return CreateWaveIndex(config);
  }
  return absl::UnimplementedError(
      absl::StrCat("index kind ", static_cast<int>(kind), " is not built"));
}

}  // namespace kvtier::internal
