#include "index/page_bounds_index.h"

#include "absl/strings/str_cat.h"

namespace kvtier::internal {
namespace {

class PageBoundsIndex final : public BlockIndex {
 public:
  explicit PageBoundsIndex(const IndexConfig& config) : config_(config) {
    BlockSelectParams p = Params();
    workspace_bytes_ = BlockSelectWorkspaceBytes(p);
  }

  IndexKind kind() const override { return IndexKind::kPageBounds; }
  const IndexConfig& config() const override { return config_; }

  SummaryLayout layout() const override {
    SummaryLayout l;
    l.arrays = 1;
    l.bytes_per_page = BoundsBytes();
    l.stride[0] = BoundsBytes();
    return l;
  }
  int64_t scan_bytes_per_page() const override { return BoundsBytes(); }
  size_t workspace_bytes() const override { return workspace_bytes_; }

  absl::Status Summarize(StepBackend& backend, const PageBatch& pages,
                         cudaStream_t stream) const override {
    PageSummaryParams p;
    p.dtype = config_.dtype;
    p.head_dim = config_.head_dim;
    p.page_size = config_.page_size;
    p.num_pages = pages.num_pages;
    p.k_pages = pages.k_pages;
    p.tokens = pages.tokens;
    p.bounds = pages.dst[0];
    return backend.PageSummaries(p, stream);
  }

  absl::Status Select(StepBackend& backend, const SelectBatch& batch,
                      cudaStream_t stream) const override {
    BlockSelectParams p = Params();
    p.num_items = batch.num_items;
    p.q = batch.q;
    p.block_begin = batch.block_begin;
    p.block_end = batch.block_end;
    p.bounds = batch.summaries[0];
    p.selected = batch.selected;
    p.num_selected = batch.num_selected;
    p.workspace = batch.workspace;
    p.workspace_bytes = batch.workspace_bytes;
    return backend.BlockSelect(p, stream);
  }

 private:
  int64_t BoundsBytes() const {
    return 2 * int64_t{config_.head_dim} * static_cast<int64_t>(DTypeSize(config_.dtype));
  }
  BlockSelectParams Params() const {
    BlockSelectParams p;
    p.kind = BlockScoreKind::kPageBounds;
    p.mode = BlockSelectMode::kTopK;
    p.dtype = config_.dtype;
    p.head_dim = config_.head_dim;
    p.group_size = config_.group_size;
    p.softmax_scale = config_.softmax_scale;
    p.num_items = config_.max_items;
    p.max_blocks = config_.max_pages;
    p.k = config_.budget_pages;
    return p;
  }

  const IndexConfig config_;
  size_t workspace_bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BlockIndex>> CreatePageBoundsIndex(const IndexConfig& config) {
  if (config.mass_target > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.mass_target = ", config.mass_target,
        ": the page-bounds index ranks pages by an upper bound of q.k, which is not an "
        "attention mass; select by count (mass_target = 0) or use index = wave"));
  }
  if (config.estimate_pages != 0 || config.estimate_rest) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.estimate_rest ? "budget.estimate_rest = true"
                             : absl::StrCat("budget.estimate_pages = ", config.estimate_pages),
        ": the page-bounds index has no estimation zone; use index = wave"));
  }
  return std::unique_ptr<BlockIndex>(new PageBoundsIndex(config));
}

}  // namespace kvtier::internal
