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

// The workspace's parts (BlockSelectWorkspaceBytes): every item's score rows (for kCentroid
// the retrieval's, then the zone's), then for kCentroid every item's segment maxima and sums
// ([items, G, segments] each, segments = MassSegments(max_blocks)), then the logits unless
// params.logits holds them.
struct WorkspaceLayout {
  float* scores = nullptr;  // item i's rows at scores + i * score_stride
  size_t score_stride = 0;
  float* segment_max = nullptr;  // head h of item i: + (i * G + h) * segments
  float* segment_sum = nullptr;
  int segments = 0;
  float* logits = nullptr;  // [items, G, max_blocks * parts]
};

inline WorkspaceLayout LayoutWorkspace(const BlockSelectParams& p) {
  WorkspaceLayout w;
  w.scores = static_cast<float*>(p.workspace);
  w.score_stride = static_cast<size_t>(ScoreRows(p)) * p.max_blocks;
  float* next = w.scores + w.score_stride * p.num_items;
  if (p.kind == BlockScoreKind::kCentroid) {
    w.segments = MassSegments(p.max_blocks);
    const size_t heads = static_cast<size_t>(p.num_items) * p.group_size;
    w.segment_max = next;
    w.segment_sum = next + heads * w.segments;
    next = w.segment_sum + heads * w.segments;
  }
  w.logits = p.logits != nullptr ? p.logits : next;
  return w;
}

// The scoring kernel for the batch on `stream`: page-bounds scores into the workspace's score
// rows, or centroid logits and segment masses into LayoutWorkspace's arrays. `params` is validated,
// with a workspace.
absl::Status LaunchBlockScores(const BlockSelectParams& params, cudaStream_t stream);

}  // namespace kvtier::internal
