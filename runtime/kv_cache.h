// KvCache: the KV manager an inference engine embeds (ARCHITECTURE.md). It keeps every
// sequence's KV in a pinned host store, a hot set (the first sink_tokens and the last
// window_tokens of each sequence) on the GPU, a page-bounds index over the rest, and a GPU
// page cache of the pages the index selects. One Decode call runs ARCHITECTURE.md's step for
// one layer and a whole batch: append, select, resolve, load, attend, merge.
//
// Shapes (D = head_dim, Hq / Hk query / KV heads, dtype = Options::shape.dtype):
//   Prefill  k, v   [tokens, Hk, D]   q (optional) [tokens, Hq, D]
//   Decode   q      [batch, Hq, D]    k_new, v_new [batch, Hk, D]   out [batch, Hq, D]
// Inputs are contiguous; each may be host or device memory (ConstTensor::space). `out` may be
// host or device memory of dtype fp32, bf16 or fp16. Query head h attends with KV head
// h / (Hq / Hk).
//
// Call order: Create; AddSequence; Prefill (one or more calls per layer: chunked prefill
// appends) for every layer before that layer's first Decode; Decode per step for layers in any
// order (each layer keeps its own token count); RemoveSequence. A sequence may join or leave
// between any two calls; a batch may mix sequences of any lengths.
//
// Streams: the CUDA backend enqueues all work on the caller's `stream` and on kvtier's own
// copy and load streams, which join the caller's stream through events; a call returns
// without waiting for the device (except where stated). Results in device memory are ready
// when the caller's stream reaches that point; results in host memory are ready on return.
// Calls may use different streams: each call's work starts after the previous call's (they
// share kvtier's scratch buffers). Host-memory inputs: pageable memory may be reused as soon
// as the call returns; pinned memory only once the stream has passed the call (it is read
// asynchronously).
// The host backend ignores streams and computes on the calling thread (oneTBB inside).
//
// CUDA graphs: a Decode with device-memory tensors may be captured (stream capture in any
// mode). The graph holds that one step: launch it exactly once, before the next call that
// touches the same layer, and synchronise it before RemoveSequence, GetStats or Inspect
// (kvtier cannot see when a graph runs). Prefill cannot be captured.
//
// Errors: every call validates its arguments before changing anything. A call that returns an
// error leaves every stored sequence exactly as it was (its tokens, pages and cache state):
//   InvalidArgument     wrong shape, dtype or memory space; layer out of range; a sequence
//                       listed twice in one batch; a batch larger than max_batch_size
//   NotFound            an unknown sequence
//   AlreadyExists       AddSequence of a stored sequence
//   FailedPrecondition  Decode of a layer that the sequence has not prefilled
//   ResourceExhausted   no free sequence slot; the host store is full; a sequence would grow
//                       beyond max_sequence_tokens
//   Internal / Unavailable  a CUDA failure (the message names the call); the cache should
//                       then be destroyed
//
// Thread safety: calls are serialised internally (one mutex); an engine drives one KvCache
// from one thread per device.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runtime/core/options.h"
#include "runtime/core/sequence_id.h"
#include "runtime/core/tensor.h"
#include "runtime/stats.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#else
// The CUDA runtime's own declaration, so the API reads the same in builds without CUDA.
struct CUstream_st;
using cudaStream_t = CUstream_st*;
#endif

namespace kvtier {

class KvCache {
 public:
  // Validates `options` (ValidateOptions), plans every buffer and allocates all of them: the
  // pinned host store of host_memory_bytes, and on the device (CUDA backend) the hot pages,
  // page caches, summaries, directories and step workspaces of max_sequences sequences of up
  // to max_sequence_tokens tokens and batches of up to max_batch_size. Nothing is allocated
  // afterwards. InvalidArgument for bad options (every bad field listed) or a configuration
  // that cannot run (e.g. a selection budget larger than a sequence's pages);
  // ResourceExhausted when the device budget gpu_memory_bytes cannot hold the plan (the
  // message gives the breakdown and how many sequences would fit) or memory cannot be had;
  // FailedPrecondition for the CUDA backend without a device.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const Options& options);

  // Waits for kvtier's device work to finish, then frees everything.
  virtual ~KvCache() = default;

  // Registers an empty sequence. AlreadyExists; ResourceExhausted when max_sequences are
  // stored.
  virtual absl::Status AddSequence(SeqId seq) = 0;

  // Forgets `seq`: returns its host pages, GPU slots and cache. Blocks until device work of
  // earlier calls that touches the sequence has finished. NotFound for an unknown sequence.
  virtual absl::Status RemoveSequence(SeqId seq) = 0;

  // Appends prompt tokens to one layer of `seq`: k, v [tokens, Hk, D] (tokens >= 1); q
  // (optional: an empty tensor, data == nullptr) [tokens, Hq, D] is validated and kept for
  // query-aware indexes (the page-bounds index does not use it). Sink and window pages stay on
  // the GPU, every completed page is stored in the host store and summarised for the index;
  // the copy to the host overlaps the caller's next work. ResourceExhausted (nothing stored)
  // when the host store cannot hold the new pages or the sequence would exceed
  // max_sequence_tokens.
  virtual absl::Status Prefill(SeqId seq, int layer, const ConstTensor& k, const ConstTensor& v,
                               const ConstTensor& q, cudaStream_t stream) = 0;

  // One decode step of `layer` for the batch `seqs` (distinct, each prefilled for this layer):
  // appends each sequence's new token (k_new, v_new), then writes to `out` the attention of q
  // over the sequence's tokens including the new one: exact over the hot set, and over the
  // pages the index selects from the rest (budget.max_pages per KV head); when the budget
  // covers every page this equals full attention. No host synchronisation and no allocation
  // on the CUDA backend (with device-memory tensors), so a call can be captured in a CUDA
  // graph.
  virtual absl::Status Decode(int layer, absl::Span<const SeqId> seqs, const ConstTensor& q,
                              const ConstTensor& k_new, const ConstTensor& v_new,
                              const MutableTensor& out, cudaStream_t stream) = 0;

  // Tokens stored for (seq, layer). NotFound, InvalidArgument (layer).
  virtual absl::StatusOr<int64_t> NumTokens(SeqId seq, int layer) const = 0;

  // Diagnostics for tests and tools: the page cache of (seq, layer, kv_head) and what the
  // last Decode of `layer` did for it. Waits for the device. NotFound, InvalidArgument.
  struct CacheInspection {
    // The last Decode of `layer`, when it included `seq` (else all empty / 0: the step
    // arrays hold one batch per layer): the pages the index selected (indices into the
    // sequence's stored pages), ascending, and how many of them were cache hits and misses.
    std::vector<int32_t> selected_pages;
    int32_t hits = 0;
    int32_t misses = 0;
    // The token positions those pages hold, ascending: page j holds [j P, (j + 1) P) except
    // where a clustered index laid a segment out cluster by cluster.
    std::vector<int64_t> selected_positions;
    // The hot set that Decode attended exactly: positions [0, min(sink_tokens, tokens)) and
    // [window_begin, tokens) of the `tokens` the sequence held after its append.
    int64_t window_begin = 0;
    int64_t tokens = 0;
    // The estimation zone (clustered indexes): pages estimated and the tokens they stand for.
    int32_t estimated_pages = 0;
    int64_t estimated_tokens = 0;
    // The directory now: per slot, its page (-1 empty), last-use step and score.
    std::vector<int32_t> slot_page;
    std::vector<int32_t> slot_last_use;
    std::vector<float> slot_score;
  };
  virtual absl::StatusOr<CacheInspection> Inspect(SeqId seq, int layer, int kv_head) const = 0;

  // Counters and times so far. Waits for the device work issued so far to finish.
  virtual Stats GetStats() const = 0;
  virtual void ResetStats() = 0;

  virtual const Options& options() const = 0;
};

}  // namespace kvtier
