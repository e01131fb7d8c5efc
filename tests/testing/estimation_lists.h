// A random batch for estimation (kernels/estimation.h), shared by the host tests (twin against
// a plain computation) and the GPU tests (kernel against the twin; a device copy in
// estimation_lists_gpu.h) of the list modes, the exclusion and the split centroid. Per item:
// `clusters` summaries of `parts` centroids each (mean keys and queries never near zero, value
// sums random, counts random in [-2, 50] with some 0 and negative), a list of `count` ids
// (repeats allowed) in a row of `stride` slots whose unused slots hold -1, the same lists in
// offsets addressing too, and optionally an ascending exclusion list of `excluded` ids, most of
// them listed ones, in a row of `exclude_stride` slots whose unused slots hold listed ids (so
// that reading past the count would change the result). Host memory; summaries at offsets of
// shared arrays so that a device copy can use the same offsets. Header-only; no CUDA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/estimation.h"

namespace kvtier::testing_util {

struct EstimationItemSpec {
  int clusters = 0;  // summaries of the item (each of `parts` centroids)
  int count = 0;     // ids listed, <= the batch's stride
  int excluded = 0;  // ids excluded (with exclusion), <= the batch's exclude_stride
  // With two parts and at least two clusters: cluster 0 holds tokens in part 1 only (counts 0
  // and 7), cluster 1 in part 0 only (9 and 0), and with count >= 2 both are listed (the list
  // shuffled).
  bool one_sided_parts = false;
};

// How a call addresses the lists (EstimationParams): fixed-stride rows with counts, or offsets
// into one concatenated list.
enum class ListAddressing { kStride, kOffsets };

// " stride" or " offsets", for failure messages.
inline const char* ListAddressingName(ListAddressing addressing) {
  return addressing == ListAddressing::kStride ? " stride" : " offsets";
}

class EstimationLists {
 public:
  // With `exclude_stride` 0 there is no exclusion.
  EstimationLists(DType dtype, int dim, int group, int parts, int32_t stride,
                  int32_t exclude_stride, const std::vector<EstimationItemSpec>& items,
                  uint64_t seed)
      : dtype_(dtype),
        dim_(dim),
        group_(group),
        parts_(parts),
        stride_(stride),
        exclude_stride_(exclude_stride),
        items_(static_cast<int>(items.size())) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    auto nonzero = [&](float mean) {
      for (;;) {
        const uint16_t b = dtype == DType::kBF16 ? FloatToBF16(mean + normal(rng))
                                                 : FloatToFP16(mean + normal(rng));
        if (std::abs(Value(b)) >= 1e-2f) return b;
      }
    };
    q_.resize(static_cast<size_t>(items_) * group * dim);
    for (uint16_t& x : q_) x = nonzero(0.1f);
    ids_.assign(static_cast<size_t>(items_) * stride, -1);
    list_count_.assign(static_cast<size_t>(items_), 0);
    if (exclude_stride > 0) {
      exclude_.assign(static_cast<size_t>(items_) * exclude_stride, -1);
      exclude_count_.assign(static_cast<size_t>(items_), 0);
    }
    std::uniform_int_distribution<int> count(-2, 50);
    for (int i = 0; i < items_; ++i) {
      const EstimationItemSpec& spec = items[static_cast<size_t>(i)];
      key_at_.push_back(keys_.size());
      mean_at_.push_back(means_.size());
      count_at_.push_back(counts_.size());
      for (int c = 0; c < spec.clusters * parts; ++c) {
        const int n = count(rng);  // -2 .. 50: a few negative, a few 0
        counts_.push_back(n);
        for (int d = 0; d < dim; ++d) {
          keys_.push_back(nonzero(0.2f));
          means_.push_back(nonzero(0.5f));
        }
      }
      const bool one_sided = spec.one_sided_parts && parts == 2 && spec.clusters >= 2;
      if (one_sided) {
        int32_t* n = counts_.data() + count_at_.back();
        n[0] = 0;  // cluster 0: only part 1 holds tokens
        n[1] = 7;
        n[2] = 9;  // cluster 1: only part 0
        n[3] = 0;
      }
      list_count_[i] = spec.count;
      std::uniform_int_distribution<int32_t> pick(0, std::max(0, spec.clusters - 1));
      int32_t* list = ids_.data() + static_cast<size_t>(i) * stride;
      for (int j = 0; j < spec.count; ++j) list[j] = one_sided && j < 2 ? j : pick(rng);
      if (one_sided) std::shuffle(list, list + spec.count, rng);
      if (exclude_stride == 0) continue;
      // Mostly listed ids, some ids of the item's clusters that may not be listed, and ids
      // beyond its clusters (excluding what is never listed changes nothing).
      std::set<int32_t> excluded;
      std::uniform_int_distribution<int32_t> beyond(spec.clusters, spec.clusters + 100);
      for (int guard = 0; static_cast<int>(excluded.size()) < spec.excluded && guard < 100000;
           ++guard) {
        const uint64_t kind = rng() % 4;
        if (kind < 2 && spec.count > 0) {
          excluded.insert(list[rng() % static_cast<uint64_t>(spec.count)]);
        } else if (kind == 2 && spec.clusters > 0) {
          excluded.insert(pick(rng));
        } else {
          excluded.insert(beyond(rng));
        }
      }
      exclude_count_[i] = static_cast<int32_t>(excluded.size());
      int32_t* row = exclude_.data() + static_cast<size_t>(i) * exclude_stride;
      std::copy(excluded.begin(), excluded.end(), row);
      // Past the count: listed ids (a reader that went past the count would exclude them).
      for (int32_t j = exclude_count_[i]; j < exclude_stride; ++j) {
        row[j] = spec.count > 0 ? list[rng() % static_cast<uint64_t>(spec.count)] : 0;
      }
    }
    offsets_ = {0};
    for (int i = 0; i < items_; ++i) {
      key_ptr_.push_back(keys_.data() + key_at_[i]);
      mean_ptr_.push_back(means_.data() + mean_at_[i]);
      count_ptr_.push_back(counts_.data() + count_at_[i]);
      const int32_t* list = ids_.data() + static_cast<size_t>(i) * stride;
      flat_.insert(flat_.end(), list, list + list_count_[i]);
      offsets_.push_back(static_cast<int32_t>(flat_.size()));
    }
  }

  // A batch with the strides that fit every item: the longest list and the longest exclusion
  // (at least 1 each; every item has an exclusion list).
  EstimationLists(DType dtype, int dim, int group, int parts,
                  const std::vector<EstimationItemSpec>& items, uint64_t seed)
      : EstimationLists(dtype, dim, group, parts, LongestCount(items, &EstimationItemSpec::count),
                        LongestCount(items, &EstimationItemSpec::excluded), items, seed) {}

  // Adds key spreads (EstimationParams::key_spread, one a centroid): positive, of the size
  // trained keys' spreads have, so that the correction moves logits by up to a few nats.
  void AddSpread(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> variance(0.0f, 0.6f);
    spreads_.resize(counts_.size());
    for (float& x : spreads_) x = variance(rng);
    spread_ptr_.clear();
    for (int i = 0; i < items_; ++i) spread_ptr_.push_back(spreads_.data() + count_at_[i]);
  }

  // Adds value shifts (EstimationParams::value_shift, one a query row): normal, about a mean
  // value's size, so that m + s shift differs from m in every channel. Needs AddSpread.
  void AddValueShift(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    shifts_.resize(rows() * dim_);
    for (float& x : shifts_) x = normal(rng);
  }

  // Passes precomputed logits (EstimationParams::logits) instead of the mean keys, which
  // Params() then leaves null: random ones in [-8, 8] that have nothing to do with q and the
  // keys, so that a reader that computed q.c instead would show. Each item's rows are
  // logit_stride() wide (its clusters' centroids, then padding the reader must not touch).
  void AddLogits(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> logit(-8.0f, 8.0f);
    int widest = 1;
    for (int i = 0; i < items_; ++i) {
      const size_t end = i + 1 < items_ ? count_at_[i + 1] : counts_.size();
      widest = std::max(widest, static_cast<int>(end - count_at_[i]));
    }
    logit_stride_ = widest + 3;
    logits_.assign(static_cast<size_t>(items_) * group_ * logit_stride_,
                   std::numeric_limits<float>::quiet_NaN());
    for (int i = 0; i < items_; ++i) {
      const size_t end = i + 1 < items_ ? count_at_[i + 1] : counts_.size();
      for (int g = 0; g < group_; ++g) {
        float* row = logits_.data() + (static_cast<size_t>(i) * group_ + g) * logit_stride_;
        for (size_t c = 0; c < end - count_at_[i]; ++c) row[c] = logit(rng);
      }
    }
  }

  EstimationLists(const EstimationLists&) = delete;  // Params() points into the arrays
  EstimationLists& operator=(const EstimationLists&) = delete;

  size_t rows() const { return static_cast<size_t>(items_) * group_; }
  int num_items() const { return items_; }
  int dim() const { return dim_; }
  int parts() const { return parts_; }

  // Parameters over the host arrays, writing to `out` [rows, D] and `lse` [rows]: the lists in
  // `addressing` (kOffsets: the lists as constructed), the exclusion lists when the batch has
  // them and `exclusion` is true.
  EstimationParams Params(float* out, float* lse,
                          ListAddressing addressing = ListAddressing::kStride,
                          bool exclusion = true) const {
    EstimationParams p;
    p.dtype = dtype_;
    p.head_dim = dim_;
    p.group_size = group_;
    p.softmax_scale = softmax_scale();
    p.num_items = items_;
    p.centroid_parts = parts_;
    p.q = q_.data();
    if (addressing == ListAddressing::kStride) {
      p.cluster_ids = ids_.data();
      p.list_count = list_count_.data();
      p.list_stride = stride_;
    } else {
      p.cluster_ids = flat_.data();
      p.cluster_offsets = offsets_.data();
    }
    if (exclude_stride_ > 0 && exclusion) {
      p.exclude_ids = exclude_.data();
      p.exclude_count = exclude_count_.data();
      p.exclude_stride = exclude_stride_;
    }
    p.key_mean = logits_.empty() ? key_ptr_.data() : nullptr;
    if (!logits_.empty()) {
      p.logits = logits_.data();
      p.logit_stride = logit_stride_;
    }
    p.value_mean = mean_ptr_.data();
    p.count = count_ptr_.data();
    if (!spreads_.empty()) p.key_spread = spread_ptr_.data();
    if (!shifts_.empty()) p.value_shift = shifts_.data();
    p.out = out;
    p.lse = lse;
    return p;
  }

  // Item i's listed ids in list order (repeats kept), without the excluded ones when the batch
  // has an exclusion list and `exclusion` is true (searched linearly).
  std::vector<int32_t> Kept(int i, bool exclusion = true) const {
    const int32_t* list = ids_.data() + static_cast<size_t>(i) * stride_;
    const int32_t* ex =
        exclude_stride_ > 0 ? exclude_.data() + static_cast<size_t>(i) * exclude_stride_ : nullptr;
    const int32_t num_ex = exclude_stride_ > 0 && exclusion ? exclude_count_[i] : 0;
    std::vector<int32_t> kept;
    for (int32_t j = 0; j < list_count_[i]; ++j) {
      if (std::find(ex, ex + num_ex, list[j]) == ex + num_ex) kept.push_back(list[j]);
    }
    return kept;
  }

  // The header's definition, computed directly in double: for each query row, over the listed
  // ids j (repeats counted) not in the exclusion list (Kept(i, exclusion)) and each part of
  // cluster j with count n > 0, at centroid c = j * parts + part with logit l = scale q.c:
  // denominator += n e^l, numerator += n e^l * value_mean; out = numerator / denominator,
  // lse = log(denominator); 0 and -inf without contributions. Sums are taken relative to the
  // largest logit (the same quotient, without overflow). With spreads, l += kSpreadWeight *
  // scale^2 / 2 * |q|^2 * spread_c.
  void Plain(std::vector<float>* out, std::vector<float>* lse, bool exclusion = true) const {
    out->assign(rows() * dim_, std::numeric_limits<float>::quiet_NaN());
    lse->assign(rows(), std::numeric_limits<float>::quiet_NaN());
    const double scale = softmax_scale();
    for (int i = 0; i < items_; ++i) {
      const std::vector<int32_t> kept = Kept(i, exclusion);
      for (int g = 0; g < group_; ++g) {
        const size_t row = static_cast<size_t>(i) * group_ + g;
        std::vector<double> logit;
        std::vector<size_t> centroid;
        for (int32_t id : kept) {
          for (int part = 0; part < parts_; ++part) {
            const size_t c = static_cast<size_t>(id) * parts_ + part;
            if (counts_[count_at_[i] + c] <= 0) continue;
            double dot = 0, q_square = 0;
            for (int d = 0; d < dim_; ++d) {
              const double qd = Value(q_[row * dim_ + d]);
              dot += qd * Value(keys_[key_at_[i] + c * dim_ + d]);
              q_square += qd * qd;
            }
            const double scaled_dot =
                logits_.empty() ? scale * dot : logits_[row * logit_stride_ + c];
            const double spread = spreads_.empty() ? 0.0 : q_square * spreads_[count_at_[i] + c];
            logit.push_back(scaled_dot + kSpreadWeight * scale * scale / 2 * spread);
            centroid.push_back(c);
          }
        }
        float* o = out->data() + row * dim_;
        if (logit.empty()) {
          std::fill(o, o + dim_, 0.0f);
          (*lse)[row] = -std::numeric_limits<float>::infinity();
          continue;
        }
        const double top = *std::max_element(logit.begin(), logit.end());
        double denominator = 0;
        std::vector<double> numerator(static_cast<size_t>(dim_), 0.0);
        for (size_t k = 0; k < logit.size(); ++k) {
          const double e = std::exp(logit[k] - top);
          denominator += counts_[count_at_[i] + centroid[k]] * e;
          for (int d = 0; d < dim_; ++d) {
            numerator[d] += counts_[count_at_[i] + centroid[k]] * e *
                            Value(means_[mean_at_[i] + centroid[k] * dim_ + d]);
          }
        }
        for (int d = 0; d < dim_; ++d) o[d] = static_cast<float>(numerator[d] / denominator);
        (*lse)[row] = static_cast<float>(top + std::log(denominator));
      }
    }
  }

  float softmax_scale() const { return 1.0f / std::sqrt(static_cast<float>(dim_)); }
  float Value(uint16_t b) const { return dtype_ == DType::kBF16 ? BF16ToFloat(b) : FP16ToFloat(b); }

  // The arrays, for device copies (offsets of item i's summaries: key_at()[i] etc.).
  const std::vector<uint16_t>& q() const { return q_; }
  const std::vector<uint16_t>& keys() const { return keys_; }
  const std::vector<float>& spreads() const { return spreads_; }  // empty: no spread
  const std::vector<float>& shifts() const { return shifts_; }
  const std::vector<float>& logits() const { return logits_; }  // empty: from the keys
  int64_t logit_stride() const { return logit_stride_; }
  const std::vector<uint16_t>& means() const { return means_; }  // mean values, of dtype
  std::vector<uint16_t>& mutable_means() { return means_; }      // e.g. to plant a NaN
  const std::vector<int32_t>& counts() const { return counts_; }
  std::vector<int32_t>& ids() { return ids_; }
  const std::vector<int32_t>& ids() const { return ids_; }
  std::vector<int32_t>& list_count() { return list_count_; }
  const std::vector<int32_t>& list_count() const { return list_count_; }
  std::vector<int32_t>& exclude() { return exclude_; }
  const std::vector<int32_t>& exclude() const { return exclude_; }
  std::vector<int32_t>& exclude_count() { return exclude_count_; }
  const std::vector<int32_t>& exclude_count() const { return exclude_count_; }
  const std::vector<int32_t>& flat() const { return flat_; }        // kOffsets: the ids
  const std::vector<int32_t>& offsets() const { return offsets_; }  // kOffsets: [items + 1]
  const std::vector<size_t>& key_at() const { return key_at_; }
  const std::vector<size_t>& mean_at() const { return mean_at_; }
  const std::vector<size_t>& count_at() const { return count_at_; }

 private:
  static int32_t LongestCount(const std::vector<EstimationItemSpec>& items,
                              int EstimationItemSpec::*field) {
    int32_t longest = 1;
    for (const EstimationItemSpec& spec : items) longest = std::max(longest, spec.*field);
    return longest;
  }

  DType dtype_;
  int dim_, group_, parts_;
  int32_t stride_, exclude_stride_;
  int items_;
  std::vector<uint16_t> q_, keys_;
  std::vector<float> spreads_;
  std::vector<float> shifts_;  // AddValueShift: [rows, D]
  std::vector<float> logits_;  // AddLogits: [items, G, logit_stride_]
  int64_t logit_stride_ = 0;
  std::vector<uint16_t> means_;
  std::vector<int32_t> counts_, ids_, list_count_, exclude_, exclude_count_, flat_, offsets_;
  std::vector<size_t> key_at_, mean_at_, count_at_;
  std::vector<const void*> key_ptr_;
  std::vector<const float*> spread_ptr_;
  std::vector<const void*> mean_ptr_;
  std::vector<const int32_t*> count_ptr_;
};

}  // namespace kvtier::testing_util
