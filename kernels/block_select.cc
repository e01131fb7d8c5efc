// Host twin of block scoring and selection (block_select.cu) and the checks both share. The
// twin evaluates every score in the kernel's order (see block_select.h): the lane structure
// of the kernel's dot products and of its softmax denominators is spelled out below.
#include "kernels/block_select.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace {

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("BlockSelectParams: ", parts...));
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// Sum over lanes of a block's dot product: lane partials combined by the kernel's xor
// butterfly (offsets L/2, ..., 1); every lane ends with the same value, lane 0's is returned.
float Butterfly(float* partial, int lanes) {
  float next[32];
  for (int offset = lanes / 2; offset >= 1; offset /= 2) {
    for (int l = 0; l < lanes; ++l) next[l] = internal::Add(partial[l], partial[l ^ offset]);
    std::copy(next, next + lanes, partial);
  }
  return partial[0];
}

// The query of item `item` as float, [G, D].
std::vector<float> LoadQuery(const BlockSelectParams& p, int item) {
  const size_t n = static_cast<size_t>(p.group_size) * p.head_dim;
  std::vector<float> q(n);
  for (size_t i = 0; i < n; ++i) q[i] = LoadAsFloat(p.dtype, p.q, item * n + i);
  return q;
}

// kPageBounds: lane l chains fused multiply-adds over heads h = 0..G-1, then its channels
// 8l..8l+7, starting from 0; the lanes are summed by the butterfly.
float BoundsScore(const BlockSelectParams& p, const float* q, const void* bounds, int block) {
  const int dim = p.head_dim;
  const int lanes = dim / internal::kChannelsPerLane;
  const size_t base = static_cast<size_t>(block) * 2 * dim;
  float partial[32];
  for (int l = 0; l < lanes; ++l) {
    float acc = 0.0f;
    for (int h = 0; h < p.group_size; ++h) {
      for (int j = 0; j < internal::kChannelsPerLane; ++j) {
        const int i = l * internal::kChannelsPerLane + j;
        const float qi = q[h * dim + i];
        const float x = LoadAsFloat(p.dtype, bounds, base + (qi >= 0.0f ? i : dim + i));
        acc = internal::Fma(qi, x, acc);
      }
    }
    partial[l] = acc;
  }
  return Butterfly(partial, lanes);
}

// kCentroid: the logit of head h, scale * (lane chains over channels, butterfly).
float CentroidLogit(const BlockSelectParams& p, const float* q_head, const void* key_mean,
                    int block) {
  const int dim = p.head_dim;
  const int lanes = dim / internal::kChannelsPerLane;
  const size_t base = static_cast<size_t>(block) * dim;  // block: block * parts + part
  float partial[32];
  for (int l = 0; l < lanes; ++l) {
    float acc = 0.0f;
    for (int j = 0; j < internal::kChannelsPerLane; ++j) {
      const int i = l * internal::kChannelsPerLane + j;
      acc = internal::Fma(q_head[i], LoadAsFloat(p.dtype, key_mean, base + i), acc);
    }
    partial[l] = acc;
  }
  return internal::Mul(Butterfly(partial, lanes), p.softmax_scale);
}

// Ranking scores of item `item`'s candidates, scores[r] for block block_begin + r. With
// logits_in, kCentroid's logits are read from p.logits instead of computed (and not written).
void ItemScores(const BlockSelectParams& p, int item, std::vector<float>& scores,
                bool logits_in = false) {
  const int begin = p.block_begin[item];
  const int n = p.block_end[item] - begin;
  scores.assign(n, 0.0f);
  if (n == 0) return;
  const std::vector<float> q = LoadQuery(p, item);
  if (p.kind == BlockScoreKind::kPageBounds) {
    for (int r = 0; r < n; ++r) scores[r] = BoundsScore(p, q.data(), p.bounds[item], begin + r);
    return;
  }
  // kCentroid: every head's logits, then its denominator by segments (block_select.h) in the
  // scoring kernel's order: lane l of kMassLanes takes candidates l, l + 32, ... of the
  // segment in order (the max, then the sum of the weights against it), the lanes' sums
  // combined by the xor butterfly.
  const int parts = p.centroid_parts;
  const int G = p.group_size;
  const int32_t* counts = p.count[item] + static_cast<size_t>(begin) * parts;
  const int segments = internal::MassSegments(n);
  const size_t row_length = static_cast<size_t>(n) * parts;
  std::vector<float> logit(G * row_length);
  std::vector<float> segment_max(segments), segment_sum(segments);
  std::vector<float> max_logit(G), inverse(G);
  for (int h = 0; h < G; ++h) {
    const float* q_head = q.data() + static_cast<size_t>(h) * p.head_dim;
    float* row = logit.data() + h * row_length;
    float* logits_out = p.logits != nullptr
                            ? p.logits +
                                  (static_cast<size_t>(item) * G + h) * p.max_blocks * parts +
                                  static_cast<size_t>(begin) * parts
                            : nullptr;
    for (size_t r = 0; r < row_length; ++r) {
      if (logits_in) {
        row[r] = logits_out[r];
        continue;
      }
      row[r] = CentroidLogit(p, q_head, p.key_mean[item], begin * parts + static_cast<int>(r));
      if (logits_out != nullptr) logits_out[r] = row[r];
    }
    for (int s = 0; s < segments; ++s) {
      float m = -kInf;
      for (int r = s * internal::kMassSegment; r < std::min(n, (s + 1) * internal::kMassSegment);
           ++r) {
        m = internal::CentroidMaxLogit(row, counts, r, parts, m);
      }
      float lane_sum[internal::kMassLanes];
      for (int l = 0; l < internal::kMassLanes; ++l) {
        lane_sum[l] = 0.0f;
        for (int r = s * internal::kMassSegment + l;
             r < std::min(n, (s + 1) * internal::kMassSegment); r += internal::kMassLanes) {
          lane_sum[l] =
              internal::Add(lane_sum[l], internal::CentroidWeight(row, counts, r, parts, m));
        }
      }
      segment_max[s] = m;
      segment_sum[s] = Butterfly(lane_sum, internal::kMassLanes);
    }
    max_logit[h] = -kInf;
    for (int s = 0; s < segments; ++s) max_logit[h] = internal::Fmax(max_logit[h], segment_max[s]);
    float share[internal::kMassLanes];
    for (int l = 0; l < internal::kMassLanes; ++l) {
      share[l] = internal::DenominatorShare(segment_max.data(), segment_sum.data(), segments, l,
                                            max_logit[h]);
    }
    inverse[h] = internal::InverseOf(Butterfly(share, internal::kMassLanes));
  }
  for (int r = 0; r < n; ++r) {
    for (int h = 0; h < G; ++h) {
      const float w =
          internal::CentroidWeight(logit.data() + h * row_length, counts, r, parts, max_logit[h]);
      scores[r] = internal::Add(scores[r], internal::Mul(w, inverse[h]));
    }
  }
}

absl::Status ValidateItems(const BlockSelectParams& p) {
  for (int i = 0; i < p.num_items; ++i) {
    const int32_t begin = p.block_begin[i];
    const int32_t end = p.block_end[i];
    if (begin < 0 || begin > end || end > p.max_blocks) {
      return Invalid("item ", i, " has block_begin ", begin, " and block_end ", end,
                     "; expected 0 <= block_begin <= block_end <= max_blocks (", p.max_blocks, ")");
    }
    if (begin == end) continue;
    if (p.kind == BlockScoreKind::kPageBounds && p.bounds[i] == nullptr) {
      return Invalid("bounds[", i, "] is null");
    }
    if (p.kind == BlockScoreKind::kCentroid) {
      if (p.key_mean[i] == nullptr) return Invalid("key_mean[", i, "] is null");
      if (p.count[i] == nullptr) return Invalid("count[", i, "] is null");
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

absl::Status ValidateBlockSelectShape(const BlockSelectParams& p) {
  if (p.kind != BlockScoreKind::kPageBounds && p.kind != BlockScoreKind::kCentroid) {
    return Invalid("kind is ", static_cast<int>(p.kind), "; expected kPageBounds or kCentroid");
  }
  if (p.mode != BlockSelectMode::kTopK && p.mode != BlockSelectMode::kMassTarget) {
    return Invalid("mode is ", static_cast<int>(p.mode), "; expected kTopK or kMassTarget");
  }
  if (p.mode == BlockSelectMode::kMassTarget && p.kind != BlockScoreKind::kCentroid) {
    return Invalid(
        "mode is kMassTarget with kind kPageBounds; a mass target needs kCentroid "
        "(page bounds are not a mass)");
  }
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return Invalid("dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16");
  }
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) {
    return Invalid("head_dim is ", p.head_dim, "; expected 64, 128 or 256");
  }
  if (p.group_size < 1 || p.group_size > kMaxSelectGroup) {
    return Invalid("group_size is ", p.group_size, "; expected in [1, ", kMaxSelectGroup, "]");
  }
  if (!std::isfinite(p.softmax_scale)) {
    return Invalid("softmax_scale is ", p.softmax_scale, "; expected finite");
  }
  if (p.num_items < 0) return Invalid("num_items is ", p.num_items, "; expected >= 0");
  if (p.centroid_parts != 1 && p.centroid_parts != 2) {
    return Invalid("centroid_parts is ", p.centroid_parts, "; expected 1 or 2");
  }
  if (p.centroid_parts != 1 && p.kind != BlockScoreKind::kCentroid) {
    return Invalid("centroid_parts is ", p.centroid_parts, " with kind kPageBounds; expected 1");
  }
  if (p.max_blocks < 1 || p.max_blocks > kMaxSelectBlocks) {
    return Invalid("max_blocks is ", p.max_blocks, "; expected in [1, ", kMaxSelectBlocks, "]");
  }
  if (p.k < 1 || p.k > kMaxSelectK) {
    return Invalid("k is ", p.k, "; expected in [1, ", kMaxSelectK, "]");
  }
  if (p.mode == BlockSelectMode::kMassTarget && !(p.mass_target > 0.0f && p.mass_target <= 1.0f)) {
    return Invalid("mass_target is ", p.mass_target, "; expected in (0, 1]");
  }
  if (p.zone_k != 0 && (p.zone_k < p.k || p.zone_k > kMaxSelectK)) {
    return Invalid("zone_k is ", p.zone_k, "; expected 0 or in [k = ", p.k, ", ", kMaxSelectK, "]");
  }
  if (p.num_items == 0) return absl::OkStatus();
  if (p.q == nullptr) return Invalid("q is null");
  if (p.zone_k != 0 && (p.zone_selected == nullptr || p.zone_count == nullptr)) {
    return Invalid("zone_k is ", p.zone_k, " but zone_selected or zone_count is null");
  }
  if (p.block_begin == nullptr) return Invalid("block_begin is null");
  if (p.block_end == nullptr) return Invalid("block_end is null");
  if (p.kind == BlockScoreKind::kPageBounds && p.bounds == nullptr) {
    return Invalid("bounds is null (kind kPageBounds)");
  }
  if (p.kind == BlockScoreKind::kCentroid && p.key_mean == nullptr) {
    return Invalid("key_mean is null (kind kCentroid)");
  }
  if (p.kind == BlockScoreKind::kCentroid && p.count == nullptr) {
    return Invalid("count is null (kind kCentroid)");
  }
  return absl::OkStatus();
}

absl::Status ValidateSelectionOutputs(const BlockSelectParams& p) {
  if (p.num_items == 0) return absl::OkStatus();
  if (p.selected == nullptr) return Invalid("selected is null");
  if (p.num_selected == nullptr) return Invalid("num_selected is null");
  return absl::OkStatus();
}

absl::Status ValidateZoneOnly(const BlockSelectParams& p) {
  if (p.zone_k <= 0) return Invalid("zone_k is ", p.zone_k, "; a zone-only call needs zone_k > 0");
  return absl::OkStatus();
}

}  // namespace internal

namespace internal {
int ScoreRows(const BlockSelectParams& p) { return p.kind == BlockScoreKind::kCentroid ? 2 : 1; }
}  // namespace internal

size_t BlockSelectWorkspaceBytes(const BlockSelectParams& p) {
  if (p.num_items < 0 || p.max_blocks < 1 || p.max_blocks > kMaxSelectBlocks || p.group_size < 1 ||
      p.group_size > kMaxSelectGroup || p.centroid_parts < 1 || p.centroid_parts > 2) {
    return 0;
  }
  // Floats an item: the score rows, for kCentroid the segment maxima and sums, then the
  // logits unless the caller keeps them.
  const bool centroid = p.kind == BlockScoreKind::kCentroid;
  const size_t G = static_cast<size_t>(p.group_size);
  const size_t floats = static_cast<size_t>(internal::ScoreRows(p)) * p.max_blocks +
                        (centroid ? 2 * G * internal::MassSegments(p.max_blocks) : 0) +
                        (centroid && p.logits == nullptr ? G * p.centroid_parts * p.max_blocks : 0);
  const size_t bytes = static_cast<size_t>(p.num_items) * floats * sizeof(float);
  return (bytes + 255) / 256 * 256;
}

absl::Status ReferenceBlockScores(const BlockSelectParams& params, int item, float* scores) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(params));
  if (item < 0 || item >= params.num_items) {
    return Invalid("item ", item, " is out of [0, num_items = ", params.num_items, ")");
  }
  KVTIER_RETURN_IF_ERROR(ValidateItems(params));
  std::vector<float> values;
  ItemScores(params, item, values);
  std::copy(values.begin(), values.end(), scores);
  return absl::OkStatus();
}

namespace {

// Ranking of an item's scores: key descending, then candidate index ascending.
std::vector<int> Ranking(const std::vector<float>& scores) {
  const int n = static_cast<int>(scores.size());
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::vector<uint32_t> keys(n);
  for (int r = 0; r < n; ++r) keys[r] = internal::ScoreKey(scores[r]);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return keys[a] > keys[b]; });
  return order;
}

// The first m of the ranking, ascending, into row `item` of rows [items, width] (-1 after
// them), and m into counts[item].
void WriteSelection(const BlockSelectParams& p, int item, const std::vector<int>& order, int m,
                    int width, int32_t* rows, int32_t* counts) {
  std::vector<int32_t> chosen(order.begin(), order.begin() + m);
  std::sort(chosen.begin(), chosen.end());
  int32_t* row = rows + static_cast<size_t>(item) * width;
  for (int j = 0; j < width; ++j) row[j] = j < m ? p.block_begin[item] + chosen[j] : -1;
  counts[item] = m;
}

}  // namespace

namespace {

// The retrieval (and zone) of every item; with logits_in, from the logits in p.logits.
void SelectItems(const BlockSelectParams& p, bool logits_in) {
  const uint64_t target = p.mode == BlockSelectMode::kMassTarget
                              ? internal::FixedMassTarget(p.mass_target, p.group_size)
                              : std::numeric_limits<uint64_t>::max();
  tbb::parallel_for(0, p.num_items, [&](int item) {
    std::vector<float> scores;
    ItemScores(p, item, scores, logits_in);
    const int n = static_cast<int>(scores.size());
    const int k = std::min(p.k, n);
    const std::vector<int> order = Ranking(scores);
    // The shortest prefix with k blocks or the target mass.
    int m = 0;
    uint64_t mass = 0;
    while (m < k && mass < target) {
      mass += internal::FixedMass(scores[order[m]]);
      ++m;
    }
    WriteSelection(p, item, order, m, p.k, p.selected, p.num_selected);
    if (p.zone_k > 0) {
      WriteSelection(p, item, order, std::min(p.zone_k, n), p.zone_k, p.zone_selected,
                     p.zone_count);
    }
  });
}

}  // namespace

absl::Status ReferenceBlockSelect(const BlockSelectParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(p));
  KVTIER_RETURN_IF_ERROR(internal::ValidateSelectionOutputs(p));
  KVTIER_RETURN_IF_ERROR(ValidateItems(p));
  SelectItems(p, /*logits_in=*/false);
  return absl::OkStatus();
}

absl::Status ReferenceBlockScoring(const BlockSelectParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(p));
  KVTIER_RETURN_IF_ERROR(ValidateItems(p));
  if (p.kind != BlockScoreKind::kCentroid || p.logits == nullptr) return absl::OkStatus();
  tbb::parallel_for(0, p.num_items, [&](int item) {
    std::vector<float> scores;
    ItemScores(p, item, scores);  // writes the item's logits
  });
  return absl::OkStatus();
}

absl::Status ReferenceBlockSelectScored(const BlockSelectParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(p));
  KVTIER_RETURN_IF_ERROR(internal::ValidateSelectionOutputs(p));
  KVTIER_RETURN_IF_ERROR(ValidateItems(p));
  SelectItems(p, /*logits_in=*/p.kind == BlockScoreKind::kCentroid && p.logits != nullptr);
  return absl::OkStatus();
}

absl::Status ReferenceBlockSelectZone(const BlockSelectParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateBlockSelectShape(p));
  KVTIER_RETURN_IF_ERROR(internal::ValidateZoneOnly(p));
  KVTIER_RETURN_IF_ERROR(ValidateItems(p));
  const bool logits_in = p.kind == BlockScoreKind::kCentroid && p.logits != nullptr;
  tbb::parallel_for(0, p.num_items, [&](int item) {
    std::vector<float> scores;
    ItemScores(p, item, scores, logits_in);
    const int n = static_cast<int>(scores.size());
    WriteSelection(p, item, Ranking(scores), std::min(p.zone_k, n), p.zone_k, p.zone_selected,
                   p.zone_count);
  });
  return absl::OkStatus();
}

}  // namespace kvtier
