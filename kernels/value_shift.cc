// Host twins of the value-shift kernels (value_shift.cu) and the checks both share.
#include "kernels/value_shift.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace {

template <typename... Parts>
absl::Status Invalid(const char* what, const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", parts...));
}

bool SupportedDim(int d) { return d == 64 || d == 128 || d == 256; }
bool SupportedDType(DType t) { return t == DType::kBF16 || t == DType::kFP16; }

// The part distance of value_shift.h: 16 strided partial sums of (k - c)^2, then an xor
// butterfly over them (offsets 8, 4, 2, 1), as the kernel's half-warp sums it.
float PartDistance(const float* key, const float* centre, int dim) {
  float lanes[16] = {};
  for (int l = 0; l < 16; ++l) {
    for (int d = l; d < dim; d += 16) {
      const float diff = key[d] - centre[d];
      const float square = diff * diff;
      lanes[l] = lanes[l] + square;
    }
  }
  for (int offset = 8; offset >= 1; offset /= 2) {
    float next[16];
    for (int l = 0; l < 16; ++l) next[l] = lanes[l] + lanes[l ^ offset];
    for (int l = 0; l < 16; ++l) lanes[l] = next[l];
  }
  return lanes[0];
}

// Page j's sums, added to its item's statistics.
void AddPage(const ValueKeyCovarianceParams& p, int j) {
  const int dim = p.head_dim;
  const int parts = p.centroid_parts;
  std::vector<float> key_mean(static_cast<size_t>(parts) * dim);
  std::vector<float> value_mean(key_mean.size());
  for (size_t i = 0; i < key_mean.size(); ++i) {
    key_mean[i] = LoadAsFloat(p.dtype, p.key_mean[j], i);
    value_mean[i] = LoadAsFloat(p.dtype, p.value_mean[j], i);
  }
  const bool two = parts == 2 && p.count[j][1] > 0;
  std::vector<double> cross(static_cast<size_t>(dim) * dim, 0.0);
  double key_square = 0.0;
  std::vector<float> key(dim), dk(dim), dv(dim);
  for (int t = 0; t < p.page_size; ++t) {
    for (int d = 0; d < dim; ++d) key[d] = LoadAsFloat(p.dtype, p.k_pages[j], size_t(t) * dim + d);
    int part = 0;
    if (two && PartDistance(key.data(), key_mean.data() + dim, dim) <
                   PartDistance(key.data(), key_mean.data(), dim)) {
      part = 1;
    }
    for (int d = 0; d < dim; ++d) {
      dk[d] = key[d] - key_mean[size_t(part) * dim + d];
      dv[d] = LoadAsFloat(p.dtype, p.v_pages[j], size_t(t) * dim + d) -
              value_mean[size_t(part) * dim + d];
      key_square += double{dk[d]} * dk[d];
    }
    for (int r = 0; r < dim; ++r) {
      for (int c = 0; c < dim; ++c) cross[size_t(r) * dim + c] += double{dv[r]} * dk[c];
    }
  }
  float* stats = p.stats[j];
  for (size_t i = 0; i < cross.size(); ++i) stats[i] += static_cast<float>(cross[i]);
  stats[cross.size()] += static_cast<float>(key_square);
  stats[cross.size() + 1] += static_cast<float>(p.page_size);
}

}  // namespace

namespace internal {

absl::Status ValidateValueKeyCovarianceShape(const ValueKeyCovarianceParams& p) {
  constexpr const char* kName = "ValueKeyCovarianceParams";
  if (!SupportedDType(p.dtype)) {
    return Invalid(kName, "dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16");
  }
  if (!SupportedDim(p.head_dim)) {
    return Invalid(kName, "head_dim is ", p.head_dim, "; expected 64, 128 or 256");
  }
  if (p.page_size < 1) return Invalid(kName, "page_size is ", p.page_size, "; expected >= 1");
  if (p.centroid_parts != 1 && p.centroid_parts != 2) {
    return Invalid(kName, "centroid_parts is ", p.centroid_parts, "; expected 1 or 2");
  }
  if (p.item_stride < 1) {
    return Invalid(kName, "item_stride is ", p.item_stride, "; expected >= 1");
  }
  if (p.num_pages < 0) return Invalid(kName, "num_pages is ", p.num_pages, "; expected >= 0");
  if (p.num_pages == 0) return absl::OkStatus();
  const void* arrays[] = {p.k_pages,    p.v_pages, p.tokens, p.key_mean,
                          p.value_mean, p.count,   p.stats};
  const char* names[] = {"k_pages",    "v_pages", "tokens", "key_mean",
                         "value_mean", "count",   "stats"};
  for (int a = 0; a < 7; ++a) {
    if (arrays[a] == nullptr) return Invalid(kName, names[a], " is null");
  }
  return absl::OkStatus();
}

absl::Status ValidateValueShiftShape(const ValueShiftParams& p) {
  constexpr const char* kName = "ValueShiftParams";
  if (!SupportedDType(p.dtype)) {
    return Invalid(kName, "dtype is ", DTypeName(p.dtype), "; expected bf16 or fp16");
  }
  if (!SupportedDim(p.head_dim)) {
    return Invalid(kName, "head_dim is ", p.head_dim, "; expected 64, 128 or 256");
  }
  if (p.group_size < 1) return Invalid(kName, "group_size is ", p.group_size, "; expected >= 1");
  if (!std::isfinite(p.softmax_scale)) {
    return Invalid(kName, "softmax_scale is ", p.softmax_scale, "; expected finite");
  }
  if (p.num_items < 0) return Invalid(kName, "num_items is ", p.num_items, "; expected >= 0");
  if (p.num_items == 0) return absl::OkStatus();
  if (p.q == nullptr) return Invalid(kName, "q is null");
  if (p.stats == nullptr) return Invalid(kName, "stats is null");
  if (p.shift == nullptr) return Invalid(kName, "shift is null");
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceValueKeyCovariance(const ValueKeyCovarianceParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateValueKeyCovarianceShape(p));
  for (int j = 0; j < p.num_pages; ++j) {
    if (p.tokens[j] != p.page_size || p.stats[j] == nullptr) continue;
    if (p.k_pages[j] == nullptr || p.v_pages[j] == nullptr || p.key_mean[j] == nullptr ||
        p.value_mean[j] == nullptr || p.count[j] == nullptr) {
      return Invalid("ValueKeyCovarianceParams", "entry ", j,
                     " is a complete page with a null page or summary pointer");
    }
  }
  // Pages of one item add into the same statistics: items in parallel would race, pages are
  // added one after another (the sums inside a page are the work).
  for (int j = 0; j < p.num_pages; ++j) {
    if (p.tokens[j] == p.page_size && p.stats[j] != nullptr) AddPage(p, j);
  }
  return absl::OkStatus();
}

absl::Status ReferenceValueShift(const ValueShiftParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateValueShiftShape(p));
  const int dim = p.head_dim;
  tbb::parallel_for(0, p.num_items * p.group_size, [&](int row) {
    float* shift = p.shift + int64_t{row} * dim;
    const float* stats = p.stats[row / p.group_size];
    const double key_square = stats != nullptr ? stats[int64_t{dim} * dim] : 0.0;
    if (!(key_square > 0.0) && !std::isnan(key_square)) {
      for (int d = 0; d < dim; ++d) shift[d] = 0.0f;
      return;
    }
    const double factor = double{p.softmax_scale} * dim / key_square;
    std::vector<double> q(dim);
    for (int d = 0; d < dim; ++d) q[d] = LoadAsFloat(p.dtype, p.q, int64_t{row} * dim + d);
    for (int r = 0; r < dim; ++r) {
      double dot = 0.0;
      for (int c = 0; c < dim; ++c) dot += double{stats[int64_t{r} * dim + c]} * q[c];
      shift[r] = static_cast<float>(factor * dot);
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
