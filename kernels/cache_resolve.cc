// Host twin of the page-cache resolve and score update (cache_resolve.cu), the standard
// policies as host interfaces, and the parameter checks both sides share.
#include <algorithm>
#include <bit>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "kernels/cache_resolve.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace kvtier {

uint32_t ScoreOrderKey(float score) {
  const uint32_t bits = std::bit_cast<uint32_t>(score);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

namespace {

class LeastRecentlyUsedPolicy final : public CacheEvictionPolicy {
 public:
  const char* name() const override { return "least recently used"; }
  bool EvictsBefore(const CacheSlotState& a, const CacheSlotState& b) const override {
    return a.last_use < b.last_use;
  }
  bool KeepsOnlyLastSelection() const override { return false; }
};

class LowestScorePolicy final : public CacheEvictionPolicy {
 public:
  const char* name() const override { return "lowest score"; }
  bool EvictsBefore(const CacheSlotState& a, const CacheSlotState& b) const override {
    const uint32_t ka = ScoreOrderKey(a.score);
    const uint32_t kb = ScoreOrderKey(b.score);
    if (ka != kb) return ka < kb;
    return a.last_use < b.last_use;
  }
  bool KeepsOnlyLastSelection() const override { return false; }
};

class LastSelectionPolicy final : public CacheEvictionPolicy {
 public:
  const char* name() const override { return "last selection"; }
  bool EvictsBefore(const CacheSlotState&, const CacheSlotState&) const override { return false; }
  bool KeepsOnlyLastSelection() const override { return true; }
};

absl::Status Invalid(const char* field, int64_t value, absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("cache resolve: ", field, " is ", value, ", expected ", expected));
}

// Directory row of `item`.
int64_t RowOf(const int32_t* item_rows, int32_t item) {
  return item_rows != nullptr ? item_rows[item] : item;
}

// item_rows of `num_items` items: each in [0, num_rows) (num_rows <= 0: only >= 0) and no two
// equal. InvalidArgument naming the item(s), prefixed by `who`.
absl::Status ValidateItemRows(absl::string_view who, const int32_t* item_rows, int32_t num_items,
                              int32_t num_rows) {
  if (item_rows == nullptr) return absl::OkStatus();
  std::vector<std::pair<int32_t, int32_t>> rows;  // (row, item)
  rows.reserve(num_items);
  for (int32_t item = 0; item < num_items; ++item) {
    const int32_t row = item_rows[item];
    if (row < 0 || (num_rows > 0 && row >= num_rows)) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": item_rows[", item, "] is ", row, ", expected a row in [0, ",
          num_rows > 0 ? absl::StrCat(num_rows, ") (num_rows)") : std::string("inf)")));
    }
    rows.emplace_back(row, item);
  }
  std::sort(rows.begin(), rows.end());
  for (size_t i = 1; i < rows.size(); ++i) {
    if (rows[i].first == rows[i - 1].first) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": item_rows[", rows[i - 1].second, "] and item_rows[", rows[i].second,
                       "] are both ", rows[i].first, ", expected distinct rows"));
    }
  }
  return absl::OkStatus();
}

// Checks one item's array contents; InvalidArgument naming the item and what is wrong.
absl::Status ValidateItemContents(const CacheResolveParams& p, int32_t item) {
  const PageCacheDirectory& d = p.directory;
  const int32_t n = p.num_selected[item];
  if (n < 0 || n > p.max_selected) {
    return absl::InvalidArgumentError(absl::StrCat("cache resolve: num_selected[", item, "] is ", n,
                                                   ", expected 0..", p.max_selected));
  }
  const int32_t* selected = p.selected_pages + int64_t{item} * p.max_selected;
  for (int32_t i = 0; i < n; ++i) {
    if (selected[i] < 0 || selected[i] >= d.max_pages ||
        (i > 0 && selected[i] <= selected[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cache resolve: selected_pages of item ", item, " entry ", i, " is ", selected[i],
          ", expected strictly ascending pages in [0, ", d.max_pages, ")"));
    }
  }
  const int32_t* slot_page = d.slot_page + RowOf(p.item_rows, item) * d.num_slots;
  std::vector<int32_t> held;
  for (int32_t s = 0; s < d.num_slots; ++s) {
    if (slot_page[s] < -1 || slot_page[s] >= d.max_pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache resolve: slot_page of item ", item, " slot ", s, " is ", slot_page[s],
                       ", expected -1 or a page in [0, ", d.max_pages, ")"));
    }
    if (slot_page[s] >= 0) held.push_back(slot_page[s]);
  }
  std::sort(held.begin(), held.end());
  if (std::adjacent_find(held.begin(), held.end()) != held.end()) {
    return absl::InvalidArgumentError(absl::StrCat("cache resolve: item ", item, " holds page ",
                                                   *std::adjacent_find(held.begin(), held.end()),
                                                   " in two slots"));
  }
  return absl::OkStatus();
}

// Resolves one item; its contents were validated.
void ResolveItem(const CacheResolveParams& p, const CacheEvictionPolicy& policy, int32_t item) {
  const PageCacheDirectory& d = p.directory;
  const int64_t row = RowOf(p.item_rows, item);
  const int64_t slot_base = row * d.num_slots;
  const int64_t sel_base = int64_t{item} * p.max_selected;
  int32_t* slot_page = d.slot_page + slot_base;
  int32_t* last_use = d.slot_last_use + slot_base;
  float* score = d.slot_score + slot_base;
  int32_t* page_slot = d.page_slot != nullptr ? d.page_slot + row * d.max_pages : nullptr;
  const int32_t* selected = p.selected_pages + sel_base;
  const int32_t n = p.num_selected[item];
  const int32_t step = p.step_ptr != nullptr ? *p.step_ptr : p.step;

  // Hits: each resident page found in the sorted selection.
  std::vector<int32_t> slot_of(n, -1);
  std::vector<bool> used(d.num_slots, false);
  int32_t hits = 0;
  for (int32_t s = 0; s < d.num_slots; ++s) {
    if (slot_page[s] < 0) continue;
    const int32_t* it = std::lower_bound(selected, selected + n, slot_page[s]);
    if (it != selected + n && *it == slot_page[s]) {
      slot_of[it - selected] = s;
      used[s] = true;
      ++hits;
    }
  }
  const int32_t misses = n - hits;

  // Victims: free slots in slot order, then occupied unselected slots in policy order.
  std::vector<int32_t> victims;
  std::vector<CacheSlotState> candidates;
  for (int32_t s = 0; s < d.num_slots; ++s) {
    if (used[s]) continue;
    if (slot_page[s] < 0 || policy.KeepsOnlyLastSelection()) {
      if (static_cast<int32_t>(victims.size()) < misses) victims.push_back(s);
    } else {
      candidates.push_back(
          {.slot = s, .page = slot_page[s], .last_use = last_use[s], .score = score[s]});
    }
  }
  const size_t need = static_cast<size_t>(misses) - victims.size();
  if (need > 0) {
    auto before = [&](const CacheSlotState& a, const CacheSlotState& b) {
      if (policy.EvictsBefore(a, b)) return true;
      if (policy.EvictsBefore(b, a)) return false;
      return a.slot < b.slot;
    };
    std::partial_sort(candidates.begin(), candidates.begin() + need, candidates.end(), before);
    for (size_t i = 0; i < need; ++i) victims.push_back(candidates[i].slot);
  }
  std::sort(victims.begin(), victims.end());

  // Outputs and directory updates.
  if (p.hit_slots != nullptr) {
    int32_t next_hit = 0;
    for (int32_t i = 0; i < n; ++i) {
      if (slot_of[i] >= 0) p.hit_slots[sel_base + next_hit++] = slot_of[i];
    }
  }
  int32_t* selected_slots = p.selected_slots + sel_base;
  int32_t* miss_pages = p.miss_pages + sel_base;
  int32_t* miss_slots = p.miss_slots + sel_base;
  int32_t next_victim = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t page = selected[i];
    int32_t s = slot_of[i];
    if (s < 0) {
      s = victims[next_victim];
      miss_pages[next_victim] = page;
      miss_slots[next_victim] = s;
      ++next_victim;
      if (page_slot != nullptr && slot_page[s] >= 0) page_slot[slot_page[s]] = -1;
      slot_page[s] = page;
      score[s] = 0.0f;
      used[s] = true;
      if (page_slot != nullptr) page_slot[page] = s;
    }
    last_use[s] = step;
    selected_slots[i] = s;
  }
  if (policy.KeepsOnlyLastSelection()) {
    for (int32_t s = 0; s < d.num_slots; ++s) {
      if (used[s] || slot_page[s] < 0) continue;
      if (page_slot != nullptr) page_slot[slot_page[s]] = -1;
      slot_page[s] = -1;
    }
  }
  p.hit_count[item] = hits;
  p.miss_count[item] = misses;
}

// Runs `f(item)` for every item, in parallel for large batches.
template <typename F>
void ForEachItem(int32_t num_items, F&& f) {
  tbb::parallel_for(tbb::blocked_range<int32_t>(0, num_items, 16),
                    [&](const tbb::blocked_range<int32_t>& r) {
                      for (int32_t i = r.begin(); i < r.end(); ++i) f(i);
                    });
}

}  // namespace

const CacheEvictionPolicy& StandardCachePolicy(CachePolicy policy) {
  static const LeastRecentlyUsedPolicy* const lru = new LeastRecentlyUsedPolicy;
  static const LowestScorePolicy* const lowest_score = new LowestScorePolicy;
  static const LastSelectionPolicy* const last_selection = new LastSelectionPolicy;
  switch (policy) {
    case CachePolicy::kLowestScore:
      return *lowest_score;
    case CachePolicy::kLastSelection:
      return *last_selection;
    case CachePolicy::kLeastRecentlyUsed:
    case CachePolicy::kNone:  // no cache, so no resolve: ValidateCacheResolveShape rejects it
      break;
  }
  return *lru;
}

namespace internal {

absl::Status ValidateCacheResolveShape(const CacheResolveParams& p) {
  const PageCacheDirectory& d = p.directory;
  if (d.num_items < 0) return Invalid("num_items", d.num_items, ">= 0");
  if (d.num_slots < 1 || d.num_slots > kMaxCacheSlots) {
    return Invalid("num_slots", d.num_slots, absl::StrCat("1..", kMaxCacheSlots));
  }
  if (p.item_rows != nullptr) {
    if (d.num_rows < 1) {
      return Invalid("directory.num_rows", d.num_rows, ">= 1 with item_rows");
    }
    if (d.num_items > d.num_rows) {
      return absl::InvalidArgumentError(absl::StrCat("cache resolve: num_items (", d.num_items,
                                                     ") exceeds directory.num_rows (", d.num_rows,
                                                     "): item_rows must name distinct rows"));
    }
  } else if (d.num_rows != 0 && d.num_rows != d.num_items) {
    return Invalid("directory.num_rows", d.num_rows,
                   absl::StrCat("0 or num_items (", d.num_items, ") without item_rows"));
  }
  if (d.max_pages < 1) return Invalid("max_pages", d.max_pages, ">= 1");
  if (p.max_selected < 0 || p.max_selected > kMaxCacheSelected) {
    return Invalid("max_selected", p.max_selected, absl::StrCat("0..", kMaxCacheSelected));
  }
  if (p.max_selected > d.num_slots) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cache resolve: max_selected (", p.max_selected, ") exceeds num_slots (", d.num_slots,
        "): a step may select more pages than the cache holds; configure at least as many "
        "cache slots as the selection budget"));
  }
  switch (p.policy) {
    case CachePolicy::kLeastRecentlyUsed:
    case CachePolicy::kLowestScore:
    case CachePolicy::kLastSelection:
      break;
    default:
      return Invalid("policy", static_cast<int>(p.policy), "a CachePolicy enumerator");
  }
  if (d.num_items == 0) return absl::OkStatus();
  // Arrays indexed by selection entry may be null when nothing can be selected.
  struct Field {
    const char* name;
    const void* ptr;
    bool per_selected_entry;
  };
  const Field required[] = {{"directory.slot_page", d.slot_page, false},
                            {"directory.slot_last_use", d.slot_last_use, false},
                            {"directory.slot_score", d.slot_score, false},
                            {"selected_pages", p.selected_pages, true},
                            {"num_selected", p.num_selected, false},
                            {"selected_slots", p.selected_slots, true},
                            {"miss_pages", p.miss_pages, true},
                            {"miss_slots", p.miss_slots, true},
                            {"hit_count", p.hit_count, false},
                            {"miss_count", p.miss_count, false}};
  for (const Field& f : required) {
    if (f.ptr == nullptr && !(f.per_selected_entry && p.max_selected == 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cache resolve: ", f.name, " is null for ", d.num_items, " items"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCacheScoreUpdateShape(const CacheScoreUpdateParams& p) {
  auto invalid = [](const char* field, auto value, absl::string_view expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache score update: ", field, " is ", value, ", expected ", expected));
  };
  if (p.num_items < 0) return invalid("num_items", p.num_items, ">= 0");
  if (p.num_slots < 1 || p.num_slots > kMaxCacheSlots) {
    return invalid("num_slots", p.num_slots, absl::StrCat("1..", kMaxCacheSlots));
  }
  if (p.max_selected < 0 || p.max_selected > p.num_slots) {
    return invalid("max_selected", p.max_selected, "0..num_slots");
  }
  if (!(p.decay > 0.0f && p.decay <= 1.0f)) return invalid("decay", p.decay, "in (0, 1]");
  if (p.num_rows < 0) return invalid("num_rows", p.num_rows, ">= 0");
  if (p.item_rows == nullptr && p.num_rows != 0 && p.num_rows != p.num_items) {
    return invalid("num_rows", p.num_rows, "0 or num_items without item_rows");
  }
  if (p.item_rows != nullptr && p.num_rows > 0 && p.num_items > p.num_rows) {
    return invalid("num_items", p.num_items, "<= num_rows: item_rows must name distinct rows");
  }
  if (p.num_items == 0) return absl::OkStatus();
  if (p.slot_score == nullptr || p.num_selected == nullptr ||
      (p.max_selected > 0 && (p.selected_slots == nullptr || p.mass == nullptr))) {
    return absl::InvalidArgumentError(
        "cache score update: slot_score, num_selected, selected_slots and mass must be "
        "non-null");
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceCacheResolve(const CacheResolveParams& params) {
  return ReferenceCacheResolve(params, StandardCachePolicy(params.policy));
}

absl::Status ReferenceCacheResolve(const CacheResolveParams& params,
                                   const CacheEvictionPolicy& policy) {
  if (absl::Status status = internal::ValidateCacheResolveShape(params); !status.ok()) {
    return status;
  }
  // Every item's contents first, so bad input changes nothing.
  KVTIER_RETURN_IF_ERROR(ValidateItemRows("cache resolve", params.item_rows,
                                          params.directory.num_items, params.directory.num_rows));
  for (int32_t item = 0; item < params.directory.num_items; ++item) {
    if (absl::Status status = ValidateItemContents(params, item); !status.ok()) return status;
  }
  ForEachItem(params.directory.num_items, [&](int32_t item) { ResolveItem(params, policy, item); });
  return absl::OkStatus();
}

absl::Status ReferenceCacheScoreUpdate(const CacheScoreUpdateParams& p) {
  if (absl::Status status = internal::ValidateCacheScoreUpdateShape(p); !status.ok()) {
    return status;
  }
  KVTIER_RETURN_IF_ERROR(
      ValidateItemRows("cache score update", p.item_rows, p.num_items, p.num_rows));
  for (int32_t item = 0; item < p.num_items; ++item) {
    const int32_t n = p.num_selected[item];
    if (n < 0 || n > p.max_selected) {
      return absl::InvalidArgumentError(absl::StrCat("cache score update: num_selected[", item,
                                                     "] is ", n, ", expected 0..", p.max_selected));
    }
    const int32_t* slots = p.selected_slots + int64_t{item} * p.max_selected;
    for (int32_t i = 0; i < n; ++i) {
      if (slots[i] < 0 || slots[i] >= p.num_slots) {
        return absl::InvalidArgumentError(
            absl::StrCat("cache score update: selected_slots of item ", item, " entry ", i, " is ",
                         slots[i], ", expected a slot in [0, ", p.num_slots, ")"));
      }
    }
  }
  ForEachItem(p.num_items, [&](int32_t item) {
    float* score = p.slot_score + RowOf(p.item_rows, item) * p.num_slots;
    if (p.decay != 1.0f) {
      for (int32_t s = 0; s < p.num_slots; ++s) score[s] = score[s] * p.decay;
    }
    const int64_t base = int64_t{item} * p.max_selected;
    for (int32_t i = 0; i < p.num_selected[item]; ++i) {
      score[p.selected_slots[base + i]] += p.mass[base + i];
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
