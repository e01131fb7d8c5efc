// The host KV store: every page of every stored sequence, in one NUMA-local pinned arena
// sized at creation (the source of truth of ARCHITECTURE.md). For each (sequence, layer,
// KV head) it keeps the list of page frames in token order; page j holds tokens
// [j * page_size, (j + 1) * page_size), and only the last page may be partly filled. All
// KV heads of a (sequence, layer) hold the same number of tokens: appends cover every head.
//
// Thread safety: all methods may be called concurrently from any threads. Calls on
// different sequences proceed in parallel (appends copy outside any global lock); calls on
// the same sequence are serialised. A sequence removed while another thread appends to it
// makes that append return NotFound.
//
// Failure atomicity: a call that returns an error changes nothing; in particular an append
// that does not fit returns ResourceExhausted and stores no token of it, so every sequence
// reads back exactly as before.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "offload/page_arena.h"
#include "runtime/core/options.h"
#include "runtime/core/sequence_id.h"
#include "runtime/core/tensor.h"

namespace kvtier {

struct HostStoreConfig {
  ModelShape shape;
  int page_size = 16;          // tokens per page, a power of two
  int64_t capacity_bytes = 0;  // arena size; it holds capacity_bytes / frame bytes frames
  int device_id = 0;           // GPU the store feeds (NUMA node, pinning); -1 for none
};

struct HostStoreUsage {
  int64_t capacity_pages = 0;  // page frames (a K page and a V page each)
  int64_t used_pages = 0;
  int64_t page_bytes = 0;  // of one K or one V page
  int64_t num_sequences = 0;
  int64_t capacity_bytes() const { return capacity_pages * 2 * page_bytes; }
  int64_t used_bytes() const { return used_pages * 2 * page_bytes; }
};

class HostStore {
 public:
  // InvalidArgument for a bad shape, page size, or a capacity below one frame;
  // ResourceExhausted when the host memory cannot be allocated or pinned.
  static absl::StatusOr<std::unique_ptr<HostStore>> Create(const HostStoreConfig& config);

  // AlreadyExists if `seq` is stored.
  absl::Status AddSequence(SeqId seq);
  // Releases every page of `seq`. NotFound if it is not stored.
  absl::Status RemoveSequence(SeqId seq);

  // Appends tokens to every KV head of (seq, layer). `k` and `v`: [tokens, num_kv_heads,
  // head_dim], the shape's dtype, contiguous host memory. Fills the last page, then new ones.
  // NotFound (unknown seq), InvalidArgument (layer, shapes), ResourceExhausted (arena full).
  absl::Status Append(SeqId seq, int layer, const ConstTensor& k, const ConstTensor& v);

  // Copies tokens [begin, end) of (seq, layer, kv_head) into `k_out` and `v_out`:
  // [end - begin, head_dim], the shape's dtype, contiguous host memory.
  absl::Status Read(SeqId seq, int layer, int kv_head, int64_t begin, int64_t end,
                    const MutableTensor& k_out, const MutableTensor& v_out) const;

  // Tokens stored for (seq, layer).
  absl::StatusOr<int64_t> NumTokens(SeqId seq, int layer) const;
  // Frames of (seq, layer, kv_head) in token order (a snapshot).
  absl::StatusOr<std::vector<FrameId>> Pages(SeqId seq, int layer, int kv_head) const;

  // Page addresses of frames returned by Pages(): valid until the frame's sequence is removed.
  const PageArena& arena() const { return *arena_; }
  const HostStoreConfig& config() const { return config_; }
  HostStoreUsage Usage() const;

 private:
  struct Sequence;
  HostStore(const HostStoreConfig& config, std::unique_ptr<PageArena> arena);
  absl::StatusOr<std::shared_ptr<Sequence>> Find(SeqId seq) const;
  absl::Status CheckLayerAndHead(int layer, int kv_head) const;

  const HostStoreConfig config_;
  const int64_t row_bytes_;  // one token of one head: head_dim elements
  std::unique_ptr<PageArena> arena_;
  mutable absl::Mutex map_mu_;
  absl::flat_hash_map<SeqId, std::shared_ptr<Sequence>> sequences_ ABSL_GUARDED_BY(map_mu_);
};

}  // namespace kvtier
