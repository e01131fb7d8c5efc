// An independent host model of the LRU and last-selection page caches, for the KvCache tests.
// Header-only; no CUDA.
#pragma once

#include "tests/runtime/runtime_test_util.h"

namespace kvtier::runtime_test {

// An independent model of one page cache (one (sequence, layer, KV head)) under LRU or
// last selection, fed only the selections (cache_resolve.h's rules): hits keep their slot;
// misses, ascending, take the victims in ascending slot order; victims are empty slots by
// index, then (LRU) occupied unselected slots by last use, then index; last selection frees
// every unselected slot and empties it after the step.
class PageCacheModel {
 public:
  PageCacheModel(int slots, CachePolicy policy)
      : page_(static_cast<size_t>(slots), -1),
        last_(static_cast<size_t>(slots), 0),
        policy_(policy) {}

  // Applies one step; returns the hits.
  int Step(absl::Span<const int32_t> selected) {
    ++clock_;
    const int c = static_cast<int>(page_.size());
    std::vector<bool> used(static_cast<size_t>(c), false);
    std::vector<int32_t> misses;
    int hits = 0;
    for (int32_t page : selected) {
      const auto it = std::find(page_.begin(), page_.end(), page);
      if (it != page_.end()) {
        used[it - page_.begin()] = true;
        last_[it - page_.begin()] = clock_;
        ++hits;
      } else {
        misses.push_back(page);
      }
    }
    std::vector<int> victims;
    for (int s = 0; s < c && victims.size() < misses.size(); ++s) {
      if (!used[s] && (page_[s] < 0 || policy_ == CachePolicy::kLastSelection)) {
        victims.push_back(s);
      }
    }
    if (victims.size() < misses.size()) {
      std::vector<int> candidates;
      for (int s = 0; s < c; ++s) {
        if (!used[s] && page_[s] >= 0) candidates.push_back(s);
      }
      std::stable_sort(candidates.begin(), candidates.end(),
                       [&](int a, int b) { return last_[a] < last_[b]; });
      for (int s : candidates) {
        if (victims.size() == misses.size()) break;
        victims.push_back(s);
      }
    }
    std::sort(victims.begin(), victims.end());
    for (size_t i = 0; i < misses.size() && i < victims.size(); ++i) {
      page_[victims[i]] = misses[i];
      last_[victims[i]] = clock_;
      used[victims[i]] = true;
    }
    if (policy_ == CachePolicy::kLastSelection) {
      for (int s = 0; s < c; ++s) {
        if (!used[s]) page_[s] = -1;
      }
    }
    return hits;
  }
  const std::vector<int32_t>& slot_page() const { return page_; }

 private:
  std::vector<int32_t> page_;
  std::vector<int64_t> last_;
  int64_t clock_ = 0;
  CachePolicy policy_;
};

}  // namespace kvtier::runtime_test
