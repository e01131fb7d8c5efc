// Host twins of the attention kernels: exact paged decode attention and merge, accumulated
// in double precision. They are the oracle every GPU test compares against and the host
// backend's implementation. Parallel over items (all G heads of an item together) and (for
// items of more than 4096 tokens) page-aligned token chunks with oneTBB, on the caller's
// arena (tbb::global_control limits apply). The chunking depends only on the parameters, so
// results are bit-identical for any thread count. Calls on disjoint outputs may run concurrently.
#pragma once

#include "absl/status/status.h"
#include "kernels/decode_attention.h"

namespace kvtier {

// Exact attention for every item and query head of `params`: logits scale * q.k and the
// softmax in double, out and lse rounded to float once at the end (out then rounded to
// out_dtype when that is bf16 or fp16). An item without pages gets out 0 and lse -inf. NaN in
// q, K or V propagates (a NaN key makes its item's rows NaN, a NaN value element its column);
// it never becomes a finite number. With chunk_lse set, also the log-sum-exp of every
// 16-token chunk (see PagedDecodeParams), in double from the same logits, rounded to float.
// InvalidArgument, with the field and its value in the message and nothing written, when
// the parameters are inconsistent: dtype not bf16/fp16, head_dim not 64/128/256, page_size
// or group_size < 1, page_size not a multiple of 16 with chunk_lse set, num_items < 0,
// softmax_scale not finite, out_dtype not fp32/bf16/fp16,
// a needed pointer null (every entry of k_pages / v_pages in use is checked), page_offsets[0]
// != 0 or decreasing, last_page_tokens out of [1, P] for an item with pages. num_items == 0
// reads no pointer.
absl::Status ReferencePagedDecodeAttention(const PagedDecodeParams& params);

// Exact merge of partial results (see MergeParams), in double, rounded to float and then to
// out_dtype. A part with lse = -inf contributes nothing and its out row is not read; a row
// whose parts are all -inf gets out 0 and lse -inf. A NaN lse makes its row NaN, a NaN out
// element (of a part that contributes) its element. InvalidArgument (nothing written) on null
// pointers, non-positive sizes, an unknown out_dtype, or out / lse overlapping an input or
// each other; head_dim may be any positive value.
absl::Status ReferenceMergePartials(const MergeParams& params);

}  // namespace kvtier
