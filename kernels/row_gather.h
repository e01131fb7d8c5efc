// Row gather: lays a prefill piece's segment out in an index's order (index/block_index.h,
// SegmentBatch). The piece's K (or V) rows are [tokens, H, D] (as the engine hands them); for
// each KV head h the segment's rows [segment_begin, segment_begin + segment_tokens) are
// permuted by that head's order, the other rows copied as they are:
//   dst[t, h] = src[segment_begin + order[h][t - segment_begin], h]  for t in the segment,
//   dst[t, h] = src[t, h]                                           otherwise,
// and, when positions is set, positions[h][t'] = position_base + order[h][t'] + 1 for
// t' < segment_tokens (the stored token's sequence position + 1; 0 means "in position order"
// where nothing was written; see BlockIndex::position_array).
//
// Neither launcher allocates nor synchronises with the host (CUDA-graph capturable); order is
// device data the kernel does not check beyond clamping into the segment.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier {

struct RowGatherParams {
  int32_t num_tokens = 0;      // rows of the piece, >= 0 (0 writes nothing)
  int32_t num_heads = 0;       // H, >= 1
  int32_t row_bytes = 0;       // bytes of one (token, head) row: D * dtype size, multiple of 16
  int32_t segment_begin = 0;   // first permuted row, in [0, num_tokens]
  int32_t segment_tokens = 0;  // permuted rows, segment_begin + segment_tokens <= num_tokens
  // [num_tokens, H] rows of row_bytes, 16-byte aligned, not overlapping; up to two arrays
  // (K and V) gathered by the same order: src[1] / dst[1] may be null.
  const void* src[2] = {};
  void* dst[2] = {};
  // [H] -> [segment_tokens] permutations of [0, segment_tokens) (read with segment_tokens > 0).
  const int32_t* const* order = nullptr;
  // Optional [H] -> [segment_tokens] int32: the stored tokens' positions + 1.
  int32_t* const* positions = nullptr;
  int64_t position_base = 0;  // sequence position of row segment_begin
};

namespace internal {
// Sizes and pointers; InvalidArgument naming the field.
absl::Status ValidateRowGatherShape(const RowGatherParams& params);
}  // namespace internal

// Host twin. Also checks every order entry (in [0, segment_tokens)) before writing anything.
absl::Status ReferenceRowGather(const RowGatherParams& params);

#ifdef KVTIER_WITH_CUDA
// One launch: a warp per (row, head) moves its row with 16-byte vectors; an order entry
// outside the segment is clamped into it.
absl::Status LaunchRowGather(const RowGatherParams& params, cudaStream_t stream);
#endif

}  // namespace kvtier
