// Page selections that drift like a decode step's: per item, each step keeps about `keep`
// of the previous step's pages, then refills to a random count in [min_selected,
// max_selected] with pages near kept ones and pages anywhere. Strictly ascending, as the
// resolve expects. Deterministic for a seed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace kvtier::testing_util {

class DriftingSelections {
 public:
  DriftingSelections(int32_t items, int32_t max_pages, int32_t min_selected, int32_t max_selected,
                     double keep, uint64_t seed)
      : max_pages_(max_pages),
        min_selected_(std::max(1, min_selected)),
        max_selected_(max_selected),
        keep_(keep),
        rng_(seed),
        current_(items) {}

  const std::vector<int32_t>& Next(int32_t item) {
    std::set<int32_t> next;
    std::bernoulli_distribution kept(keep_);
    for (int32_t page : current_[item]) {
      if (kept(rng_)) next.insert(page);
    }
    const int32_t target =
        std::uniform_int_distribution<int32_t>(min_selected_, max_selected_)(rng_);
    std::uniform_int_distribution<int32_t> any(0, max_pages_ - 1), near(-3, 3);
    const std::vector<int32_t> kept_pages(next.begin(), next.end());
    while (static_cast<int32_t>(next.size()) < target) {
      int32_t page = any(rng_);
      if (!kept_pages.empty() && rng_() % 2 == 0) {
        page = std::clamp(kept_pages[rng_() % kept_pages.size()] + near(rng_), 0, max_pages_ - 1);
      }
      next.insert(page);
    }
    current_[item].assign(next.begin(), next.end());
    if (static_cast<int32_t>(current_[item].size()) > target) {
      std::shuffle(current_[item].begin(), current_[item].end(), rng_);
      current_[item].resize(target);
      std::sort(current_[item].begin(), current_[item].end());
    }
    return current_[item];
  }

 private:
  int32_t max_pages_, min_selected_, max_selected_;
  double keep_;
  std::mt19937_64 rng_;
  std::vector<std::vector<int32_t>> current_;
};

}  // namespace kvtier::testing_util
