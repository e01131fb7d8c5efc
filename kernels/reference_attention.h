// Host twins of the attention kernels: exact paged decode attention and merge, accumulated
// in double precision. They are the oracle every GPU test compares against and the host
// backend's implementation. Parallel over items, heads and (for long page lists) token
// chunks with oneTBB; results do not depend on the number of threads beyond rounding of the
// final double-to-float conversion.
#pragma once

#include "absl/status/status.h"
#include "kernels/decode_attention.h"

namespace kvtier {

// Exact attention for every item and query head of `params`. InvalidArgument (and nothing
// written) when the parameters are inconsistent: unsupported dtype or head_dim, page_size or
// group_size < 1, null pointers, decreasing page_offsets, last_page_tokens out of [1, P].
absl::Status ReferencePagedDecodeAttention(const PagedDecodeParams& params);

// Exact merge of partial results (see MergeParams). InvalidArgument on null pointers or
// non-positive sizes.
absl::Status ReferenceMergePartials(const MergeParams& params);

}  // namespace kvtier
