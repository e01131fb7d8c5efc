#include "kernels/miss_load.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "tbb/parallel_for.h"

namespace kvtier {
namespace internal {

absl::Status ValidateMissLoadShape(const MissLoadParams& p) {
  auto invalid = [](const std::string& message) {
    return absl::InvalidArgumentError(absl::StrCat("MissLoadParams: ", message));
  };
  if (p.num_items < 0)
    return invalid(absl::StrCat("num_items is ", p.num_items, "; expected >= 0"));
  if (p.max_misses < 0) {
    return invalid(absl::StrCat("max_misses is ", p.max_misses, "; expected >= 0"));
  }
  if (p.page_bytes <= 0 || p.page_bytes % 16 != 0) {
    return invalid(
        absl::StrCat("page_bytes is ", p.page_bytes, "; expected a positive multiple of 16"));
  }
  if (p.num_items == 0 || p.max_misses == 0) return absl::OkStatus();
  const std::pair<const void*, const char*> required[] = {
      {p.miss_pages, "miss_pages"},     {p.miss_slots, "miss_slots"},
      {p.miss_count, "miss_count"},     {p.host_k_pages, "host_k_pages"},
      {p.host_v_pages, "host_v_pages"}, {p.page_table_offset, "page_table_offset"},
      {p.slot_k_base, "slot_k_base"},   {p.slot_v_base, "slot_v_base"}};
  for (const auto& [pointer, name] : required) {
    if (pointer == nullptr) return invalid(absl::StrCat(name, " is null"));
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::Status ReferenceMissLoad(const MissLoadParams& p) {
  if (absl::Status status = internal::ValidateMissLoadShape(p); !status.ok()) return status;
  if (p.num_items == 0 || p.max_misses == 0) return absl::OkStatus();
  auto misaligned = [](const void* address) {
    return address == nullptr || reinterpret_cast<uintptr_t>(address) % 16 != 0;
  };
  // Check every entry first so that a bad one leaves every slot as it was.
  for (int32_t item = 0; item < p.num_items; ++item) {
    const int32_t count = p.miss_count[item];
    if (count < 0 || count > p.max_misses) {
      return absl::InvalidArgumentError(absl::StrCat("MissLoadParams: miss_count[", item, "] is ",
                                                     count, "; expected in [0, ", p.max_misses,
                                                     "]"));
    }
    for (int32_t m = 0; m < count; ++m) {
      const int64_t at = int64_t{item} * p.max_misses + m;
      const int32_t page = p.miss_pages[at];
      const int32_t slot = p.miss_slots[at];
      if (page < 0 || slot < 0) {
        return absl::InvalidArgumentError(absl::StrCat("MissLoadParams: item ", item, " miss ", m,
                                                       " has page ", page, " and slot ", slot,
                                                       "; expected both >= 0"));
      }
      const int64_t entry = p.page_table_offset[item] + page;
      if (misaligned(p.host_k_pages[entry]) || misaligned(p.host_v_pages[entry]) ||
          misaligned(p.slot_k_base[item]) || misaligned(p.slot_v_base[item])) {
        return absl::InvalidArgumentError(
            absl::StrCat("MissLoadParams: item ", item, " miss ", m,
                         ": a host page or slot pool address is null or not 16-byte aligned"));
      }
    }
  }
  tbb::parallel_for(0, p.num_items, [&](int32_t item) {
    for (int32_t m = 0; m < p.miss_count[item]; ++m) {
      const int64_t at = int64_t{item} * p.max_misses + m;
      const int64_t entry = p.page_table_offset[item] + p.miss_pages[at];
      const int64_t offset = int64_t{p.miss_slots[at]} * p.page_bytes;
      std::memcpy(static_cast<std::byte*>(p.slot_k_base[item]) + offset, p.host_k_pages[entry],
                  static_cast<size_t>(p.page_bytes));
      std::memcpy(static_cast<std::byte*>(p.slot_v_base[item]) + offset, p.host_v_pages[entry],
                  static_cast<size_t>(p.page_bytes));
    }
  });
  return absl::OkStatus();
}

}  // namespace kvtier
