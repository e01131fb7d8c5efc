// Host twin of the page summary kernel (block_summary.cu) and the checks both share.
#include "kernels/block_summary.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace internal {

absl::Status ValidatePageSummaryShape(const PageSummaryParams& p) {
  auto invalid = [](const auto&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("PageSummaryParams: ", parts...));
  };
  if (p.dtype != DType::kBF16 && p.dtype != DType::kFP16) {
    return invalid("dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16");
  }
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) {
    return invalid("head_dim is ", p.head_dim, "; expected 64, 128 or 256");
  }
  if (p.page_size < 1) return invalid("page_size is ", p.page_size, "; expected >= 1");
  if (p.centroid_parts != 1 && p.centroid_parts != kMaxCentroidParts) {
    return invalid("centroid_parts is ", p.centroid_parts, "; expected 1 or 2");
  }
  if (p.num_pages < 0) return invalid("num_pages is ", p.num_pages, "; expected >= 0");
  if (p.num_pages == 0) return absl::OkStatus();
  if (p.k_pages == nullptr) return invalid("k_pages is null");
  if (p.tokens == nullptr) return invalid("tokens is null");
  if (p.bounds == nullptr && p.key_mean == nullptr) {
    return invalid("bounds and key_mean are both null; nothing to write");
  }
  if (p.key_mean == nullptr &&
      (p.value_mean != nullptr || p.count != nullptr || p.key_spread != nullptr)) {
    return invalid("value_mean or count is set without key_mean; a centroid is written whole");
  }
  if (p.centroid_parts == 2 && p.page_size > kMaxSplitPageSize) {
    return invalid("page_size is ", p.page_size, " with centroid_parts 2; expected at most ",
                   kMaxSplitPageSize);
  }
  if (p.centroid_parts == 2 && p.key_mean == nullptr) {
    return invalid("centroid_parts is 2 but key_mean is null; the split is a centroid");
  }
  if (p.value_mean != nullptr && p.v_pages == nullptr) {
    return invalid("v_pages is null but value_mean is requested");
  }
  return absl::OkStatus();
}

}  // namespace internal

namespace {

// The channel sum of the kernels: 32-channel groups, each an xor butterfly (offsets 16, 8, .. 1),
// the groups added in order.
float ChannelSum(const float* values, int dim) {
  float total = 0.0f;
  for (int w = 0; w < dim / 32; ++w) {
    float lanes[32], next[32];
    std::copy(values + 32 * w, values + 32 * w + 32, lanes);
    for (int offset = 16; offset >= 1; offset /= 2) {
      for (int l = 0; l < 32; ++l) next[l] = lanes[l] + lanes[l ^ offset];
      std::copy(next, next + 32, lanes);
    }
    total = w == 0 ? lanes[0] : total + lanes[0];
  }
  return total;
}

// dist(t, c) of the split (block_summary.h): 32-channel groups, each an xor butterfly of the
// squared differences, the groups summed in order.
float SplitDistance(const float* key, const float* centre, int dim) {
  float squares[256];  // D <= 256
  for (int d = 0; d < dim; ++d) {
    const float diff = key[d] - centre[d];
    squares[d] = diff * diff;
  }
  return ChannelSum(squares, dim);
}

// The token farthest from `centre` (lowest on ties; 0 when every distance is NaN).
int Farthest(const std::vector<float>& keys, int tokens, int dim, const float* centre) {
  int best = 0;
  float best_distance = -1.0f;
  for (int t = 0; t < tokens; ++t) {
    const float distance = SplitDistance(keys.data() + static_cast<size_t>(t) * dim, centre, dim);
    if (distance > best_distance) {
      best_distance = distance;
      best = t;
    }
  }
  return best;
}

// Mean of the rows of `part` (token order sums), into centre; returns the count.
int PartMean(const std::vector<float>& rows, const std::vector<int>& part, int which, int tokens,
             int dim, float* centre) {
  int count = 0;
  for (int t = 0; t < tokens; ++t) {
    if (part[t] != which) continue;
    for (int d = 0; d < dim; ++d) {
      const float x = rows[static_cast<size_t>(t) * dim + d];
      centre[d] = count == 0 ? x : centre[d] + x;
    }
    ++count;
  }
  for (int d = 0; d < dim && count > 0; ++d) centre[d] = centre[d] / static_cast<float>(count);
  return count;
}

// Page j's part of every token under the split (0 for every token when tokens < 2).
std::vector<int> SplitParts(const PageSummaryParams& p, int j) {
  const int dim = p.head_dim;
  const int tokens = p.tokens[j];
  std::vector<int> part(tokens, 0);
  if (tokens < 2) return part;
  std::vector<float> keys(static_cast<size_t>(tokens) * dim);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = LoadAsFloat(p.dtype, p.k_pages[j], i);
  std::vector<float> centre(2 * static_cast<size_t>(dim));
  PartMean(keys, part, 0, tokens, dim, centre.data());
  const int a = Farthest(keys, tokens, dim, centre.data());
  // c0 = the farthest key, c1 = the mean of the others: an outlier stays alone, and two
  // groups of keys part along the line between them.
  std::copy_n(keys.data() + static_cast<size_t>(a) * dim, dim, centre.data());
  for (int t = 0; t < tokens; ++t) part[t] = t == a ? 0 : 1;
  PartMean(keys, part, 1, tokens, dim, centre.data() + dim);
  for (int iteration = 0; iteration < kSplitIterations; ++iteration) {
    for (int t = 0; t < tokens; ++t) {
      const float* key = keys.data() + static_cast<size_t>(t) * dim;
      part[t] =
          SplitDistance(key, centre.data() + dim, dim) < SplitDistance(key, centre.data(), dim) ? 1
                                                                                                : 0;
    }
    for (int which = 0; which < 2; ++which) {
      std::vector<float> next(dim);
      if (PartMean(keys, part, which, tokens, dim, next.data()) > 0) {
        std::copy(next.begin(), next.end(), centre.data() + static_cast<size_t>(which) * dim);
      }
    }
  }
  return part;
}

}  // namespace

absl::Status ReferencePageSummaries(const PageSummaryParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageSummaryShape(p));
  for (int j = 0; j < p.num_pages; ++j) {
    auto invalid = [&](const char* field) {
      return absl::InvalidArgumentError(
          absl::StrCat("PageSummaryParams: ", field, "[", j, "] is null"));
    };
    if (p.tokens[j] < 0 || p.tokens[j] > p.page_size) {
      return absl::InvalidArgumentError(absl::StrCat("PageSummaryParams: tokens[", j, "] is ",
                                                     p.tokens[j], "; expected in [0, ", p.page_size,
                                                     "] (page_size)"));
    }
    if (p.k_pages[j] == nullptr) return invalid("k_pages");
    if (p.bounds != nullptr && p.bounds[j] == nullptr) return invalid("bounds");
    if (p.key_mean != nullptr && p.key_mean[j] == nullptr) return invalid("key_mean");
    if (p.value_mean != nullptr && p.value_mean[j] == nullptr) return invalid("value_mean");
    if (p.value_mean != nullptr && p.v_pages[j] == nullptr) return invalid("v_pages");
    if (p.count != nullptr && p.count[j] == nullptr) return invalid("count");
    if (p.key_spread != nullptr && p.key_spread[j] == nullptr) return invalid("key_spread");
  }
  const int dim = p.head_dim;
  const float inf = std::numeric_limits<float>::infinity();
  tbb::parallel_for(0, p.num_pages, [&](int j) {
    const int tokens = p.tokens[j];
    const std::vector<int> part =
        p.centroid_parts == 2 ? SplitParts(p, j) : std::vector<int>(tokens, 0);
    const int parts = p.centroid_parts;
    std::vector<float> variance(p.key_spread != nullptr ? parts * dim : 0);  // [parts, D]
    for (int d = 0; d < dim; ++d) {
      float max = -inf, min = inf;
      float key_sum[kMaxCentroidParts] = {}, value_sum[kMaxCentroidParts] = {};
      int count[kMaxCentroidParts] = {};
      for (int t = 0; t < tokens; ++t) {
        const float k = LoadAsFloat(p.dtype, p.k_pages[j], static_cast<size_t>(t) * dim + d);
        // Once NaN, a bound stays NaN: both comparisons are false for a NaN bound.
        if (k > max || std::isnan(k)) max = std::isnan(max) ? max : k;
        if (k < min || std::isnan(k)) min = std::isnan(min) ? min : k;
        const int which = part[t];
        key_sum[which] = count[which] == 0 ? k : key_sum[which] + k;
        if (p.value_mean != nullptr) {
          const float v = LoadAsFloat(p.dtype, p.v_pages[j], static_cast<size_t>(t) * dim + d);
          value_sum[which] = count[which] == 0 ? v : value_sum[which] + v;
        }
        ++count[which];
      }
      if (p.bounds != nullptr) {
        StoreFromFloat(p.dtype, max, p.bounds[j], d);
        StoreFromFloat(p.dtype, min, p.bounds[j], dim + d);
      }
      for (int which = 0; which < parts; ++which) {
        const size_t at = static_cast<size_t>(which) * dim + d;
        if (p.key_mean != nullptr) {
          const float mean =
              count[which] == 0 ? 0.0f : key_sum[which] / static_cast<float>(count[which]);
          StoreFromFloat(p.dtype, mean, p.key_mean[j], at);
        }
        if (p.value_mean != nullptr) {
          const float mean =
              count[which] == 0 ? 0.0f : value_sum[which] / static_cast<float>(count[which]);
          StoreFromFloat(p.dtype, mean, p.value_mean[j], at);
        }
        if (p.count != nullptr && d == 0) p.count[j][which] = count[which];
      }
      if (p.key_spread != nullptr) {
        float mean[kMaxCentroidParts], square_sum[kMaxCentroidParts] = {};
        int seen[kMaxCentroidParts] = {};
        for (int which = 0; which < parts; ++which) {
          mean[which] =
              count[which] == 0 ? 0.0f : key_sum[which] / static_cast<float>(count[which]);
        }
        for (int t = 0; t < tokens; ++t) {
          const int which = part[t];
          const float k = LoadAsFloat(p.dtype, p.k_pages[j], static_cast<size_t>(t) * dim + d);
          const float deviation = k - mean[which];
          const float square = deviation * deviation;
          square_sum[which] = seen[which] == 0 ? square : square_sum[which] + square;
          ++seen[which];
        }
        for (int which = 0; which < parts; ++which) {
          variance[which * dim + d] =
              count[which] == 0 ? 0.0f : square_sum[which] / static_cast<float>(count[which]);
        }
      }
    }
    if (p.key_spread != nullptr) {
      for (int which = 0; which < parts; ++which) {
        p.key_spread[j][which] =
            ChannelSum(variance.data() + which * dim, dim) / static_cast<float>(dim);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
