// LaunchDecodePlan, LaunchBuildSelectedPages, LaunchComputePageMass and LaunchUpdatePageScores
// against their host twins on fresh random inputs. Both sides compute addresses from the same
// device base pointers (the twin never dereferences them), so pointer outputs compare exactly;
// every output starts poisoned on both sides and is compared whole, so an unwritten or extra entry
// shows. Masses compare within fp32 rounding (the twin sums in double). Also: contract-breaking
// plan entries become empty items, and the three launches captured in one CUDA graph and
// replayed on new inputs.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/decode_plan.h"
#include "tests/testing/gpu_test_util.h"
#include "tests/testing/poison.h"

namespace kvtier {
namespace {

using testing_util::kPoisonByte;
using testing_util::Poisoned;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
uint64_t Bits(const T& value) {
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

// One array on both sides: the twin's (host) and the kernel's (device). Outputs start
// poisoned on both; inputs are written into values() and pushed.
template <typename T>
class Mirror {
 public:
  explicit Mirror(size_t n) : host_(n, Poisoned<T>()), device_(Upload(host_)) {}

  std::vector<T>& values() { return host_; }
  T* host() { return host_.data(); }
  T* device() const { return device_.as<T>(); }
  size_t size() const { return host_.size(); }

  // Synchronous: callers order it with cudaDeviceSynchronize before stream work.
  void Push() {
    if (!host_.empty()) {
      EXPECT_EQ(cudaMemcpy(device_.data(), host_.data(), host_.size() * sizeof(T),
                           cudaMemcpyHostToDevice),
                cudaSuccess);
    }
  }
  void Poison() {
    std::fill(host_.begin(), host_.end(), Poisoned<T>());
    Push();
  }
  std::vector<T> Fetch() const { return Download<T>(device_, host_.size()); }

  // Device contents equal the host's bit for bit.
  ::testing::AssertionResult Same(const char* name) const {
    const std::vector<T> got = Fetch();
    for (size_t i = 0; i < host_.size(); ++i) {
      if (std::memcmp(&got[i], &host_[i], sizeof(T)) != 0) {
        return ::testing::AssertionFailure() << name << "[" << i << "]: gpu 0x" << std::hex
                                             << Bits(got[i]) << ", twin 0x" << Bits(host_[i]);
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  std::vector<T> host_;
  DeviceBuffer device_;
};

// ---- DecodePlan --------------------------------------------------------------------------

struct PlanCase {
  int32_t page_size, sinks, window, ring, max_pages, cache_slots;
  int32_t layers, heads, layer, num_slots, batch;
  int64_t page_bytes, bounds_bytes;
};

// Device pools and page tables of one geometry, a batch (edge cases plus random token
// counts), and every output on both sides.
class PlanHarness {
 public:
  PlanHarness(const PlanCase& c, std::mt19937_64& rng)
      : c_(c),
        rows_(int64_t{c.num_slots} * c.layers * c.heads),
        items_(c.batch * c.heads),
        capacity_(items_ * (c.sinks + c.window)),
        seq_slot_(c.batch),
        tokens_(c.batch),
        k_table_(rows_ * c.max_pages),
        v_table_(rows_ * c.max_pages),
        append_k_(items_),
        append_v_(items_),
        append_row_(c.batch),
        writeback_k_(items_),
        writeback_v_(items_),
        summary_tokens_(items_),
        summary_bounds_(items_),
        summary_second_(items_),
        select_begin_(items_),
        select_end_(items_),
        select_bounds_(items_),
        select_second_(items_),
        item_row_(items_),
        page_table_offset_(items_),
        slot_k_base_(items_),
        slot_v_base_(items_),
        hot_offsets_(items_ + 1),
        hot_k_(capacity_),
        hot_v_(capacity_),
        hot_last_tokens_(items_) {
    auto pool = [](int64_t bytes) {
      auto buffer = DeviceBuffer::Allocate(static_cast<size_t>(bytes));
      EXPECT_TRUE(buffer.ok()) << buffer.status();
      return std::move(*buffer);
    };
    hot_k_pool_ = pool(rows_ * (c.sinks + c.ring) * c.page_bytes);
    hot_v_pool_ = pool(rows_ * (c.sinks + c.ring) * c.page_bytes);
    slot_k_pool_ = pool(rows_ * c.cache_slots * c.page_bytes);
    slot_v_pool_ = pool(rows_ * c.cache_slots * c.page_bytes);
    bounds_pool_ = pool(rows_ * c.max_pages * c.bounds_bytes);
    frames_ = pool(2 * rows_ * c.max_pages * 16);
    std::vector<int64_t> order(2 * rows_ * c.max_pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t e = 0; e < rows_ * c.max_pages; ++e) {
      k_table_.values()[e] = frames_.data() + order[2 * e] * 16;
      v_table_.values()[e] = frames_.data() + order[2 * e + 1] * 16;
    }
    k_table_.Push();
    v_table_.Push();
    NewBatch(rng);
  }

  // Distinct slots; the edge-case token counts that fit the batch, then random ones.
  void NewBatch(std::mt19937_64& rng) {
    std::vector<int32_t> slots(c_.num_slots);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::copy(slots.begin(), slots.begin() + c_.batch, seq_slot_.values().begin());
    const int64_t P = c_.page_size, S = c_.sinks, W = c_.window, M = c_.max_pages;
    std::vector<int32_t> tokens;
    for (int64_t t : {int64_t{1}, P - 1, P, S * P - 1, S * P, (S + W) * P - 1, (S + W) * P,
                      (S + W + 1) * P - 1, M * P - 2, M * P - 1}) {
      if (t >= 1 && t <= M * P - 1 && static_cast<int32_t>(tokens.size()) < c_.batch / 2) {
        tokens.push_back(static_cast<int32_t>(t));
      }
    }
    while (static_cast<int32_t>(tokens.size()) < c_.batch) {
      tokens.push_back(static_cast<int32_t>(1 + rng() % (M * P - 1)));
    }
    std::shuffle(tokens.begin(), tokens.end(), rng);
    tokens_.values() = tokens;
    seq_slot_.Push();
    tokens_.Push();
  }

  void PoisonOutputs() {
    append_k_.Poison();
    append_v_.Poison();
    append_row_.Poison();
    writeback_k_.Poison();
    writeback_v_.Poison();
    summary_tokens_.Poison();
    summary_bounds_.Poison();
    summary_second_.Poison();
    select_begin_.Poison();
    select_end_.Poison();
    select_bounds_.Poison();
    select_second_.Poison();
    item_row_.Poison();
    page_table_offset_.Poison();
    slot_k_base_.Poison();
    slot_v_base_.Poison();
    hot_offsets_.Poison();
    hot_k_.Poison();
    hot_v_.Poison();
    hot_last_tokens_.Poison();
  }

  // The twin's params (host arrays) or the kernel's (device arrays); the pools are the same
  // device addresses on both.
  DecodePlanParams Params(bool device) {
    DecodePlanParams p;
    p.storage = ItemStorage{.page_size = c_.page_size,
                            .sink_pages = c_.sinks,
                            .window_pages = c_.window,
                            .ring_pages = c_.ring,
                            .max_pages = c_.max_pages,
                            .cache_slots = c_.cache_slots,
                            .page_bytes = c_.page_bytes,
                            .summary_bytes = c_.bounds_bytes,
                            .hot_k = hot_k_pool_.data(),
                            .hot_v = hot_v_pool_.data(),
                            .slot_k = slot_k_pool_.data(),
                            .slot_v = slot_v_pool_.data(),
                            .summaries = bounds_pool_.data(),
                            .host_k_table = Side(k_table_, device),
                            .host_v_table = Side(v_table_, device)};
    // Two summary arrays of half a page's summary bytes each.
    p.storage.summary_arrays = 2;
    p.storage.summary_offset[1] = int64_t{c_.max_pages} * (c_.bounds_bytes / 2);
    p.storage.summary_stride[0] = p.storage.summary_stride[1] = c_.bounds_bytes / 2;
    p.num_layers = c_.layers;
    p.num_kv_heads = c_.heads;
    p.layer = c_.layer;
    p.batch = c_.batch;
    p.seq_slot = Side(seq_slot_, device);
    p.tokens_before = Side(tokens_, device);
    p.append_k = Side(append_k_, device);
    p.append_v = Side(append_v_, device);
    p.append_row = Side(append_row_, device);
    p.writeback_k_dst = Side(writeback_k_, device);
    p.writeback_v_dst = Side(writeback_v_, device);
    p.summary_tokens = Side(summary_tokens_, device);
    p.summary_dst[0] = Side(summary_bounds_, device);
    p.summary_dst[1] = Side(summary_second_, device);
    p.select_begin = Side(select_begin_, device);
    p.select_end = Side(select_end_, device);
    p.select_summary[0] = Side(select_bounds_, device);
    p.select_summary[1] = Side(select_second_, device);
    p.item_row = Side(item_row_, device);
    p.page_table_offset = Side(page_table_offset_, device);
    p.slot_k_base = Side(slot_k_base_, device);
    p.slot_v_base = Side(slot_v_base_, device);
    p.hot_page_offsets = Side(hot_offsets_, device);
    p.hot_k_pages = Side(hot_k_, device);
    p.hot_v_pages = Side(hot_v_, device);
    p.hot_last_page_tokens = Side(hot_last_tokens_, device);
    return p;
  }

  // Every output, device against twin (after the stream synchronised).
  void ExpectSame() const {
    EXPECT_TRUE(append_k_.Same("append_k"));
    EXPECT_TRUE(append_v_.Same("append_v"));
    EXPECT_TRUE(append_row_.Same("append_row"));
    EXPECT_TRUE(writeback_k_.Same("writeback_k_dst"));
    EXPECT_TRUE(writeback_v_.Same("writeback_v_dst"));
    EXPECT_TRUE(summary_tokens_.Same("summary_tokens"));
    EXPECT_TRUE(summary_bounds_.Same("summary_bounds"));
    EXPECT_TRUE(summary_second_.Same("summary_second"));
    EXPECT_TRUE(select_begin_.Same("select_begin"));
    EXPECT_TRUE(select_end_.Same("select_end"));
    EXPECT_TRUE(select_bounds_.Same("select_bounds"));
    EXPECT_TRUE(select_second_.Same("select_second"));
    EXPECT_TRUE(item_row_.Same("item_row"));
    EXPECT_TRUE(page_table_offset_.Same("page_table_offset"));
    EXPECT_TRUE(slot_k_base_.Same("slot_k_base"));
    EXPECT_TRUE(slot_v_base_.Same("slot_v_base"));
    EXPECT_TRUE(hot_offsets_.Same("hot_page_offsets"));
    EXPECT_TRUE(hot_k_.Same("hot_k_pages"));
    EXPECT_TRUE(hot_v_.Same("hot_v_pages"));
    EXPECT_TRUE(hot_last_tokens_.Same("hot_last_page_tokens"));
  }

  const PlanCase& plan_case() const { return c_; }
  int32_t items() const { return items_; }
  Mirror<int32_t>& seq_slot() { return seq_slot_; }
  Mirror<int32_t>& tokens() { return tokens_; }
  Mirror<void*>& slot_k_base() { return slot_k_base_; }
  Mirror<void*>& slot_v_base() { return slot_v_base_; }
  Mirror<int32_t>& append_row() { return append_row_; }
  Mirror<int32_t>& hot_offsets() { return hot_offsets_; }
  Mirror<const void*>& hot_k() { return hot_k_; }

 private:
  template <typename T>
  static T* Side(Mirror<T>& m, bool device) {
    return device ? m.device() : m.host();
  }

  PlanCase c_;
  int64_t rows_;
  int32_t items_, capacity_;
  DeviceBuffer hot_k_pool_, hot_v_pool_, slot_k_pool_, slot_v_pool_, bounds_pool_, frames_;
  Mirror<int32_t> seq_slot_, tokens_;
  Mirror<const void*> k_table_, v_table_;
  Mirror<void*> append_k_, append_v_;
  Mirror<int32_t> append_row_;
  Mirror<void*> writeback_k_, writeback_v_;
  Mirror<int32_t> summary_tokens_;
  Mirror<void*> summary_bounds_, summary_second_;
  Mirror<int32_t> select_begin_, select_end_;
  Mirror<const void*> select_bounds_, select_second_;
  Mirror<int32_t> item_row_;
  Mirror<int64_t> page_table_offset_;
  Mirror<void*> slot_k_base_, slot_v_base_;
  Mirror<int32_t> hot_offsets_;
  Mirror<const void*> hot_k_, hot_v_;
  Mirror<int32_t> hot_last_tokens_;
};

class DecodePlanGpuTest : public GpuStreamTest {
 protected:
  DecodePlanGpuTest() : GpuStreamTest("GPU decode plan tests") {}
};

void CheckPlan(cudaStream_t stream, const PlanCase& c) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "batch " << c.batch << " x " << c.heads << " heads, P "
                                  << c.page_size << " S " << c.sinks << " W " << c.window << " R "
                                  << c.ring << ", seed " << seed);
  std::mt19937_64 rng(seed);
  PlanHarness h(c, rng);
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(LaunchDecodePlan(h.Params(/*device=*/true), stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  ASSERT_OK(ReferenceDecodePlan(h.Params(/*device=*/false)));
  h.ExpectSame();
}

// P, S, W, R, max_pages, C, layers, heads, layer, slots, batch, page_bytes, bounds_bytes.
TEST_F(DecodePlanGpuTest, Batch64Heads8MatchesTwin) {
  CheckPlan(stream(), {16, 2, 16, 17, 300, 16, 2, 8, 1, 70, 64, 256, 64});
}
TEST_F(DecodePlanGpuTest, NoSinksPage32MatchesTwin) {
  CheckPlan(stream(), {32, 0, 4, 6, 40, 4, 3, 4, 2, 50, 37, 64, 16});
}
TEST_F(DecodePlanGpuTest, ShortSequencesPage64MatchesTwin) {
  CheckPlan(stream(), {64, 4, 3, 4, 12, 2, 1, 2, 0, 30, 30, 128, 32});
}
TEST_F(DecodePlanGpuTest, WindowOneMatchesTwin) {
  CheckPlan(stream(), {16, 1, 1, 2, 6, 1, 2, 3, 1, 9, 9, 16, 16});
}
TEST_F(DecodePlanGpuTest, SingleEntrySingleHeadMatchesTwin) {
  CheckPlan(stream(), {16, 1, 2, 3, 4, 2, 1, 1, 0, 3, 1, 16, 16});
}
TEST_F(DecodePlanGpuTest, Batch1000Heads16MatchesTwin) {  // 16000 items, 125 blocks
  CheckPlan(stream(), {64, 1, 8, 9, 64, 8, 1, 16, 0, 1000, 1000, 16, 16});
}

// Entries that break the contract become empty items; the valid ones are planned as if the
// bad ones were not in the batch (they add no hot pages).
TEST_F(DecodePlanGpuTest, ContractBreakingEntriesBecomeEmptyItems) {
  const PlanCase c{16, 1, 4, 5, 20, 4, 2, 2, 1, 24, 12, 32, 16};
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  PlanHarness all(c, rng);
  const std::vector<int32_t> bad = {0, 5, 6, 11};
  all.seq_slot().values()[0] = -1;
  all.tokens().values()[5] = 0;
  all.tokens().values()[6] = 20 * 16;  // no room for the new token
  all.tokens().values()[11] = -100;
  all.seq_slot().Push();
  all.tokens().Push();
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(LaunchDecodePlan(all.Params(/*device=*/true), stream()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
  EXPECT_EQ(ReferenceDecodePlan(all.Params(/*device=*/false)).code(),
            absl::StatusCode::kInvalidArgument);

  // The twin on the valid entries only.
  PlanCase valid_case = c;
  valid_case.batch = c.batch - static_cast<int32_t>(bad.size());
  PlanHarness valid(valid_case, rng);
  std::vector<int32_t> kept;
  for (int32_t b = 0; b < c.batch; ++b) {
    if (std::find(bad.begin(), bad.end(), b) == bad.end()) kept.push_back(b);
  }
  for (size_t k = 0; k < kept.size(); ++k) {
    valid.seq_slot().values()[k] = all.seq_slot().values()[kept[k]];
    valid.tokens().values()[k] = all.tokens().values()[kept[k]];
  }
  // `valid` has its own pools: compare the plan's offsets and slot bases relative to them.
  DecodePlanParams twin = valid.Params(/*device=*/false);
  const DecodePlanParams gpu_params = all.Params(/*device=*/false);
  twin.storage.slot_k = gpu_params.storage.slot_k;
  twin.storage.slot_v = gpu_params.storage.slot_v;
  twin.storage.hot_k = gpu_params.storage.hot_k;
  twin.storage.hot_v = gpu_params.storage.hot_v;
  ASSERT_OK(ReferenceDecodePlan(twin));

  const std::vector<int32_t> rows = all.append_row().Fetch();
  const std::vector<void*> slot_k = all.slot_k_base().Fetch();
  const std::vector<int32_t> offsets = all.hot_offsets().Fetch();
  const std::vector<const void*> hot_k = all.hot_k().Fetch();
  for (int32_t b = 0, k = 0; b < c.batch; ++b) {
    const bool is_bad = std::find(bad.begin(), bad.end(), b) != bad.end();
    for (int32_t h = 0; h < c.heads; ++h) {
      const int32_t i = b * c.heads + h;
      if (is_bad) {
        EXPECT_EQ(slot_k[i], nullptr) << "entry " << b;
        EXPECT_EQ(offsets[i + 1], offsets[i]) << "entry " << b;
      } else {
        const int32_t j = k * c.heads + h;
        EXPECT_EQ(slot_k[i], valid.slot_k_base().values()[j]) << "entry " << b;
        EXPECT_EQ(offsets[i + 1], valid.hot_offsets().values()[j + 1]) << "entry " << b;
      }
    }
    EXPECT_EQ(rows[b], is_bad ? -1 : valid.append_row().values()[k]) << "entry " << b;
    if (!is_bad) ++k;
  }
  const int32_t total = valid.hot_offsets().values()[valid.items()];
  for (int32_t e = 0; e < total; ++e) {
    ASSERT_EQ(hot_k[e], valid.hot_k().values()[e]) << "hot page " << e;
  }
}

// ---- BuildSelectedPages ------------------------------------------------------------------

struct SelectedHarness {
  SelectedHarness(int32_t num_items, int32_t max_selected, int32_t cache_slots, int32_t page_size,
                  int64_t page_bytes)
      : num_items(num_items),
        max_selected(max_selected),
        cache_slots(cache_slots),
        page_size(page_size),
        page_bytes(page_bytes),
        k_base(num_items),
        v_base(num_items),
        selected(int64_t{num_items} * max_selected),
        num_selected(num_items),
        hits(num_items),
        misses(num_items),
        page_offsets(num_items + 1),
        k_pages(int64_t{num_items} * (max_selected + kMaxAppended)),
        v_pages(int64_t{num_items} * (max_selected + kMaxAppended)),
        last_tokens(num_items),
        counters(3),
        append_offsets(num_items + 1),
        append_k(int64_t{num_items} * kMaxAppended),
        append_v(int64_t{num_items} * kMaxAppended),
        append_last(num_items) {}

  static constexpr int32_t kMaxAppended = 5;

  // An appended list per item (0 to kMaxAppended pages of arbitrary addresses).
  void RandomizeAppended(std::mt19937_64& rng, std::byte* pool) {
    int32_t offset = 0;
    for (int32_t i = 0; i < num_items; ++i) {
      append_offsets.values()[i] = offset;
      const int32_t n = static_cast<int32_t>(rng() % (kMaxAppended + 1));
      for (int32_t a = 0; a < n; ++a, ++offset) {
        append_k.values()[offset] = pool + (rng() % 4096) * 16;
        append_v.values()[offset] = pool + (rng() % 4096) * 16;
      }
      append_last.values()[i] = 1 + static_cast<int32_t>(rng() % page_size);
    }
    append_offsets.values()[num_items] = offset;
    append_offsets.Push();
    append_k.Push();
    append_v.Push();
    append_last.Push();
    with_append = true;
  }

  // Item bases spread over the pools out of item order; counts (none, all or random), random
  // slots, hits and misses.
  void Randomize(std::mt19937_64& rng, std::byte* k_pool, std::byte* v_pool) {
    for (int32_t i = 0; i < num_items; ++i) {
      const int64_t at = int64_t{(int64_t{i} * 7919) % num_items} * cache_slots * page_bytes;
      k_base.values()[i] = k_pool + at;
      v_base.values()[i] = v_pool + at;
    }
    k_base.Push();
    v_base.Push();
    RandomizeSelection(rng);
  }
  void RandomizeSelection(std::mt19937_64& rng) {
    for (int32_t i = 0; i < num_items; ++i) {
      const uint64_t kind = rng() % 4;
      const int32_t n = kind == 0   ? 0
                        : kind == 1 ? max_selected
                                    : static_cast<int32_t>(rng() % (max_selected + 1));
      num_selected.values()[i] = n;
      for (int32_t e = 0; e < max_selected; ++e) {
        selected.values()[int64_t{i} * max_selected + e] =
            e < n ? static_cast<int32_t>(rng() % cache_slots) : -7;
      }
      hits.values()[i] = static_cast<int32_t>(rng() % (n + 1));
      misses.values()[i] = n - hits.values()[i];
    }
    selected.Push();
    num_selected.Push();
    hits.Push();
    misses.Push();
  }
  void SetCounters(std::mt19937_64& rng) {
    for (auto& v : counters.values()) v = rng() % 100000;
    counters.Push();
  }
  void PoisonOutputs() {
    page_offsets.Poison();
    k_pages.Poison();
    v_pages.Poison();
    last_tokens.Poison();
  }

  SelectedPagesParams Params(bool device, bool with_counters = true) {
    auto side = [device](auto& m) { return device ? m.device() : m.host(); };
    SelectedPagesParams p;
    p.num_items = num_items;
    p.max_selected = max_selected;
    p.page_size = page_size;
    p.page_bytes = page_bytes;
    p.slot_k_base = side(k_base);
    p.slot_v_base = side(v_base);
    p.selected_slots = side(selected);
    p.num_selected = side(num_selected);
    p.hit_count = with_counters ? side(hits) : nullptr;
    p.miss_count = with_counters ? side(misses) : nullptr;
    p.page_offsets = side(page_offsets);
    p.k_pages = side(k_pages);
    p.v_pages = side(v_pages);
    p.last_page_tokens = side(last_tokens);
    p.counters = with_counters ? side(counters) : nullptr;
    if (with_append) {
      p.append_offsets = side(append_offsets);
      p.append_k = side(append_k);
      p.append_v = side(append_v);
      p.append_last = side(append_last);
    }
    return p;
  }

  void ExpectSame() const {
    EXPECT_TRUE(page_offsets.Same("page_offsets"));
    EXPECT_TRUE(k_pages.Same("k_pages"));
    EXPECT_TRUE(v_pages.Same("v_pages"));
    EXPECT_TRUE(last_tokens.Same("last_page_tokens"));
    EXPECT_TRUE(counters.Same("counters"));
  }

  int32_t num_items, max_selected, cache_slots, page_size;
  int64_t page_bytes;
  Mirror<void*> k_base, v_base;
  Mirror<int32_t> selected, num_selected, hits, misses;
  Mirror<int32_t> page_offsets;
  Mirror<const void*> k_pages, v_pages;
  Mirror<int32_t> last_tokens;
  Mirror<unsigned long long> counters;
  Mirror<int32_t> append_offsets;
  Mirror<const void*> append_k, append_v;
  Mirror<int32_t> append_last;
  bool with_append = false;
};

// `shift` > 0 places the device num_selected `shift` ints past a 16-byte boundary (the
// kernel reads earlier tiles' counts with 16-byte loads between a scalar head and tail).
void CheckSelectedPages(cudaStream_t stream, int32_t num_items, int32_t max_selected,
                        int32_t cache_slots, int32_t page_size, bool with_counters,
                        int32_t shift = 0, bool with_append = false) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << num_items << " items, max " << max_selected
                                  << (with_counters ? "" : ", no counters") << ", shift " << shift
                                  << ", seed " << seed);
  std::mt19937_64 rng(seed);
  constexpr int64_t kPageBytes = 256;
  ASSERT_OK_AND_ASSIGN(DeviceBuffer k_pool,
                       DeviceBuffer::Allocate(int64_t{num_items} * cache_slots * kPageBytes));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer v_pool,
                       DeviceBuffer::Allocate(int64_t{num_items} * cache_slots * kPageBytes));
  SelectedHarness h(num_items, max_selected, cache_slots, page_size, kPageBytes);
  h.Randomize(rng, k_pool.data(), v_pool.data());
  h.SetCounters(rng);
  if (with_append) h.RandomizeAppended(rng, k_pool.data());
  SelectedPagesParams device_params = h.Params(true, with_counters);
  ASSERT_OK_AND_ASSIGN(DeviceBuffer shifted,
                       DeviceBuffer::Allocate((num_items + shift) * sizeof(int32_t)));
  if (shift > 0) {
    ASSERT_CUDA_OK(cudaMemcpy(shifted.as<int32_t>() + shift, h.num_selected.host(),
                              num_items * sizeof(int32_t), cudaMemcpyHostToDevice));
    device_params.num_selected = shifted.as<int32_t>() + shift;
  }
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(LaunchBuildSelectedPages(device_params, stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  ASSERT_OK(ReferenceBuildSelectedPages(h.Params(false, with_counters)));
  h.ExpectSame();
}

TEST_F(DecodePlanGpuTest, SelectedPagesBatch64Heads8MatchesTwin) {
  CheckSelectedPages(stream(), 512, 32, 96, 16, true);
}
TEST_F(DecodePlanGpuTest, SelectedPagesWithoutCountersMatchesTwin) {
  CheckSelectedPages(stream(), 77, 5, 9, 64, false);
}
TEST_F(DecodePlanGpuTest, SelectedPagesWithAppendedListMatchesTwin) {
  CheckSelectedPages(stream(), 512, 32, 96, 16, true, 0, /*with_append=*/true);
  CheckSelectedPages(stream(), 16003, 8, 8, 32, false, 1, /*with_append=*/true);
  CheckSelectedPages(stream(), 3, 2, 4, 64, true, 0, /*with_append=*/true);
}
TEST_F(DecodePlanGpuTest, SelectedPagesOneItemMatchesTwin) {
  CheckSelectedPages(stream(), 1, 1, 1, 32, true);
}
TEST_F(DecodePlanGpuTest, SelectedPages16KItemsMatchesTwin) {
  CheckSelectedPages(stream(), 16000, 24, 24, 16, true);
}
TEST_F(DecodePlanGpuTest, SelectedPagesUnalignedCountsMatchesTwin) {
  for (int32_t shift : {1, 2, 3}) CheckSelectedPages(stream(), 3001, 12, 16, 32, true, shift);
  CheckSelectedPages(stream(), 16003, 8, 8, 16, false, 1);
}

// ---- ComputePageMass ---------------------------------------------------------------------

struct MassHarness {
  MassHarness(int32_t num_items, int32_t group_size, int32_t max_selected, int32_t page_size)
      : num_items(num_items),
        group_size(group_size),
        max_selected(max_selected),
        page_size(page_size),
        offsets(num_items + 1),
        num_selected(num_items),
        // Capacity of the attention list: max_selected + 1 pages an item.
        chunk_lse(int64_t{num_items} * (max_selected + 1) * (page_size / 16) * group_size),
        lse(int64_t{num_items} * group_size),
        mass(int64_t{num_items} * max_selected) {}

  // Counts (none, all, random), sometimes an extra unselected page in an item's list; lses
  // around their totals, some -inf; some totals -inf.
  void Randomize(std::mt19937_64& rng) {
    const int32_t chunks = page_size / 16;
    std::uniform_real_distribution<float> total_lse(-4.0f, 12.0f), below(-9.0f, 0.5f);
    offsets.values()[0] = 0;
    for (int32_t i = 0; i < num_items; ++i) {
      const uint64_t kind = rng() % 4;
      const int32_t n = kind == 0   ? 0
                        : kind == 1 ? max_selected
                                    : static_cast<int32_t>(rng() % (max_selected + 1));
      num_selected.values()[i] = n;
      offsets.values()[i + 1] = offsets.values()[i] + n + static_cast<int32_t>(rng() % 2);
    }
    for (float& v : lse.values()) v = rng() % 17 == 0 ? kNegInf : total_lse(rng);
    for (int32_t i = 0; i < num_items; ++i) {
      for (int64_t page = offsets.values()[i]; page < offsets.values()[i + 1]; ++page) {
        for (int32_t k = 0; k < chunks; ++k) {
          for (int32_t h = 0; h < group_size; ++h) {
            const float total = lse.values()[int64_t{i} * group_size + h];
            chunk_lse.values()[(page * chunks + k) * group_size + h] =
                total == kNegInf || rng() % 11 == 0 ? kNegInf : total + below(rng);
          }
        }
      }
    }
    offsets.Push();
    num_selected.Push();
    chunk_lse.Push();
    lse.Push();
  }

  PageMassParams Params(bool device) {
    auto side = [device](auto& m) { return device ? m.device() : m.host(); };
    PageMassParams p;
    p.num_items = num_items;
    p.group_size = group_size;
    p.max_selected = max_selected;
    p.page_size = page_size;
    p.page_offsets = side(offsets);
    p.num_selected = side(num_selected);
    p.chunk_lse = side(chunk_lse);
    p.lse = side(lse);
    p.mass = side(mass);
    return p;
  }

  int32_t num_items, group_size, max_selected, page_size;
  Mirror<int32_t> offsets, num_selected;
  Mirror<float> chunk_lse, lse;
  Mirror<float> mass;
};

// fp32 (device) against double (twin): relative 1e-5 plus a small absolute term; entries the
// twin left poisoned must be poisoned on the device too.
::testing::AssertionResult SameMass(Mirror<float>& mass) {
  const std::vector<float> got = mass.Fetch();
  for (size_t i = 0; i < got.size(); ++i) {
    const float want = mass.values()[i];
    if (Bits(want) == testing_util::kPoisonFloatBits ||
        Bits(got[i]) == testing_util::kPoisonFloatBits) {
      if (Bits(want) != Bits(got[i])) {
        return ::testing::AssertionFailure()
               << "mass[" << i << "]: gpu " << got[i] << ", twin " << want << " (one unwritten)";
      }
      continue;
    }
    if (!(std::fabs(got[i] - want) <= 1e-5f * std::fabs(want) + 1e-7f)) {
      return ::testing::AssertionFailure()
             << "mass[" << i << "]: gpu " << got[i] << ", twin " << want;
    }
  }
  return ::testing::AssertionSuccess();
}

void CheckPageMass(cudaStream_t stream, int32_t num_items, int32_t group_size, int32_t max_selected,
                   int32_t page_size) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << num_items << " items, G " << group_size << ", max "
                                  << max_selected << ", P " << page_size << ", seed " << seed);
  std::mt19937_64 rng(seed);
  MassHarness h(num_items, group_size, max_selected, page_size);
  h.Randomize(rng);
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(LaunchComputePageMass(h.Params(true), stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  ASSERT_OK(ReferenceComputePageMass(h.Params(false)));
  EXPECT_TRUE(SameMass(h.mass));
}

TEST_F(DecodePlanGpuTest, PageMassBatch64Heads8MatchesTwin) {
  CheckPageMass(stream(), 512, 4, 32, 16);
}
TEST_F(DecodePlanGpuTest, PageMassPage32Group8MatchesTwin) {
  CheckPageMass(stream(), 100, 8, 16, 32);
}
TEST_F(DecodePlanGpuTest, PageMassPage64Group1MatchesTwin) {
  CheckPageMass(stream(), 33, 1, 7, 64);
}

// ---- UpdatePageScores ----------------------------------------------------------------------

// Two page lists (hits, misses) of random masses over distinct slots of each item, item rows
// scattered over a larger score directory whose other rows must stay as they were.
void CheckPageScores(cudaStream_t stream, int32_t num_items, int32_t group_size,
                     int32_t max_selected, int32_t page_size, float decay) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << num_items << " items, G " << group_size << ", max "
                                  << max_selected << ", P " << page_size << ", decay " << decay
                                  << ", seed " << seed);
  std::mt19937_64 rng(seed);
  MassHarness hits(num_items, group_size, max_selected, page_size);
  MassHarness misses(num_items, group_size, max_selected, page_size);
  hits.Randomize(rng);
  misses.Randomize(rng);
  const int32_t num_slots = 2 * max_selected + 3;
  const int32_t num_rows = 2 * num_items + 5;
  Mirror<int32_t> hit_slots(int64_t{num_items} * max_selected);
  Mirror<int32_t> miss_slots(int64_t{num_items} * max_selected);
  Mirror<int32_t> rows(num_items);
  Mirror<float> scores(int64_t{num_rows} * num_slots);
  std::vector<int32_t> all_rows(num_rows);
  std::iota(all_rows.begin(), all_rows.end(), 0);
  std::shuffle(all_rows.begin(), all_rows.end(), rng);
  std::vector<int32_t> slots(num_slots);
  for (int32_t i = 0; i < num_items; ++i) {
    rows.values()[i] = all_rows[i];
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    for (int32_t e = 0; e < max_selected; ++e) {
      hit_slots.values()[int64_t{i} * max_selected + e] = slots[e];
      miss_slots.values()[int64_t{i} * max_selected + e] = slots[max_selected + e];
    }
  }
  std::uniform_real_distribution<float> score(0.0f, 8.0f);
  for (float& v : scores.values()) v = score(rng);
  hit_slots.Push();
  miss_slots.Push();
  rows.Push();
  scores.Push();
  auto params = [&](bool device) {
    auto side = [device](auto& m) { return device ? m.device() : m.host(); };
    PageScoreUpdateParams p;
    p.num_items = num_items;
    p.group_size = group_size;
    p.max_selected = max_selected;
    p.page_size = page_size;
    p.num_slots = num_slots;
    p.lse = side(hits.lse);
    p.num_lists = 2;
    p.lists[0] = {side(hits.offsets), side(hits.num_selected), side(hit_slots),
                  side(hits.chunk_lse)};
    p.lists[1] = {side(misses.offsets), side(misses.num_selected), side(miss_slots),
                  side(misses.chunk_lse)};
    p.slot_score = side(scores);
    p.item_rows = side(rows);
    p.num_rows = num_rows;
    p.decay = decay;
    return p;
  };
  ASSERT_CUDA_OK(cudaDeviceSynchronize());
  ASSERT_OK(LaunchUpdatePageScores(params(true), stream));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream));
  const std::vector<float> before = scores.values();
  ASSERT_OK(ReferenceUpdatePageScores(params(false)));
  const std::vector<float> got = scores.Fetch();
  int64_t changed = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    const float want = scores.values()[k];
    ASSERT_FALSE(std::isnan(got[k])) << "score " << k;
    ASSERT_NEAR(got[k], want, 1e-5f * std::fabs(want) + 1e-6f) << "score " << k;
    changed += want != before[k] ? 1 : 0;
  }
  if (decay != 1.0f) {
    EXPECT_GT(changed, 0);  // the comparison covers updated scores
  }
}

TEST_F(DecodePlanGpuTest, PageScoresBatch64Heads8MatchesTwin) {
  CheckPageScores(stream(), 512, 4, 32, 16, 0.99f);
}
TEST_F(DecodePlanGpuTest, PageScoresPage32Group8NoDecayMatchesTwin) {
  CheckPageScores(stream(), 100, 8, 16, 32, 1.0f);
}
TEST_F(DecodePlanGpuTest, PageScoresPage64Group1MatchesTwin) {
  CheckPageScores(stream(), 33, 1, 7, 64, 0.5f);
}

TEST_F(DecodePlanGpuTest, BadShapesAreInvalidAndEmptyLaunchesNothing) {
  DecodePlanParams plan;
  plan.storage = ItemStorage{.page_size = 16,
                             .sink_pages = 1,
                             .window_pages = 2,
                             .ring_pages = 3,
                             .max_pages = 8,
                             .cache_slots = 4,
                             .page_bytes = 4096,
                             .summary_bytes = 512,
                             .summary_stride = {512}};
  plan.num_layers = 2;
  plan.num_kv_heads = 8;
  plan.layer = 1;
  EXPECT_TRUE(LaunchDecodePlan(plan, stream()).ok());  // batch 0
  plan.batch = 4;                                      // arrays missing
  EXPECT_EQ(LaunchDecodePlan(plan, stream()).code(), absl::StatusCode::kInvalidArgument);
  plan.storage.ring_pages = 2;
  EXPECT_EQ(LaunchDecodePlan(plan, stream()).code(), absl::StatusCode::kInvalidArgument);
  SelectedPagesParams selected;
  selected.max_selected = 4;
  selected.page_size = 16;
  selected.page_bytes = 4096;
  EXPECT_TRUE(LaunchBuildSelectedPages(selected, stream()).ok());
  selected.num_items = 3;
  EXPECT_EQ(LaunchBuildSelectedPages(selected, stream()).code(),
            absl::StatusCode::kInvalidArgument);
  PageMassParams mass;
  mass.group_size = 4;
  mass.max_selected = 4;
  mass.page_size = 16;
  EXPECT_TRUE(LaunchComputePageMass(mass, stream()).ok());
  mass.page_size = 48;
  EXPECT_EQ(LaunchComputePageMass(mass, stream()).code(), absl::StatusCode::kInvalidArgument);
  PageScoreUpdateParams scores;
  scores.group_size = 4;
  scores.max_selected = 4;
  scores.page_size = 16;
  scores.num_slots = 8;
  scores.num_lists = 2;
  EXPECT_TRUE(LaunchUpdatePageScores(scores, stream()).ok());
  scores.num_items = 3;  // arrays missing
  EXPECT_EQ(LaunchUpdatePageScores(scores, stream()).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));
}

// ---- The three launches in one graph --------------------------------------------------------

// DecodePlan -> BuildSelectedPages (slot bases from the plan) -> ComputePageMass (page offsets
// from BuildSelectedPages), captured once and replayed on new inputs each time.
TEST_F(DecodePlanGpuTest, GraphOfThreeLaunchesReplaysOnNewInputs) {
  const PlanCase c{16, 2, 8, 9, 128, 64, 2, 8, 1, 80, 64, 64, 16};
  constexpr int32_t kMaxSelected = 32, kGroup = 4;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed);
  PlanHarness plan(c, rng);
  const int32_t items = plan.items();
  SelectedHarness selected(items, kMaxSelected, c.cache_slots, c.page_size, c.page_bytes);
  MassHarness mass(items, kGroup, kMaxSelected, c.page_size);
  selected.SetCounters(rng);

  // The graph's device params chain the three: selected pages read the plan's slot bases,
  // the mass reads the selected pages' offsets.
  SelectedPagesParams selected_device = selected.Params(true);
  selected_device.slot_k_base = plan.slot_k_base().device();
  selected_device.slot_v_base = plan.slot_v_base().device();
  PageMassParams mass_device = mass.Params(true);
  mass_device.page_offsets = selected.page_offsets.device();
  mass_device.num_selected = selected.num_selected.device();

  cudaGraph_t graph = nullptr;
  ASSERT_CUDA_OK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
  const absl::Status plan_captured = LaunchDecodePlan(plan.Params(true), stream());
  const absl::Status selected_captured = LaunchBuildSelectedPages(selected_device, stream());
  const absl::Status mass_captured = LaunchComputePageMass(mass_device, stream());
  ASSERT_CUDA_OK(cudaStreamEndCapture(stream(), &graph));
  ASSERT_OK(plan_captured);
  ASSERT_OK(selected_captured);
  ASSERT_OK(mass_captured);
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

  for (int replay = 0; replay < 3; ++replay) {
    SCOPED_TRACE(testing::Message() << "replay " << replay);
    if (replay > 0) plan.NewBatch(rng);
    selected.RandomizeSelection(rng);
    // The mass's inputs follow the new selection: offsets are the selected pages' offsets.
    mass.num_selected.values() = selected.num_selected.values();
    mass.offsets.values()[0] = 0;
    for (int32_t i = 0; i < items; ++i) {
      mass.offsets.values()[i + 1] = mass.offsets.values()[i] + mass.num_selected.values()[i];
    }
    std::uniform_real_distribution<float> total_lse(-2.0f, 10.0f), below(-8.0f, 0.5f);
    for (float& v : mass.lse.values()) v = total_lse(rng);
    for (float& v : mass.chunk_lse.values()) v = rng() % 13 == 0 ? kNegInf : below(rng) + 4.0f;
    mass.lse.Push();
    mass.chunk_lse.Push();
    plan.PoisonOutputs();
    selected.PoisonOutputs();
    mass.mass.Poison();
    ASSERT_CUDA_OK(cudaDeviceSynchronize());
    ASSERT_CUDA_OK(cudaGraphLaunch(exec, stream()));
    ASSERT_CUDA_OK(cudaStreamSynchronize(stream()));

    ASSERT_OK(ReferenceDecodePlan(plan.Params(false)));
    SelectedPagesParams selected_host = selected.Params(false);
    selected_host.slot_k_base = plan.slot_k_base().host();
    selected_host.slot_v_base = plan.slot_v_base().host();
    ASSERT_OK(ReferenceBuildSelectedPages(selected_host));
    ASSERT_EQ(selected.page_offsets.values(), mass.offsets.values());
    ASSERT_OK(ReferenceComputePageMass(mass.Params(false)));
    plan.ExpectSame();
    selected.ExpectSame();  // counters accumulate over replays on both sides
    EXPECT_TRUE(SameMass(mass.mass));
  }
  ASSERT_CUDA_OK(cudaGraphExecDestroy(exec));
  ASSERT_CUDA_OK(cudaGraphDestroy(graph));
}

}  // namespace
}  // namespace kvtier
