// Random batches for the value-shift kernels (kernels/value_shift.h), shared by the host and
// GPU tests: items of pages whose keys form two groups (so that the split has two parts), the
// pages' split summaries from the page-summary twin, and a statistics block per item.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/base/dtype.h"
#include "kernels/block_summary.h"
#include "kernels/value_shift.h"

namespace kvtier::testing_util {

class ValueShiftPages {
 public:
  // `items` items of `pages_per_item` pages each, listed page after page of every item (entry
  // e * items + i: page e of item i, as prefill lists them: item_stride = items); a page is
  // complete unless `partial` picks it (then 1..P-1 tokens).
  ValueShiftPages(DType dtype, int dim, int page_size, int items, int pages_per_item,
                  double partial, uint64_t seed)
      : dtype_(dtype), dim_(dim), page_size_(page_size), items_(items) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    const int pages = items * pages_per_item;
    const size_t page_elements = static_cast<size_t>(page_size) * dim;
    keys_.resize(pages * page_elements);
    values_.resize(keys_.size());
    std::vector<float> centre(2 * static_cast<size_t>(dim));
    for (int j = 0; j < pages; ++j) {
      for (float& c : centre) c = normal(rng);
      for (int t = 0; t < page_size; ++t) {
        const int group = static_cast<int>(rng() % 2);
        const float a = normal(rng);  // a shared factor couples keys and values
        for (int d = 0; d < dim; ++d) {
          const size_t at = j * page_elements + static_cast<size_t>(t) * dim + d;
          const float key = centre[group * dim + d] + 0.4f * a * (d % 3 == 0) + 0.3f * normal(rng);
          const float value = 0.5f * a * (d % 5 == 1) + 0.5f * normal(rng);
          keys_[at] = Round(key);
          values_[at] = Round(value);
        }
      }
      tokens_.push_back(Uniform(rng) < partial ? 1 + static_cast<int32_t>(rng() % (page_size - 1))
                                               : page_size);
    }
    key_mean_.resize(static_cast<size_t>(pages) * 2 * dim);
    value_mean_.resize(key_mean_.size());
    count_.resize(static_cast<size_t>(pages) * 2);
    spread_.resize(count_.size());
    stats_.assign(static_cast<size_t>(items) * ValueKeyStatsFloats(dim), 0.0f);
    for (int j = 0; j < pages; ++j) {
      k_ptr_.push_back(keys_.data() + j * page_elements);
      v_ptr_.push_back(values_.data() + j * page_elements);
      key_mean_ptr_.push_back(key_mean_.data() + static_cast<size_t>(j) * 2 * dim);
      value_mean_ptr_.push_back(value_mean_.data() + static_cast<size_t>(j) * 2 * dim);
      count_ptr_.push_back(count_.data() + static_cast<size_t>(j) * 2);
      spread_ptr_.push_back(spread_.data() + static_cast<size_t>(j) * 2);
      stats_ptr_.push_back(stats_.data() + (j % items) * ValueKeyStatsFloats(dim));
    }
  }

  ValueShiftPages(const ValueShiftPages&) = delete;  // the parameters point into the arrays
  ValueShiftPages& operator=(const ValueShiftPages&) = delete;

  // The page-summary twin's split summaries of every page.
  PageSummaryParams Summaries() {
    PageSummaryParams p;
    p.dtype = dtype_;
    p.head_dim = dim_;
    p.page_size = page_size_;
    p.num_pages = num_pages();
    p.centroid_parts = 2;
    p.k_pages = k_ptr_.data();
    p.v_pages = v_ptr_.data();
    p.tokens = tokens_.data();
    p.key_mean = reinterpret_cast<void* const*>(key_mean_ptr_.data());
    p.value_mean = reinterpret_cast<void* const*>(value_mean_ptr_.data());
    p.count = count_ptr_.data();
    p.key_spread = spread_ptr_.data();
    return p;
  }

  ValueKeyCovarianceParams Covariance() {
    ValueKeyCovarianceParams p;
    p.dtype = dtype_;
    p.head_dim = dim_;
    p.page_size = page_size_;
    p.num_pages = num_pages();
    p.centroid_parts = 2;
    p.item_stride = items_;
    p.k_pages = k_ptr_.data();
    p.v_pages = v_ptr_.data();
    p.tokens = tokens_.data();
    p.key_mean = reinterpret_cast<const void* const*>(key_mean_ptr_.data());
    p.value_mean = reinterpret_cast<const void* const*>(value_mean_ptr_.data());
    p.count = reinterpret_cast<const int32_t* const*>(count_ptr_.data());
    p.stats = stats_ptr_.data();
    return p;
  }

  int num_pages() const { return static_cast<int>(tokens_.size()); }
  int items() const { return items_; }
  DType dtype() const { return dtype_; }
  int dim() const { return dim_; }
  int page_size() const { return page_size_; }
  const std::vector<uint16_t>& keys() const { return keys_; }
  const std::vector<uint16_t>& values() const { return values_; }
  const std::vector<uint16_t>& key_mean() const { return key_mean_; }
  const std::vector<uint16_t>& value_mean() const { return value_mean_; }
  const std::vector<int32_t>& count() const { return count_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  std::vector<int32_t>& mutable_tokens() { return tokens_; }
  std::vector<float>& stats() { return stats_; }
  float Key(int page, int t, int d) const { return At(keys_, page, t, d); }
  float Value(int page, int t, int d) const { return At(values_, page, t, d); }

 private:
  static double Uniform(std::mt19937_64& rng) {
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  }
  uint16_t Round(float x) const { return dtype_ == DType::kBF16 ? FloatToBF16(x) : FloatToFP16(x); }
  float At(const std::vector<uint16_t>& a, int page, int t, int d) const {
    return LoadAsFloat(dtype_, a.data(), (static_cast<size_t>(page) * page_size_ + t) * dim_ + d);
  }

  DType dtype_;
  int dim_, page_size_, items_;
  std::vector<uint16_t> keys_, values_, key_mean_, value_mean_;
  std::vector<int32_t> count_, tokens_;
  std::vector<float> spread_, stats_;
  std::vector<const void*> k_ptr_, v_ptr_;
  std::vector<uint16_t*> key_mean_ptr_, value_mean_ptr_;
  std::vector<int32_t*> count_ptr_;
  std::vector<float*> spread_ptr_, stats_ptr_;
};

}  // namespace kvtier::testing_util
