// What the two block-selection kernel files share (block_score.cu: the scoring kernel;
// block_select.cu: the selection kernel and LaunchBlockSelect). Internal to kernels/.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/block_select.h"

namespace kvtier::internal {

// Candidate range of an item, clamped into [0, max_blocks].
__device__ __forceinline__ void ItemRange(const int32_t* block_begin, const int32_t* block_end,
                                          int item, int max_blocks, int& begin, int& n) {
  begin = min(max(block_begin[item], 0), max_blocks);
  const int end = min(max(block_end[item], begin), max_blocks);
  n = end - begin;
}

// The workspace's parts (BlockSelectWorkspaceBytes): every item's rows (scores, then for
// kCentroid the weights), then the logits unless params.logits holds them.
inline void WorkspaceRows(const BlockSelectParams& p, float*& scores, size_t& score_stride,
                          float*& logits) {
  scores = static_cast<float*>(p.workspace);
  score_stride = static_cast<size_t>(ScoreRows(p)) * p.max_blocks;
  logits = p.logits != nullptr ? p.logits : scores + score_stride * p.num_items;
}

// The scoring kernel for the batch on `stream`: page-bounds scores into the workspace's score
// rows, or centroid logits into WorkspaceRows' logits. `params` is validated, with a workspace.
absl::Status LaunchBlockScores(const BlockSelectParams& params, cudaStream_t stream);

}  // namespace kvtier::internal
