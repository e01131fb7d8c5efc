// Host twins of the decode-step planning kernels (decode_plan.cu) and the checks both share.
// The twins are plain loops: they are the tests' oracle and the host backend's planner, and a
// step's plan is a few thousand pointers, so clarity wins over parallelism here.
#include "kernels/decode_plan.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/status.h"

namespace kvtier {
namespace internal {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

struct Field {
  const char* name;
  const void* ptr;
};

absl::Status Invalid(absl::string_view kernel, absl::string_view field, int64_t value,
                     absl::string_view expected) {
  return absl::InvalidArgumentError(
      absl::StrCat(kernel, ": ", field, " is ", value, ", expected ", expected));
}

// The first null field, as InvalidArgument naming it.
absl::Status RequireNonNull(absl::string_view kernel, std::initializer_list<Field> fields,
                            absl::string_view why) {
  for (const Field& f : fields) {
    if (f.ptr == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(kernel, ": ", f.name, " is null ", why));
    }
  }
  return absl::OkStatus();
}

bool AlignedTo(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

bool SupportedPageSize(int32_t page_size) {
  return page_size == 16 || page_size == 32 || page_size == 64;
}

}  // namespace

absl::Status ValidateDecodePlanShape(const DecodePlanParams& p) {
  constexpr absl::string_view kName = "decode plan";
  const ItemStorage& s = p.storage;
  if (!SupportedPageSize(s.page_size)) {
    return Invalid(kName, "storage.page_size", s.page_size, "16, 32 or 64");
  }
  if (s.sink_pages < 0) return Invalid(kName, "storage.sink_pages", s.sink_pages, ">= 0");
  if (s.window_pages < 1) return Invalid(kName, "storage.window_pages", s.window_pages, ">= 1");
  if (s.ring_pages < int64_t{s.window_pages} + 1) {
    return Invalid(kName, "storage.ring_pages", s.ring_pages,
                   absl::StrCat(">= window_pages + 1 = ", int64_t{s.window_pages} + 1));
  }
  if (s.max_pages < 1) return Invalid(kName, "storage.max_pages", s.max_pages, ">= 1");
  if (s.cache_slots < 1) return Invalid(kName, "storage.cache_slots", s.cache_slots, ">= 1");
  if (s.page_bytes <= 0 || s.page_bytes % 16 != 0) {
    return Invalid(kName, "storage.page_bytes", s.page_bytes, "a positive multiple of 16");
  }
  if (s.summary_bytes <= 0) {
    return Invalid(kName, "storage.summary_bytes", s.summary_bytes, "> 0");
  }
  if (s.summary_arrays < 1 || s.summary_arrays > kMaxSummaryArrays) {
    return Invalid(kName, "storage.summary_arrays", s.summary_arrays,
                   absl::StrCat("in [1, ", kMaxSummaryArrays, "]"));
  }
  for (int a = 0; a < s.summary_arrays; ++a) {
    const int64_t end = s.summary_offset[a] + int64_t{s.max_pages} * s.summary_stride[a];
    if (s.summary_offset[a] < 0 || s.summary_stride[a] < 0 ||
        (s.max_pages >= 1 &&
         std::max(end, s.summary_offset[a] + 1) > int64_t{s.max_pages} * s.summary_bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kName, ": storage.summary_offset/stride[", a, "] is ", s.summary_offset[a],
                       "/", s.summary_stride[a],
                       ", expected an array of max_pages entries inside the item's "
                       "summary region"));
    }
  }
  if (p.num_layers < 1) return Invalid(kName, "num_layers", p.num_layers, ">= 1");
  if (p.num_kv_heads < 1) return Invalid(kName, "num_kv_heads", p.num_kv_heads, ">= 1");
  if (p.layer < 0 || p.layer >= p.num_layers) {
    return Invalid(kName, "layer", p.layer, absl::StrCat("in [0, ", p.num_layers, ")"));
  }
  if (p.batch < 0) return Invalid(kName, "batch", p.batch, ">= 0");
  // hot_page_offsets are int32: the capacity batch * Hk * (S + W) must fit.
  const int64_t items = int64_t{p.batch} * p.num_kv_heads;
  const int64_t hot_capacity = items * (int64_t{s.sink_pages} + s.window_pages);
  if (items >= kInt32Max || hot_capacity > kInt32Max) {
    return Invalid(kName, "batch", p.batch,
                   absl::StrCat("at most ", kInt32Max,
                                " hot pages: batch * num_kv_heads * "
                                "(sink_pages + window_pages) overflows int32"));
  }
  if (p.batch == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(RequireNonNull(kName,
                                        {{"storage.hot_k", s.hot_k},
                                         {"storage.hot_v", s.hot_v},
                                         {"storage.slot_k", s.slot_k},
                                         {"storage.slot_v", s.slot_v},
                                         {"storage.summaries", s.summaries},
                                         {"storage.host_k_table", s.host_k_table},
                                         {"storage.host_v_table", s.host_v_table},
                                         {"seq_slot", p.seq_slot},
                                         {"tokens_before", p.tokens_before},
                                         {"append_k", p.append_k},
                                         {"append_v", p.append_v},
                                         {"append_row", p.append_row},
                                         {"writeback_k_dst", p.writeback_k_dst},
                                         {"writeback_v_dst", p.writeback_v_dst},
                                         {"summary_tokens", p.summary_tokens},

                                         {"select_begin", p.select_begin},
                                         {"select_end", p.select_end},

                                         {"item_row", p.item_row},
                                         {"page_table_offset", p.page_table_offset},
                                         {"slot_k_base", p.slot_k_base},
                                         {"slot_v_base", p.slot_v_base},
                                         {"hot_page_offsets", p.hot_page_offsets},
                                         {"hot_k_pages", p.hot_k_pages},
                                         {"hot_v_pages", p.hot_v_pages},
                                         {"hot_last_page_tokens", p.hot_last_page_tokens}},
                                        absl::StrCat("for a batch of ", p.batch)));
  for (int a = 0; a < s.summary_arrays; ++a) {
    if (p.summary_dst[a] == nullptr || p.select_summary[a] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("decode plan: summary_dst[", a, "] and select_summary[", a,
                       "] must be set for storage.summary_arrays = ", s.summary_arrays));
    }
  }
  // Pages are read and written with 16-byte vectors by the kernels that use them.
  for (const Field& f : {Field{"storage.hot_k", s.hot_k}, Field{"storage.hot_v", s.hot_v},
                         Field{"storage.slot_k", s.slot_k}, Field{"storage.slot_v", s.slot_v}}) {
    if (!AlignedTo(f.ptr, 16)) {
      return absl::InvalidArgumentError(
          absl::StrCat("decode plan: ", f.name, " is not 16-byte aligned"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSelectedPagesShape(const SelectedPagesParams& p) {
  constexpr absl::string_view kName = "selected pages";
  if (p.num_items < 0) return Invalid(kName, "num_items", p.num_items, ">= 0");
  if (p.max_selected < 1) return Invalid(kName, "max_selected", p.max_selected, ">= 1");
  if (p.page_size < 1) return Invalid(kName, "page_size", p.page_size, ">= 1");
  if (p.page_bytes <= 0 || p.page_bytes % 16 != 0) {
    return Invalid(kName, "page_bytes", p.page_bytes, "a positive multiple of 16");
  }
  // page_offsets are int32.
  if (int64_t{p.num_items} * p.max_selected > kInt32Max) {
    return Invalid(kName, "num_items", p.num_items,
                   absl::StrCat("num_items * max_selected (", p.max_selected, ") <= ", kInt32Max));
  }
  if (p.num_items == 0) return absl::OkStatus();
  const std::string why = absl::StrCat("for ", p.num_items, " items");
  KVTIER_RETURN_IF_ERROR(RequireNonNull(kName,
                                        {{"slot_k_base", p.slot_k_base},
                                         {"slot_v_base", p.slot_v_base},
                                         {"selected_slots", p.selected_slots},
                                         {"num_selected", p.num_selected},
                                         {"page_offsets", p.page_offsets},
                                         {"k_pages", p.k_pages},
                                         {"v_pages", p.v_pages},
                                         {"last_page_tokens", p.last_page_tokens}},
                                        why));
  const bool any_append = p.append_offsets != nullptr || p.append_k != nullptr ||
                          p.append_v != nullptr || p.append_last != nullptr;
  if (any_append) {
    KVTIER_RETURN_IF_ERROR(RequireNonNull(kName,
                                          {{"append_offsets", p.append_offsets},
                                           {"append_k", p.append_k},
                                           {"append_v", p.append_v},
                                           {"append_last", p.append_last}},
                                          "when any appended list field is set"));
  }
  if (p.counters != nullptr) {
    KVTIER_RETURN_IF_ERROR(RequireNonNull(
        kName, {{"hit_count", p.hit_count}, {"miss_count", p.miss_count}}, "with counters set"));
    if (!AlignedTo(p.counters, alignof(unsigned long long))) {
      return absl::InvalidArgumentError("selected pages: counters is not 8-byte aligned");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePageMassShape(const PageMassParams& p) {
  constexpr absl::string_view kName = "page mass";
  if (p.num_items < 0) return Invalid(kName, "num_items", p.num_items, ">= 0");
  if (p.group_size < 1) return Invalid(kName, "group_size", p.group_size, ">= 1");
  if (p.max_selected < 1) return Invalid(kName, "max_selected", p.max_selected, ">= 1");
  if (!SupportedPageSize(p.page_size)) {
    return Invalid(kName, "page_size", p.page_size, "16, 32 or 64");
  }
  if (int64_t{p.num_items} * p.max_selected > kInt32Max) {
    return Invalid(kName, "num_items", p.num_items,
                   absl::StrCat("num_items * max_selected (", p.max_selected, ") <= ", kInt32Max));
  }
  if (p.num_items == 0) return absl::OkStatus();
  return RequireNonNull(kName,
                        {{"page_offsets", p.page_offsets},
                         {"num_selected", p.num_selected},
                         {"chunk_lse", p.chunk_lse},
                         {"lse", p.lse},
                         {"mass", p.mass}},
                        absl::StrCat("for ", p.num_items, " items"));
}

absl::Status ValidatePageScoreUpdateShape(const PageScoreUpdateParams& p) {
  constexpr absl::string_view kName = "page score update";
  if (p.num_items < 0) return Invalid(kName, "num_items", p.num_items, ">= 0");
  if (p.group_size < 1) return Invalid(kName, "group_size", p.group_size, ">= 1");
  if (p.max_selected < 1) return Invalid(kName, "max_selected", p.max_selected, ">= 1");
  if (!SupportedPageSize(p.page_size)) {
    return Invalid(kName, "page_size", p.page_size, "16, 32 or 64");
  }
  if (p.num_slots < 1) return Invalid(kName, "num_slots", p.num_slots, ">= 1");
  if (p.num_lists < 1 || p.num_lists > 2) return Invalid(kName, "num_lists", p.num_lists, "1 or 2");
  if (p.num_rows < 0) return Invalid(kName, "num_rows", p.num_rows, ">= 0");
  if (!(p.decay > 0.0f && p.decay <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kName, ": decay is ", p.decay, ", expected in (0, 1]"));
  }
  if (int64_t{p.num_items} * p.max_selected > kInt32Max) {
    return Invalid(kName, "num_items", p.num_items,
                   absl::StrCat("num_items * max_selected (", p.max_selected, ") <= ", kInt32Max));
  }
  if (p.num_items == 0) return absl::OkStatus();
  KVTIER_RETURN_IF_ERROR(RequireNonNull(kName, {{"lse", p.lse}, {"slot_score", p.slot_score}},
                                        absl::StrCat("for ", p.num_items, " items")));
  for (int l = 0; l < p.num_lists; ++l) {
    const ScoredPageList& list = p.lists[l];
    KVTIER_RETURN_IF_ERROR(RequireNonNull(kName,
                                          {{"lists[].page_offsets", list.page_offsets},
                                           {"lists[].num_selected", list.num_selected},
                                           {"lists[].slots", list.slots},
                                           {"lists[].chunk_lse", list.chunk_lse}},
                                          absl::StrCat("for list ", l)));
  }
  return absl::OkStatus();
}

}  // namespace internal

namespace {

// The attention mass of entry e of item i of a page list (ComputePageMass's formula), in
// double from the float log-sum-exps.
double PageMassOf(const float* chunk_lse, const float* lse, int32_t page_offset, int32_t e,
                  int32_t item, int32_t group_size, int32_t page_size) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int32_t chunks_per_page = page_size / 16;
  const int64_t first_chunk = (int64_t{page_offset} + e) * chunks_per_page;
  double mass = 0.0;
  for (int32_t h = 0; h < group_size; ++h) {
    const float total = lse[int64_t{item} * group_size + h];
    if (total == kNegInf) continue;  // no tokens: no share
    for (int32_t c = 0; c < chunks_per_page; ++c) {
      const float chunk = chunk_lse[(first_chunk + c) * group_size + h];
      if (chunk == kNegInf) continue;
      mass += std::exp(static_cast<double>(chunk) - static_cast<double>(total));
    }
  }
  return mass;
}

// Hot index of page `page` of an item: sinks in place, the rest in the ring.
int64_t HotIndex(const ItemStorage& s, int32_t page) {
  return page < s.sink_pages ? page : s.sink_pages + (page - s.sink_pages) % s.ring_pages;
}

}  // namespace

absl::Status ReferenceDecodePlan(const DecodePlanParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateDecodePlanShape(p));
  if (p.batch == 0) return absl::OkStatus();  // writes nothing, not even hot_page_offsets[0]
  const ItemStorage& s = p.storage;
  const int32_t P = s.page_size;
  const int32_t S = s.sink_pages;
  const int32_t W = s.window_pages;
  const int32_t hk = p.num_kv_heads;
  const int64_t max_tokens = int64_t{s.max_pages} * P;
  auto row_of = [&](int32_t b, int32_t h) {
    return (int64_t{p.seq_slot[b]} * p.num_layers + p.layer) * hk + h;
  };

  // Every entry is checked before anything is written.
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t slot = p.seq_slot[b];
    const int32_t t = p.tokens_before[b];
    if (slot < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("decode plan: seq_slot[", b, "] is ", slot, ", expected >= 0"));
    }
    if (t < 1 || t + int64_t{1} > max_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(
          "decode plan: tokens_before[", b, "] is ", t, ", expected 1..", max_tokens - 1,
          " (prefilled, and room for one more token in max_pages = ", s.max_pages, " pages)"));
    }
    if (row_of(b, hk - 1) > internal::kInt32Max) {
      return absl::InvalidArgumentError(absl::StrCat("decode plan: seq_slot[", b, "] is ", slot,
                                                     ": its item rows overflow int32 item_row"));
    }
    if (t % P != P - 1) continue;
    // This token completes page t / P: its host page must exist to be written back.
    for (int32_t h = 0; h < hk; ++h) {
      const int64_t entry = row_of(b, h) * s.max_pages + t / P;
      if (s.host_k_table[entry] == nullptr || s.host_v_table[entry] == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("decode plan: batch entry ", b, " (seq_slot ", slot, ", KV head ", h,
                         ") completes page ", t / P, " but its host page table entry is null"));
      }
    }
  }

  int32_t hot_offset = 0;
  p.hot_page_offsets[0] = 0;
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t t = p.tokens_before[b];
    const int32_t append_page = t / P;
    const int32_t row = t % P;
    const int32_t n = append_page + 1;  // pages after the append
    const int32_t sinks_end = std::min(S, n);
    const int32_t window_begin = std::max(S, n - W);
    p.append_row[b] = row;
    for (int32_t h = 0; h < hk; ++h) {
      const int64_t i = int64_t{b} * hk + h;
      const int64_t r = row_of(b, h);
      const int64_t hot_row = r * (int64_t{S} + s.ring_pages);  // in pages
      auto hot_k = [&](int32_t page) {
        return s.hot_k + (hot_row + HotIndex(s, page)) * s.page_bytes;
      };
      auto hot_v = [&](int32_t page) {
        return s.hot_v + (hot_row + HotIndex(s, page)) * s.page_bytes;
      };
      const int64_t table_row = r * s.max_pages;

      p.append_k[i] = hot_k(append_page);
      p.append_v[i] = hot_v(append_page);
      const bool completes = row == P - 1;
      p.writeback_k_dst[i] =
          completes ? const_cast<void*>(s.host_k_table[table_row + append_page]) : nullptr;
      p.writeback_v_dst[i] =
          completes ? const_cast<void*>(s.host_v_table[table_row + append_page]) : nullptr;
      p.summary_tokens[i] = row + 1;
      std::byte* region = s.summaries + r * s.max_pages * s.summary_bytes;
      for (int a = 0; a < s.summary_arrays; ++a) {
        p.summary_dst[a][i] = region + s.summary_offset[a] + append_page * s.summary_stride[a];
        p.select_summary[a][i] = region + s.summary_offset[a];
      }
      p.select_begin[i] = S;
      p.select_end[i] = window_begin;
      p.item_row[i] = static_cast<int32_t>(r);
      p.page_table_offset[i] = table_row;
      p.slot_k_base[i] = s.slot_k + r * s.cache_slots * s.page_bytes;
      p.slot_v_base[i] = s.slot_v + r * s.cache_slots * s.page_bytes;

      for (int32_t j = 0; j < sinks_end; ++j) {
        p.hot_k_pages[hot_offset] = hot_k(j);
        p.hot_v_pages[hot_offset] = hot_v(j);
        ++hot_offset;
      }
      for (int32_t j = window_begin; j < n; ++j) {
        p.hot_k_pages[hot_offset] = hot_k(j);
        p.hot_v_pages[hot_offset] = hot_v(j);
        ++hot_offset;
      }
      p.hot_page_offsets[i + 1] = hot_offset;
      p.hot_last_page_tokens[i] = t + 1 - append_page * P;
    }
  }
  return absl::OkStatus();
}

absl::Status ReferenceBuildSelectedPages(const SelectedPagesParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidateSelectedPagesShape(p));
  if (p.num_items == 0) return absl::OkStatus();  // writes nothing, as the kernel
  for (int32_t i = 0; i < p.num_items; ++i) {
    const int32_t n = p.num_selected[i];
    if (n < 0 || n > p.max_selected) {
      return absl::InvalidArgumentError(absl::StrCat("selected pages: num_selected[", i, "] is ", n,
                                                     ", expected 0..", p.max_selected));
    }
    if (n > 0 && (p.slot_k_base[i] == nullptr || p.slot_v_base[i] == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat("selected pages: item ", i, " has ", n,
                                                     " selected pages but a null slot base"));
    }
    for (int32_t e = 0; e < n; ++e) {
      const int32_t slot = p.selected_slots[int64_t{i} * p.max_selected + e];
      if (slot < 0) {
        return absl::InvalidArgumentError(absl::StrCat("selected pages: selected_slots of item ", i,
                                                       " entry ", e, " is ", slot,
                                                       ", expected >= 0"));
      }
    }
    if (p.append_offsets != nullptr &&
        (p.append_offsets[i] < 0 || p.append_offsets[i + 1] < p.append_offsets[i] ||
         (i == 0 && p.append_offsets[0] != 0))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "selected pages: append_offsets[", i, "..", i + 1, "] = ", p.append_offsets[i], ", ",
          p.append_offsets[i + 1], ": expected non-decreasing from 0"));
    }
    if (p.counters != nullptr && (p.hit_count[i] < 0 || p.miss_count[i] < 0)) {
      return absl::InvalidArgumentError(absl::StrCat("selected pages: item ", i, " has hit_count ",
                                                     p.hit_count[i], " and miss_count ",
                                                     p.miss_count[i], ", expected both >= 0"));
    }
  }

  int32_t offset = 0;
  uint64_t selected = 0, hits = 0, misses = 0;
  p.page_offsets[0] = 0;
  for (int32_t i = 0; i < p.num_items; ++i) {
    const int32_t n = p.num_selected[i];
    const auto* k_base = static_cast<const std::byte*>(p.slot_k_base[i]);
    const auto* v_base = static_cast<const std::byte*>(p.slot_v_base[i]);
    for (int32_t e = 0; e < n; ++e) {
      const int64_t slot = p.selected_slots[int64_t{i} * p.max_selected + e];
      p.k_pages[offset] = k_base + slot * p.page_bytes;
      p.v_pages[offset] = v_base + slot * p.page_bytes;
      ++offset;
    }
    p.last_page_tokens[i] = p.page_size;
    if (p.append_offsets != nullptr) {
      for (int32_t a = p.append_offsets[i]; a < p.append_offsets[i + 1]; ++a) {
        p.k_pages[offset] = p.append_k[a];
        p.v_pages[offset] = p.append_v[a];
        ++offset;
      }
      if (p.append_offsets[i + 1] > p.append_offsets[i]) p.last_page_tokens[i] = p.append_last[i];
    }
    p.page_offsets[i + 1] = offset;
    selected += static_cast<uint64_t>(p.page_offsets[i + 1] - p.page_offsets[i]);
    if (p.counters != nullptr) {
      hits += static_cast<uint64_t>(p.hit_count[i]);
      misses += static_cast<uint64_t>(p.miss_count[i]);
    }
  }
  if (p.counters != nullptr) {
    p.counters[0] += selected;
    p.counters[1] += hits;
    p.counters[2] += misses;
  }
  return absl::OkStatus();
}

absl::Status ReferenceComputePageMass(const PageMassParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageMassShape(p));
  if (p.num_items == 0) return absl::OkStatus();
  if (p.page_offsets[0] < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page mass: page_offsets[0] is ", p.page_offsets[0], ", expected >= 0"));
  }
  for (int32_t i = 0; i < p.num_items; ++i) {
    const int32_t n = p.num_selected[i];
    const int64_t pages = int64_t{p.page_offsets[i + 1]} - p.page_offsets[i];
    if (n < 0 || n > p.max_selected || n > pages) {
      return absl::InvalidArgumentError(absl::StrCat("page mass: num_selected[", i, "] is ", n,
                                                     ", expected 0..", p.max_selected,
                                                     " and at most the item's pages page_offsets[",
                                                     i + 1, "] - page_offsets[", i, "] = ", pages));
    }
  }
  for (int32_t i = 0; i < p.num_items; ++i) {
    for (int32_t e = 0; e < p.num_selected[i]; ++e) {
      p.mass[int64_t{i} * p.max_selected + e] = static_cast<float>(
          PageMassOf(p.chunk_lse, p.lse, p.page_offsets[i], e, i, p.group_size, p.page_size));
    }
  }
  return absl::OkStatus();
}

absl::Status ReferenceUpdatePageScores(const PageScoreUpdateParams& p) {
  KVTIER_RETURN_IF_ERROR(internal::ValidatePageScoreUpdateShape(p));
  if (p.num_items == 0) return absl::OkStatus();
  constexpr absl::string_view kName = "page score update";
  // Every check before the first write.
  std::vector<int64_t> rows(static_cast<size_t>(p.num_items));
  for (int32_t i = 0; i < p.num_items; ++i) {
    rows[i] = p.item_rows != nullptr ? p.item_rows[i] : i;
    if (rows[i] < 0 || (p.num_rows > 0 && rows[i] >= p.num_rows)) {
      return absl::InvalidArgumentError(absl::StrCat(kName, ": item ", i, " has row ", rows[i],
                                                     ", expected in [0, ", p.num_rows, ")"));
    }
  }
  std::vector<int64_t> sorted = rows;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return absl::InvalidArgumentError(absl::StrCat(kName, ": item_rows are not distinct"));
  }
  std::vector<int32_t> seen(static_cast<size_t>(p.num_slots), -1);  // item that used the slot
  for (int l = 0; l < p.num_lists; ++l) {
    const ScoredPageList& list = p.lists[l];
    if (list.page_offsets[0] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(kName, ": list ", l, " page_offsets[0] is ",
                                                     list.page_offsets[0], ", expected >= 0"));
    }
  }
  for (int32_t i = 0; i < p.num_items; ++i) {
    for (int l = 0; l < p.num_lists; ++l) {
      const ScoredPageList& list = p.lists[l];
      const int32_t n = list.num_selected[i];
      const int64_t pages = int64_t{list.page_offsets[i + 1]} - list.page_offsets[i];
      if (n < 0 || n > p.max_selected || n > pages) {
        return absl::InvalidArgumentError(
            absl::StrCat(kName, ": list ", l, " num_selected[", i, "] is ", n, ", expected 0..",
                         p.max_selected, " and at most the item's ", pages, " pages"));
      }
      for (int32_t e = 0; e < n; ++e) {
        const int32_t slot = list.slots[int64_t{i} * p.max_selected + e];
        if (slot < 0 || slot >= p.num_slots || seen[slot] == i) {
          return absl::InvalidArgumentError(
              absl::StrCat(kName, ": list ", l, " item ", i, " entry ", e, " has slot ", slot,
                           ", expected in [0, ", p.num_slots, ") and not used twice"));
        }
        seen[slot] = i;
      }
    }
  }
  for (int32_t i = 0; i < p.num_items; ++i) {
    float* score = p.slot_score + rows[i] * p.num_slots;
    if (p.decay != 1.0f) {
      for (int32_t s = 0; s < p.num_slots; ++s) score[s] = score[s] * p.decay;
    }
    for (int l = 0; l < p.num_lists; ++l) {
      const ScoredPageList& list = p.lists[l];
      for (int32_t e = 0; e < list.num_selected[i]; ++e) {
        const int32_t slot = list.slots[int64_t{i} * p.max_selected + e];
        const float mass = static_cast<float>(PageMassOf(
            list.chunk_lse, p.lse, list.page_offsets[i], e, i, p.group_size, p.page_size));
        score[slot] = score[slot] + mass;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier
