// Host twin of the estimation kernel (estimation.cu) and the checks both share.
#include "kernels/estimation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace {

template <typename... Parts>
absl::Status Invalid(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("EstimationParams: ", parts...));
}

// Item i's entries [begin, end): of cluster_ids in either list mode, or the cluster range.
void ListOf(const EstimationParams& p, int i, int32_t* begin, int32_t* end) {
  if (p.range_begin != nullptr) {
    *begin = p.range_begin[i];
    *end = p.range_end[i];
  } else if (p.list_count != nullptr) {
    *begin = i * p.list_stride;
    *end = *begin + std::clamp(p.list_count[i], 0, p.list_stride);
  } else {
    *begin = p.cluster_offsets[i];
    *end = p.cluster_offsets[i + 1];
  }
}

// The cluster of entry j (ListOf's range).
int32_t ClusterOf(const EstimationParams& p, int32_t j) {
  return p.range_begin != nullptr ? j : p.cluster_ids[j];
}

bool Excluded(const EstimationParams& p, int item, int32_t id) {
  if (p.exclude_ids == nullptr) return false;
  const int32_t* first = p.exclude_ids + static_cast<int64_t>(item) * p.exclude_stride;
  const int32_t n = std::clamp(p.exclude_count[item], 0, p.exclude_stride);
  return std::binary_search(first, first + n, id);
}

absl::Status ValidateItems(const EstimationParams& p) {
  if (p.range_begin != nullptr) {
    for (int i = 0; i < p.num_items; ++i) {
      if (p.range_begin[i] < 0 || p.range_end[i] < p.range_begin[i]) {
        return Invalid("range of item ", i, " is [", p.range_begin[i], ", ", p.range_end[i],
                       "); expected 0 <= begin <= end");
      }
    }
  } else if (p.list_count != nullptr) {
    for (int i = 0; i < p.num_items; ++i) {
      if (p.list_count[i] < 0 || p.list_count[i] > p.list_stride) {
        return Invalid("list_count[", i, "] is ", p.list_count[i], "; expected in [0, ",
                       p.list_stride, "]");
      }
    }
  }
  if (p.exclude_ids != nullptr) {
    for (int i = 0; i < p.num_items; ++i) {
      const int32_t n = p.exclude_count[i];
      if (n < 0 || n > p.exclude_stride) {
        return Invalid("exclude_count[", i, "] is ", n, "; expected in [0, ", p.exclude_stride,
                       "]");
      }
      const int32_t* first = p.exclude_ids + static_cast<int64_t>(i) * p.exclude_stride;
      if (!std::is_sorted(first, first + n)) {
        return Invalid("exclude_ids of item ", i, " are not ascending");
      }
    }
  }
  if (p.range_begin == nullptr && p.list_count == nullptr) {
    if (p.cluster_offsets[0] != 0) {
      return Invalid("cluster_offsets[0] is ", p.cluster_offsets[0], "; expected 0");
    }
    for (int i = 0; i < p.num_items; ++i) {
      const int32_t begin = p.cluster_offsets[i];
      const int32_t end = p.cluster_offsets[i + 1];
      if (end < begin) {
        return Invalid("cluster_offsets[", i + 1, "] is ", end, ", below cluster_offsets[", i,
                       "] = ", begin, "; expected non-decreasing");
      }
    }
  }
  for (int i = 0; i < p.num_items; ++i) {
    int32_t begin = 0, end = 0;
    ListOf(p, i, &begin, &end);
    if (end == begin) continue;
    if (p.logits == nullptr && p.key_mean[i] == nullptr) {
      return Invalid("key_mean[", i, "] is null");
    }
    if (p.value_mean[i] == nullptr) return Invalid("value_mean[", i, "] is null");
    if (p.count[i] == nullptr) return Invalid("count[", i, "] is null");
    if (p.key_spread != nullptr && p.key_spread[i] == nullptr) {
      return Invalid("key_spread[", i, "] is null");
    }
    for (int32_t j = begin; j < end; ++j) {
      const int32_t id = ClusterOf(p, j);
      if (id < 0) return Invalid("cluster_ids[", j, "] is ", id, "; expected >= 0");
      if (p.logits != nullptr && (int64_t{id} + 1) * p.centroid_parts > p.logit_stride) {
        return Invalid("cluster ", id, " of item ", i, ": its logits lie beyond logit_stride ",
                       p.logit_stride, " (", p.centroid_parts, " a cluster)");
      }
    }
  }
  return absl::OkStatus();
}

void EstimateRow(const EstimationParams& p, int item, int head) {
  const int dim = p.head_dim;
  const int64_t row = static_cast<int64_t>(item) * p.group_size + head;
  std::vector<double> q(dim);
  double q_square = 0.0;  // |q|^2, the spread term's weight
  for (int d = 0; d < dim; ++d) {
    q[d] = LoadAsFloat(p.dtype, p.q, row * dim + d);
    q_square += q[d] * q[d];
  }

  // Logits of the contributing clusters, then the max-subtracted sums.
  int32_t begin = 0, end = 0;
  ListOf(p, item, &begin, &end);
  std::vector<double> logits;
  std::vector<int32_t> ids;
  double max_logit = -std::numeric_limits<double>::infinity();
  bool any_nan = false;
  for (int32_t j = begin; j < end; ++j) {
    const int32_t cluster = ClusterOf(p, j);
    if (Excluded(p, item, cluster)) continue;
    for (int part = 0; part < p.centroid_parts; ++part) {
      const int32_t id = cluster * p.centroid_parts + part;  // the part's centroid
      if (p.count[item][id] <= 0) continue;
      const double scale = p.softmax_scale;
      double scaled_dot = 0.0;  // scale q.c
      if (p.logits != nullptr) {
        scaled_dot = p.logits[row * p.logit_stride + id];
      } else {
        double dot = 0.0;
        for (int d = 0; d < dim; ++d) {
          dot += q[d] * LoadAsFloat(p.dtype, p.key_mean[item], static_cast<size_t>(id) * dim + d);
        }
        scaled_dot = scale * dot;
      }
      const double spread = p.key_spread != nullptr ? q_square * p.key_spread[item][id] : 0.0;
      const double logit = scaled_dot + 0.5 * kSpreadWeight * scale * scale * spread;
      any_nan |= std::isnan(logit);
      max_logit = std::max(max_logit, logit);
      logits.push_back(logit);
      ids.push_back(id);
    }
  }
  float* out = p.out + row * dim;
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // This list's estimate, in double: out = numerator / denominator, lse.
  std::vector<double> mean(dim, 0.0);
  double lse = -kInf;
  if (any_nan) {
    std::fill(mean.begin(), mean.end(), kNaN);
    lse = kNaN;
  } else if (!ids.empty()) {
    std::vector<double> numerator(dim, 0.0);
    double denominator = 0.0;
    for (size_t c = 0; c < ids.size(); ++c) {
      const double weight = std::exp(logits[c] - max_logit) * p.count[item][ids[c]];
      denominator += weight;
      const size_t at = static_cast<size_t>(ids[c]) * dim;
      const double spread = p.value_shift != nullptr ? p.key_spread[item][ids[c]] : 0.0;
      for (int d = 0; d < dim; ++d) {
        double value = LoadAsFloat(p.dtype, p.value_mean[item], at + d);
        if (p.value_shift != nullptr) value += spread * p.value_shift[row * dim + d];
        numerator[d] += weight * value;
      }
    }
    for (int d = 0; d < dim; ++d) mean[d] = numerator[d] / denominator;
    lse = max_logit + std::log(denominator);
  }
  if (p.superset_out != nullptr) {
    // The superset's estimate less this one (estimation.h): with f = e^{lse - superset lse},
    // rest = superset (1 - f), out = (superset out - f out) / (1 - f).
    const double superset_lse = p.superset_lse[row];
    const float* superset = p.superset_out + row * dim;
    if (std::isnan(superset_lse) || std::isnan(lse)) {
      std::fill(mean.begin(), mean.end(), kNaN);
      lse = kNaN;
    } else {
      const double f = lse == -kInf ? 0.0 : std::exp(lse - superset_lse);
      const double rest = 1.0 - f;
      if (superset_lse == -kInf || !(rest > kRestFloor)) {
        std::fill(mean.begin(), mean.end(), 0.0);
        lse = -kInf;
      } else {
        for (int d = 0; d < dim; ++d) mean[d] = (superset[d] - f * mean[d]) / rest;
        lse = superset_lse + std::log(rest);
      }
    }
  }
  for (int d = 0; d < dim; ++d) out[d] = static_cast<float>(mean[d]);
  p.lse[row] = static_cast<float>(lse);
}

}  // namespace

namespace internal {

absl::Status ValidateEstimationShape(const EstimationParams& p) {
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return Invalid("dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16");
  }
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) {
    return Invalid("head_dim is ", p.head_dim, "; expected 64, 128 or 256");
  }
  if (p.group_size < 1) return Invalid("group_size is ", p.group_size, "; expected >= 1");
  if (p.centroid_parts != 1 && p.centroid_parts != 2) {
    return Invalid("centroid_parts is ", p.centroid_parts, "; expected 1 or 2");
  }
  if (!std::isfinite(p.softmax_scale)) {
    return Invalid("softmax_scale is ", p.softmax_scale, "; expected finite");
  }
  if (p.num_items < 0) return Invalid("num_items is ", p.num_items, "; expected >= 0");
  if (p.num_items == 0) return absl::OkStatus();
  if (p.q == nullptr) return Invalid("q is null");
  if (p.range_begin != nullptr) {
    if (p.range_end == nullptr) return Invalid("range_end is null with range_begin");
  } else if (p.list_count != nullptr) {
    if (p.list_stride < 1) return Invalid("list_stride is ", p.list_stride, "; expected >= 1");
  } else if (p.cluster_offsets == nullptr) {
    return Invalid("cluster_offsets is null (and no list_count), and no range_begin");
  }
  if (p.exclude_ids != nullptr) {
    if (p.exclude_count == nullptr) return Invalid("exclude_count is null with exclude_ids");
    if (p.exclude_stride < 1) {
      return Invalid("exclude_stride is ", p.exclude_stride, "; expected >= 1");
    }
  }
  if (p.range_begin == nullptr && p.cluster_ids == nullptr) return Invalid("cluster_ids is null");
  if ((p.superset_out == nullptr) != (p.superset_lse == nullptr)) {
    return Invalid("superset_out and superset_lse: give both or neither");
  }
  if (p.superset_out != nullptr && (p.superset_out == p.out || p.superset_lse == p.lse)) {
    return Invalid("superset_out / superset_lse alias out / lse");
  }
  if (p.logits == nullptr && p.key_mean == nullptr) {
    return Invalid("key_mean is null (and no logits)");
  }
  if (p.logits != nullptr && p.logit_stride < p.centroid_parts) {
    return Invalid("logit_stride is ", p.logit_stride, " with logits; expected >= centroid_parts");
  }
  if (p.value_shift != nullptr && p.key_spread == nullptr) {
    return Invalid("value_shift is set without key_spread");
  }
  if (p.value_mean == nullptr) return Invalid("value_mean is null");
  if (p.count == nullptr) return Invalid("count is null");
  if (p.out == nullptr) return Invalid("out is null");
  if (p.lse == nullptr) return Invalid("lse is null");
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceEstimation(const EstimationParams& params) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateEstimationShape(params));
  if (params.num_items == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(ValidateItems(params));
  const int64_t rows = static_cast<int64_t>(params.num_items) * params.group_size;
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, rows), [&](const auto& range) {
    for (int64_t r = range.begin(); r < range.end(); ++r) {
      EstimateRow(params, static_cast<int>(r / params.group_size),
                  static_cast<int>(r % params.group_size));
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
