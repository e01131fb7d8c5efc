#include "index/wave_index.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "kernels/segment_cluster.h"
#include "kernels/value_shift.h"

namespace kvtier::internal {
namespace {

// Summary arrays of a page: mean key, mean value (both in the KV dtype), key spread (a scalar),
// token count (each per centroid part), stored positions. The vector-read arrays come first, so
// they stay 16-byte aligned. Last, one per item (stride 0, at the region's end): the item's
// value-key statistics (kernels/value_shift.h), which every page's summary adds to once.
enum SummaryArray {
  kKeyMean = 0,
  kValueMean = 1,
  kKeySpread = 2,
  kCount = 3,
  kPositions = 4,
  kStats = 5
};
constexpr int kArrays = 6;

// k-means as RetroInfer runs it: ~16 tokens a cluster, 10 Lloyd iterations.
constexpr int kTokensPerCluster = 16;
constexpr int kIterations = 10;
// Each page keeps its tokens split in two centroids (block_summary.h): a page straddling two
// clusters, or holding one outlier key, is scored and estimated by both halves.
constexpr int kParts = 2;

class WaveIndex final : public BlockIndex {
 public:
  explicit WaveIndex(const IndexConfig& config) : config_(config) {
    const int64_t d = config.head_dim;
    const int64_t pages = config.max_pages;
    // Mean keys and mean values: parts x D of the KV dtype.
    const int64_t key_bytes = kParts * d * static_cast<int64_t>(DTypeSize(config.dtype));
    const int64_t strides[kArrays] = {
        key_bytes, key_bytes, kParts * 4, kParts * 4, int64_t{config.page_size} * 4, 0};
    int64_t offset = 0;
    layout_.arrays = kArrays;
    for (int a = 0; a < kArrays; ++a) {
      if (a == kStats) offset = (offset + 15) / 16 * 16;
      layout_.offset[a] = offset;
      layout_.stride[a] = strides[a];
      offset += pages * strides[a];
    }
    offset += ValueKeyStatsBytes(config.head_dim);
    // The region, max_pages * bytes_per_page bytes, holds the page arrays and the statistics;
    // regions start 16-byte aligned (mean keys are read with 16-byte vectors).
    const int64_t per_page =
        (offset + std::max<int64_t>(pages, 1) - 1) / std::max<int64_t>(pages, 1);
    layout_.bytes_per_page = (per_page + 15) / 16 * 16;
    // The workspace: the zone's logits (the select pass writes them, Estimate reads them),
    // then Select's scratch, then Estimate's partial results, then (estimating the rest) the
    // estimate over every candidate.
    logit_bytes_ = Aligned(sizeof(float) * config.max_items * config.group_size * kParts *
                           static_cast<size_t>(std::max(config.max_pages, 0)));
    BlockSelectParams p = SelectParams();
    float kept_outside = 0.0f;  // BlockSelectWorkspaceBytes only asks whether logits is set
    if (estimates()) p.logits = &kept_outside;
    select_workspace_bytes_ = Aligned(BlockSelectWorkspaceBytes(p));
    workspace_bytes_ = logits_bytes() + select_workspace_bytes_ + estimation_workspace_bytes();
    const size_t rows = static_cast<size_t>(config.max_items) * config.group_size;
    if (config.estimate_rest) {
      superset_out_bytes_ = Aligned(rows * config.head_dim * sizeof(float));
      workspace_bytes_ += superset_out_bytes_ + Aligned(rows * sizeof(float));
    }
    // Last, the step's value shifts.
    if (estimates()) {
      shift_offset_ = workspace_bytes_;
      workspace_bytes_ += Aligned(rows * config.head_dim * sizeof(float));
    }
    SegmentClusterParams c = ClusterParams();
    segment_workspace_bytes_ = SegmentClusterWorkspaceBytes(c);
  }

  IndexKind kind() const override { return IndexKind::kWave; }
  const IndexConfig& config() const override { return config_; }
  SummaryLayout layout() const override { return layout_; }
  // Scoring reads the mean key and the count; the zone's mean values are extra (estimate).
  int64_t scan_bytes_per_page() const override {
    return layout_.stride[kKeyMean] + layout_.stride[kCount];
  }
  size_t workspace_bytes() const override { return workspace_bytes_; }

  absl::Status Summarize(StepBackend& backend, const PageBatch& pages,
                         cudaStream_t stream) const override {
    PageSummaryParams p;
    p.dtype = config_.dtype;
    p.head_dim = config_.head_dim;
    p.page_size = config_.page_size;
    p.num_pages = pages.num_pages;
    p.centroid_parts = kParts;
    p.k_pages = pages.k_pages;
    p.v_pages = pages.v_pages;
    p.tokens = pages.tokens;
    p.key_mean = pages.dst[kKeyMean];
    p.value_mean = pages.dst[kValueMean];
    p.count = reinterpret_cast<int32_t* const*>(pages.dst[kCount]);
    p.key_spread = reinterpret_cast<float* const*>(pages.dst[kKeySpread]);
    KVTIER_RETURN_IF_ERROR(backend.PageSummaries(p, stream));
    if (!shifts()) return absl::OkStatus();
    // The complete pages, once each, into their items' statistics (from the parts just written).
    ValueKeyCovarianceParams c;
    c.dtype = config_.dtype;
    c.head_dim = config_.head_dim;
    c.page_size = config_.page_size;
    c.num_pages = pages.num_pages;
    c.centroid_parts = kParts;
    c.item_stride = std::max(pages.item_stride, 1);
    c.k_pages = pages.k_pages;
    c.v_pages = pages.v_pages;
    c.tokens = pages.tokens;
    c.key_mean = pages.dst[kKeyMean];
    c.value_mean = pages.dst[kValueMean];
    c.count = reinterpret_cast<const int32_t* const*>(pages.dst[kCount]);
    c.stats = reinterpret_cast<float* const*>(pages.dst[kStats]);
    return backend.ValueKeyCovariance(c, stream);
  }

  absl::Status Select(StepBackend& backend, const SelectBatch& batch,
                      cudaStream_t stream) const override {
    const BlockSelectParams p = BatchSelectParams(
        batch.num_items, batch.q, batch.block_begin, batch.block_end, batch.summaries,
        batch.selected, batch.num_selected, batch.workspace, batch.workspace_bytes);
    if (!config_.estimate_rest) return backend.BlockSelect(p, stream);
    // The scores (and the logits the rest's estimate reads) first, then `scored`, so that the
    // estimate runs on its own stream beside the selection.
    KVTIER_RETURN_IF_ERROR(backend.BlockScoring(p, stream));
    if (batch.scored != nullptr) KVTIER_RETURN_IF_ERROR(backend.Record(batch.scored, stream));
    return backend.BlockSelectScored(p, stream);
  }

  bool estimates() const override { return config_.estimate_pages > 0 || config_.estimate_rest; }
  bool estimates_rest() const override { return config_.estimate_rest; }
  // The zone reads a page's mean values, spreads and counts, and its G x parts logits from
  // the scoring pass (not its mean keys).
  int64_t estimate_bytes_per_page() const override {
    return layout_.stride[kValueMean] + layout_.stride[kKeySpread] + layout_.stride[kCount] +
           int64_t{config_.group_size} * kParts * 4;
  }
  // The value shift reads the item's statistics once a step.
  int64_t estimate_bytes_per_item() const override {
    return shifts() ? ValueKeyStatsBytes(config_.head_dim) : 0;
  }
  int zone_stride() const override {
    return config_.estimate_pages > 0 ? config_.budget_pages + config_.estimate_pages : 0;
  }

  absl::Status Estimate(StepBackend& backend, const EstimateBatch& batch,
                        cudaStream_t stream) const override {
    if (batch.workspace_bytes < workspace_bytes_) {
      return absl::InvalidArgumentError(absl::StrCat("EstimateBatch: workspace has ",
                                                     batch.workspace_bytes, " bytes; expected ",
                                                     workspace_bytes_));
    }
    // The value shifts need only the query and the statistics: they go first, beside the
    // scoring.
    if (shifts()) KVTIER_RETURN_IF_ERROR(ValueShifts(backend, batch, stream));
    if (config_.estimate_rest) return EstimateRest(backend, batch, stream);
    if (batch.selected_event != nullptr) {
      KVTIER_RETURN_IF_ERROR(backend.StreamWait(stream, batch.selected_event));
    }
    // The zone: the top budget + estimate pages of Select's ranking (a superset of the
    // retrieved ones under top-k, and of a mass-target prefix, which ranks the same way),
    // from the scores and logits Select left in the workspace.
    BlockSelectParams zone = BatchSelectParams(
        batch.num_items, batch.q, batch.block_begin, batch.block_end, batch.summaries,
        /*selected, num_selected: the zone call writes only the zone*/ nullptr, nullptr,
        batch.workspace, batch.workspace_bytes);
    zone.zone_k = zone_stride();
    zone.zone_selected = batch.zone;
    zone.zone_count = batch.zone_count;
    KVTIER_RETURN_IF_ERROR(backend.BlockSelectZone(zone, stream));

    EstimationParams p = BatchEstimation(batch);
    p.cluster_ids = batch.zone;
    p.list_count = batch.zone_count;
    p.list_stride = zone_stride();
    p.exclude_ids = batch.selected;
    p.exclude_count = batch.num_selected;
    p.exclude_stride = config_.budget_pages;
    p.out = batch.out;
    p.lse = batch.lse;
    return backend.Estimation(p, stream);
  }

  bool orders_segments() const override { return true; }
  size_t segment_workspace_bytes() const override { return segment_workspace_bytes_; }
  absl::Status OrderSegments(StepBackend& backend, const SegmentBatch& batch,
                             cudaStream_t stream) const override {
    SegmentClusterParams p = ClusterParams();
    p.num_segments = batch.num_segments;
    p.max_tokens = batch.max_tokens;
    p.keys = batch.keys;
    p.key_stride = batch.key_stride;
    p.num_tokens = batch.num_tokens;
    p.order = batch.order;
    p.workspace = batch.workspace;
    p.workspace_bytes = batch.workspace_bytes;
    return backend.SegmentCluster(p, stream);
  }
  int position_array() const override { return kPositions; }

 private:
  // The shifts of the step's query rows from their items' statistics.
  absl::Status ValueShifts(StepBackend& backend, const EstimateBatch& batch,
                           cudaStream_t stream) const {
    ValueShiftParams shift;
    shift.dtype = config_.dtype;
    shift.head_dim = config_.head_dim;
    shift.group_size = config_.group_size;
    shift.softmax_scale = config_.softmax_scale;
    shift.num_items = batch.num_items;
    shift.q = batch.q;
    shift.stats = reinterpret_cast<const float* const*>(batch.summaries[kStats]);
    shift.shift = Shifts(batch.workspace);
    return backend.ValueShift(shift, stream);
  }

  BlockSelectParams SelectParams() const {
    BlockSelectParams p;
    p.kind = BlockScoreKind::kCentroid;
    p.centroid_parts = kParts;
    p.mode = BlockSelectMode::kTopK;
    p.dtype = config_.dtype;
    p.head_dim = config_.head_dim;
    p.group_size = config_.group_size;
    p.softmax_scale = config_.softmax_scale;
    p.num_items = config_.max_items;
    p.max_blocks = config_.max_pages;
    p.k = config_.budget_pages;
    if (config_.mass_target > 0) {
      p.mode = BlockSelectMode::kMassTarget;
      p.mass_target = static_cast<float>(config_.mass_target);
    }
    return p;
  }
  // The retrieval of a step's batch (Select), and the base of its zone's (Estimate): the
  // workspace starts with the logits (estimating kinds), which the estimation reuses.
  BlockSelectParams BatchSelectParams(int num_items, const void* q, const int32_t* block_begin,
                                      const int32_t* block_end,
                                      const void* const* const summaries[kMaxSummaryArrays],
                                      int32_t* selected, int32_t* num_selected, void* workspace,
                                      size_t workspace_bytes) const {
    BlockSelectParams p = SelectParams();
    p.num_items = num_items;
    p.q = q;
    p.block_begin = block_begin;
    p.block_end = block_end;
    p.key_mean = summaries[kKeyMean];
    p.count = reinterpret_cast<const int32_t* const*>(summaries[kCount]);
    p.selected = selected;
    p.num_selected = num_selected;
    if (estimates()) p.logits = static_cast<float*>(workspace);
    p.workspace = static_cast<char*>(workspace) + logits_bytes();
    p.workspace_bytes = workspace_bytes - std::min(workspace_bytes, logits_bytes());
    return p;
  }
  // What both estimates of a step share: shapes, the query, the logits Select left (mean keys
  // are not read again), the summaries, and the estimation's scratch.
  EstimationParams BatchEstimation(const EstimateBatch& batch) const {
    EstimationParams p;
    p.dtype = config_.dtype;
    p.head_dim = config_.head_dim;
    p.group_size = config_.group_size;
    p.softmax_scale = config_.softmax_scale;
    p.num_items = batch.num_items;
    p.centroid_parts = kParts;
    p.q = batch.q;
    p.logits = static_cast<const float*>(batch.workspace);
    p.logit_stride = int64_t{kParts} * config_.max_pages;
    p.value_mean = batch.summaries[kValueMean];
    p.count = reinterpret_cast<const int32_t* const*>(batch.summaries[kCount]);
    p.key_spread = reinterpret_cast<const float* const*>(batch.summaries[kKeySpread]);
    if (shifts()) p.value_shift = Shifts(batch.workspace);
    const size_t before = logits_bytes() + select_workspace_bytes_;
    p.workspace = static_cast<char*>(batch.workspace) + before;
    p.workspace_bytes = estimation_workspace_bytes();
    return p;
  }

  // The rest: every candidate estimated as soon as the scores are in (beside the selection),
  // then the retrieved ones taken out once the selection is.
  absl::Status EstimateRest(StepBackend& backend, const EstimateBatch& batch,
                            cudaStream_t stream) const {
    char* superset = static_cast<char*>(batch.workspace) + logits_bytes() +
                     select_workspace_bytes_ + estimation_workspace_bytes();
    float* superset_out = reinterpret_cast<float*>(superset);
    float* superset_lse = reinterpret_cast<float*>(superset + superset_out_bytes_);
    if (batch.scored_event != nullptr) {
      KVTIER_RETURN_IF_ERROR(backend.StreamWait(stream, batch.scored_event));
    }
    EstimationParams all = BatchEstimation(batch);
    all.range_begin = batch.block_begin;
    all.range_end = batch.block_end;
    all.out = superset_out;
    all.lse = superset_lse;
    KVTIER_RETURN_IF_ERROR(backend.Estimation(all, stream));

    if (batch.selected_event != nullptr) {
      KVTIER_RETURN_IF_ERROR(backend.StreamWait(stream, batch.selected_event));
    }
    EstimationParams rest = BatchEstimation(batch);
    rest.cluster_ids = batch.selected;
    rest.list_count = batch.num_selected;
    rest.list_stride = config_.budget_pages;
    rest.superset_out = superset_out;
    rest.superset_lse = superset_lse;
    rest.out = batch.out;
    rest.lse = batch.lse;
    return backend.Estimation(rest, stream);
  }

  SegmentClusterParams ClusterParams() const {
    SegmentClusterParams p;
    p.dtype = config_.dtype;
    p.head_dim = config_.head_dim;
    p.num_segments = config_.max_segments;
    p.max_tokens = config_.max_segment_tokens;
    // Prefill's rows: [tokens, Hk, D] (SegmentBatch::key_stride is the same).
    p.key_stride = int64_t{config_.head_dim} * config_.max_segments;
    p.tokens_per_cluster = kTokensPerCluster;
    p.iterations = kIterations;
    return p;
  }

  static size_t Aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }
  bool shifts() const { return config_.value_shift && estimates(); }
  float* Shifts(void* workspace) const {
    return reinterpret_cast<float*>(static_cast<char*>(workspace) + shift_offset_);
  }
  size_t logits_bytes() const { return estimates() ? logit_bytes_ : 0; }
  size_t estimation_workspace_bytes() const {
    return estimates()
               ? EstimationWorkspaceBytes(config_.max_items, config_.group_size, config_.head_dim)
               : 0;
  }

  const IndexConfig config_;
  SummaryLayout layout_;
  size_t logit_bytes_ = 0;             // the workspace's first part, with a zone: its logits
  size_t select_workspace_bytes_ = 0;  // then Select's scratch
  size_t workspace_bytes_ = 0;         // then Estimate's partial results
  size_t superset_out_bytes_ = 0;      // then the rest's superset estimate: out, then lse
  size_t shift_offset_ = 0;            // then the value shifts, [max_items, G, D] fp32
  size_t segment_workspace_bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BlockIndex>> CreateWaveIndex(const IndexConfig& config) {
  if (config.estimate_rest && config.estimate_pages != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget.estimate_pages = ", config.estimate_pages,
                     " with budget.estimate_rest: the zone is then every page not retrieved; "
                     "use 0"));
  }
  if (config.budget_pages + config.estimate_pages > kMaxSelectK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget.max_pages + budget.estimate_pages = ", config.budget_pages + config.estimate_pages,
        ": at most ", kMaxSelectK));
  }
  return std::unique_ptr<BlockIndex>(new WaveIndex(config));
}

}  // namespace kvtier::internal
