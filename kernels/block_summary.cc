// Host twin of the page summary kernel (block_summary.cu) and the checks both share.
#include "kernels/block_summary.h"

#include <cmath>
#include <cstdint>
#include <limits>

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
  if (p.num_pages < 0) return invalid("num_pages is ", p.num_pages, "; expected >= 0");
  if (p.num_pages == 0) return absl::OkStatus();
  if (p.k_pages == nullptr) return invalid("k_pages is null");
  if (p.tokens == nullptr) return invalid("tokens is null");
  if (p.bounds == nullptr && p.key_mean == nullptr) {
    return invalid("bounds and key_mean are both null; nothing to write");
  }
  if (p.key_mean == nullptr && (p.value_sum != nullptr || p.count != nullptr)) {
    return invalid("value_sum or count is set without key_mean; a centroid is written whole");
  }
  if (p.value_sum != nullptr && p.v_pages == nullptr) {
    return invalid("v_pages is null but value_sum is requested");
  }
  return absl::OkStatus();
}

}  // namespace internal

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
    if (p.value_sum != nullptr && p.value_sum[j] == nullptr) return invalid("value_sum");
    if (p.value_sum != nullptr && p.v_pages[j] == nullptr) return invalid("v_pages");
    if (p.count != nullptr && p.count[j] == nullptr) return invalid("count");
  }
  const int dim = p.head_dim;
  const float inf = std::numeric_limits<float>::infinity();
  tbb::parallel_for(0, p.num_pages, [&](int j) {
    const int tokens = p.tokens[j];
    for (int d = 0; d < dim; ++d) {
      float max = -inf, min = inf, key_sum = 0.0f, value_sum = 0.0f;
      for (int t = 0; t < tokens; ++t) {
        const float k = LoadAsFloat(p.dtype, p.k_pages[j], static_cast<size_t>(t) * dim + d);
        // Once NaN, a bound stays NaN: both comparisons are false for a NaN bound.
        if (k > max || std::isnan(k)) max = std::isnan(max) ? max : k;
        if (k < min || std::isnan(k)) min = std::isnan(min) ? min : k;
        key_sum = t == 0 ? k : key_sum + k;
        if (p.value_sum != nullptr) {
          const float v = LoadAsFloat(p.dtype, p.v_pages[j], static_cast<size_t>(t) * dim + d);
          value_sum = t == 0 ? v : value_sum + v;
        }
      }
      if (p.bounds != nullptr) {
        StoreFromFloat(p.dtype, max, p.bounds[j], d);
        StoreFromFloat(p.dtype, min, p.bounds[j], dim + d);
      }
      if (p.key_mean != nullptr) {
        const float mean = tokens == 0 ? 0.0f : key_sum / static_cast<float>(tokens);
        StoreFromFloat(p.dtype, mean, p.key_mean[j], d);
      }
      if (p.value_sum != nullptr) p.value_sum[j][d] = value_sum;
    }
    if (p.count != nullptr) *p.count[j] = tokens;
  });
  return absl::OkStatus();
}

}  // namespace kvtier
