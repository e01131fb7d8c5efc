#include "offload/host_store.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/core/status.h"

namespace kvtier {

struct HostStore::Sequence {
  absl::Mutex mu;
  bool removed ABSL_GUARDED_BY(mu) = false;
  std::vector<int64_t> num_tokens ABSL_GUARDED_BY(mu);          // [layer]
  std::vector<std::vector<FrameId>> pages ABSL_GUARDED_BY(mu);  // [layer * kv_heads + head]
};

namespace {
int64_t PagesFor(int64_t tokens, int page_size) { return (tokens + page_size - 1) / page_size; }
}  // namespace

absl::StatusOr<std::unique_ptr<HostStore>> HostStore::Create(const HostStoreConfig& config) {
  KVTIER_RETURN_IF_ERROR(ValidateModelShape(config.shape));
  if (!IsSupportedPageSize(config.page_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostStore: page_size = ", config.page_size, ": must be 16, 32 or 64"));
  }
  const int64_t page_bytes = PageBytes(config.shape, config.page_size);
  const int64_t num_frames = config.capacity_bytes / (2 * page_bytes);
  if (num_frames < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("HostStore: capacity_bytes = ", config.capacity_bytes,
                     ": must hold at least one page frame of ", 2 * page_bytes, " bytes"));
  }
  KVTIER_ASSIGN_OR_RETURN(
      std::unique_ptr<PageArena> arena,
      PageArena::Create(
          {.page_bytes = page_bytes, .num_frames = num_frames, .device_id = config.device_id}));
  return std::unique_ptr<HostStore>(new HostStore(config, std::move(arena)));
}

HostStore::HostStore(const HostStoreConfig& config, std::unique_ptr<PageArena> arena)
    : config_(config),
      row_bytes_(int64_t{config.shape.head_dim} *
                 static_cast<int64_t>(DTypeSize(config.shape.dtype))),
      arena_(std::move(arena)) {}

absl::Status HostStore::AddSequence(SeqId seq) {
  auto sequence = std::make_shared<Sequence>();
  {
    absl::MutexLock lock(&sequence->mu);
    sequence->num_tokens.assign(static_cast<size_t>(config_.shape.num_layers), 0);
    sequence->pages.resize(static_cast<size_t>(config_.shape.num_layers) *
                           static_cast<size_t>(config_.shape.num_kv_heads));
  }
  absl::MutexLock lock(&map_mu_);
  if (!sequences_.try_emplace(seq, std::move(sequence)).second) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq, " is already stored"));
  }
  return absl::OkStatus();
}

absl::Status HostStore::RemoveSequence(SeqId seq) {
  std::shared_ptr<Sequence> sequence;
  {
    absl::MutexLock lock(&map_mu_);
    auto it = sequences_.find(seq);
    if (it == sequences_.end()) {
      return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not stored"));
    }
    sequence = std::move(it->second);
    sequences_.erase(it);
  }
  absl::MutexLock lock(&sequence->mu);
  sequence->removed = true;
  for (std::vector<FrameId>& list : sequence->pages) {
    // Frames of a stored sequence are allocated and distinct: release cannot fail.
    const absl::Status released = arena_->Release(list);
    (void)released;
    list.clear();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<HostStore::Sequence>> HostStore::Find(SeqId seq) const {
  absl::ReaderMutexLock lock(&map_mu_);
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " is not stored"));
  }
  return it->second;
}

absl::Status HostStore::CheckLayerAndHead(int layer, int kv_head) const {
  if (layer < 0 || layer >= config_.shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer = ", layer, ": must be in [0, ", config_.shape.num_layers, ")"));
  }
  if (kv_head < 0 || kv_head >= config_.shape.num_kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_head = ", kv_head, ": must be in [0, ", config_.shape.num_kv_heads, ")"));
  }
  return absl::OkStatus();
}

absl::Status HostStore::Append(SeqId seq, int layer, const ConstTensor& k, const ConstTensor& v) {
  const ModelShape& shape = config_.shape;
  KVTIER_RETURN_IF_ERROR(CheckLayerAndHead(layer, 0));
  const TensorSpec spec{{-1, shape.num_kv_heads, shape.head_dim}, shape.dtype};
  KVTIER_RETURN_IF_ERROR(CheckTensor("k", k, spec));
  KVTIER_RETURN_IF_ERROR(CheckTensor("v", v, spec));
  if (k.shape[0] != v.shape[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat("k has ", k.shape[0], " tokens but v has ", v.shape[0]));
  }
  if (k.space != MemorySpace::kHost || v.space != MemorySpace::kHost) {
    return absl::InvalidArgumentError("HostStore::Append: k and v must be in host memory");
  }
  const int64_t tokens = k.shape[0];
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> sequence, Find(seq));

  absl::MutexLock lock(&sequence->mu);
  if (sequence->removed) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " was removed"));
  }
  if (tokens == 0) return absl::OkStatus();
  const int page_size = config_.page_size;
  const int64_t old_tokens = sequence->num_tokens[static_cast<size_t>(layer)];
  const int64_t new_pages_per_head =
      PagesFor(old_tokens + tokens, page_size) - PagesFor(old_tokens, page_size);
  std::vector<FrameId> fresh;
  const absl::Status allocated = arena_->Allocate(new_pages_per_head * shape.num_kv_heads, fresh);
  if (!allocated.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host store full: appending ", tokens, " tokens to sequence ", seq, " layer ",
                     layer, " needs ", new_pages_per_head * shape.num_kv_heads, " more pages (",
                     allocated.message(), "); nothing was stored"));
  }

  // From here nothing can fail: link the new frames, then copy token rows into them.
  const auto* k_bytes = static_cast<const std::byte*>(k.data);
  const auto* v_bytes = static_cast<const std::byte*>(v.data);
  for (int head = 0; head < shape.num_kv_heads; ++head) {
    std::vector<FrameId>& list =
        sequence->pages[static_cast<size_t>(layer) * shape.num_kv_heads + head];
    const auto first_new = fresh.begin() + int64_t{head} * new_pages_per_head;
    list.insert(list.end(), first_new, first_new + new_pages_per_head);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t position = old_tokens + t;
      const FrameId frame = list[static_cast<size_t>(position / page_size)];
      const int64_t row_offset = (position % page_size) * row_bytes_;
      const int64_t src_offset = (t * shape.num_kv_heads + head) * row_bytes_;
      std::memcpy(arena_->KPage(frame) + row_offset, k_bytes + src_offset, row_bytes_);
      std::memcpy(arena_->VPage(frame) + row_offset, v_bytes + src_offset, row_bytes_);
    }
  }
  sequence->num_tokens[static_cast<size_t>(layer)] = old_tokens + tokens;
  return absl::OkStatus();
}

absl::Status HostStore::Read(SeqId seq, int layer, int kv_head, int64_t begin, int64_t end,
                             const MutableTensor& k_out, const MutableTensor& v_out) const {
  KVTIER_RETURN_IF_ERROR(CheckLayerAndHead(layer, kv_head));
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> sequence, Find(seq));
  absl::MutexLock lock(&sequence->mu);
  const int64_t stored = sequence->num_tokens[static_cast<size_t>(layer)];
  if (begin < 0 || begin > end || end > stored) {
    return absl::OutOfRangeError(absl::StrCat("token range [", begin, ", ", end,
                                              ") is not within the ", stored,
                                              " tokens of sequence ", seq, " layer ", layer));
  }
  const TensorSpec spec{{end - begin, config_.shape.head_dim}, config_.shape.dtype};
  KVTIER_RETURN_IF_ERROR(CheckTensor("k_out", k_out, spec));
  KVTIER_RETURN_IF_ERROR(CheckTensor("v_out", v_out, spec));
  if (k_out.space != MemorySpace::kHost || v_out.space != MemorySpace::kHost) {
    return absl::InvalidArgumentError("HostStore::Read: outputs must be in host memory");
  }
  const std::vector<FrameId>& list =
      sequence->pages[static_cast<size_t>(layer) * config_.shape.num_kv_heads + kv_head];
  auto* k_dst = static_cast<std::byte*>(k_out.data);
  auto* v_dst = static_cast<std::byte*>(v_out.data);
  // Copy page by page: rows of one page are contiguous.
  for (int64_t position = begin; position < end;) {
    const int64_t row = position % config_.page_size;
    const int64_t rows = std::min<int64_t>(config_.page_size - row, end - position);
    const FrameId frame = list[static_cast<size_t>(position / config_.page_size)];
    const int64_t out_offset = (position - begin) * row_bytes_;
    std::memcpy(k_dst + out_offset, arena_->KPage(frame) + row * row_bytes_, rows * row_bytes_);
    std::memcpy(v_dst + out_offset, arena_->VPage(frame) + row * row_bytes_, rows * row_bytes_);
    position += rows;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> HostStore::NumTokens(SeqId seq, int layer) const {
  KVTIER_RETURN_IF_ERROR(CheckLayerAndHead(layer, 0));
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> sequence, Find(seq));
  absl::MutexLock lock(&sequence->mu);
  return sequence->num_tokens[static_cast<size_t>(layer)];
}

absl::StatusOr<std::vector<FrameId>> HostStore::Pages(SeqId seq, int layer, int kv_head) const {
  KVTIER_RETURN_IF_ERROR(CheckLayerAndHead(layer, kv_head));
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> sequence, Find(seq));
  absl::MutexLock lock(&sequence->mu);
  return sequence->pages[static_cast<size_t>(layer) * config_.shape.num_kv_heads + kv_head];
}

HostStoreUsage HostStore::Usage() const {
  HostStoreUsage usage;
  usage.capacity_pages = arena_->num_frames();
  usage.used_pages = arena_->used_frames();
  usage.page_bytes = arena_->page_bytes();
  absl::ReaderMutexLock lock(&map_mu_);
  usage.num_sequences = static_cast<int64_t>(sequences_.size());
  return usage;
}

}  // namespace kvtier
