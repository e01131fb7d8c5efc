// KvCache on the host backend: the statistics counters against what the calls did, and what
// Inspect reports of a layer's last decode.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cache_resolve.h"
#include "runtime/kv_cache.h"
#include "tests/runtime/page_cache_model.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"

namespace kvtier {
namespace {

using runtime_test::AnyNaN;
using runtime_test::DecodeInputs;
using runtime_test::Driver;
using runtime_test::ExpectClose;
using runtime_test::ExpectTopK;
using runtime_test::Geometry;
using runtime_test::HostOptions;
using runtime_test::HostRelTolerance;
using runtime_test::kHostAbsTolerance;
using runtime_test::PageCacheModel;
using runtime_test::QuestScores;
using runtime_test::RandomBatch;
using runtime_test::RandomOutDType;
using runtime_test::Uniform;

#define ASSERT_OK(expr) KVTIER_RT_ASSERT_OK(expr)
#define EXPECT_OK(expr) KVTIER_RT_EXPECT_OK(expr)

// ---- 6. Statistics ------------------------------------------------------------------------

// The counters agree with what Inspect reports step by step and with the token counts;
// byte counts follow from them; the bound is positive after decodes; ResetStats zeroes the
// counters but not the memory in use.
TEST(KvCacheStatsTest, CountersAreConsistent) {
  // Four sink pages, so that the 20-token sequence is shorter than its sink region.
  Options o = HostOptions(2, 64, DType::kFP16, 16, 64, 32);
  o.budget.max_pages = 3;
  o.cache_slots_per_budget = 1.5;
  o.collect_timings = true;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  const Geometry& geo = d.geometry();
  const int hk = o.shape.num_kv_heads, p = o.page_size;
  const int64_t page_bytes = PageBytes(o.shape, p);
  std::mt19937_64 rng(51);

  const std::vector<SeqId> seqs = {1, 2, 3};
  std::vector<LayerStats> want(2);
  for (SeqId seq : seqs) {
    ASSERT_OK(d.Add(seq));
    const int64_t tokens = seq == 3 ? 20 : Uniform(rng, 200, 700);
    for (int layer = 0; layer < 2; ++layer) {
      ASSERT_OK(d.PrefillRandom(seq, layer, tokens, rng, 100));
      want[layer].prefill_tokens += tokens;
      want[layer].prefill_bytes_stored += tokens / p * hk * 2 * page_bytes;
    }
  }
  {
    const Stats stats = d.cache().GetStats();
    EXPECT_EQ(stats.Total().decode_steps, 0);
    EXPECT_EQ(stats.DecodeBoundMs(), 0.0) << "no decode yet";
    EXPECT_EQ(stats.host_pages_used, d.model().HostPagesNeeded(p));
    EXPECT_EQ(stats.num_sequences, 3);
    EXPECT_EQ(stats.gpu_bytes_reserved, 0) << "host backend";
  }
  for (int step = 0; step < 40; ++step) {
    const int layer = step % 3 == 0 ? 1 : 0;
    const std::vector<SeqId> batch = RandomBatch(seqs, 3, rng);
    for (SeqId seq : batch) {
      if (d.model().Tokens(seq, layer) % p == p - 1) {
        want[layer].bytes_written_back += int64_t{hk} * 2 * page_bytes;
      }
    }
    const DecodeInputs in = d.RandomDecodeInputs(batch.size(), rng, 2.0f);
    std::vector<float> out;
    ASSERT_OK(d.Decode(layer, batch, in, DType::kFP32, &out));
    for (SeqId seq : batch) {
      const int64_t tokens = d.model().Tokens(seq, layer);       // after the append
      const int64_t kv_row = 2 * int64_t{o.shape.head_dim} * 2;  // K and V of one token, fp16
      want[layer].hot_bytes_read +=
          static_cast<int64_t>(geo.HotTokens(tokens).size()) * hk * kv_row;
      want[layer].summary_bytes_read += geo.NumCold(tokens) * hk * kv_row;  // 2 x D bounds
    }
    want[layer].decode_steps += 1;
    want[layer].decode_items += static_cast<int64_t>(batch.size()) * hk;
    absl::StatusOr<std::vector<std::vector<KvCache::CacheInspection>>> x =
        d.InspectBatch(layer, batch);
    ASSERT_TRUE(x.ok()) << x.status();
    for (size_t b = 0; b < batch.size(); ++b) {
      EXPECT_GE(geo.NumCold(d.model().Tokens(batch[b], layer)), 0);
      for (const KvCache::CacheInspection& i : (*x)[b]) {
        want[layer].pages_selected += static_cast<int64_t>(i.selected_pages.size());
        want[layer].page_hits += i.hits;
        want[layer].page_misses += i.misses;
      }
    }
  }
  const Stats stats = d.cache().GetStats();
  ASSERT_EQ(stats.layers.size(), 2u);
  for (int layer = 0; layer < 2; ++layer) {
    const LayerStats& s = stats.layers[layer];
    const LayerStats& w = want[layer];
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    EXPECT_EQ(s.decode_steps, w.decode_steps);
    EXPECT_EQ(s.decode_items, w.decode_items);
    EXPECT_EQ(s.prefill_tokens, w.prefill_tokens);
    EXPECT_EQ(s.prefill_bytes_stored, w.prefill_bytes_stored);
    EXPECT_EQ(s.pages_selected, w.pages_selected);
    EXPECT_EQ(s.page_hits, w.page_hits);
    EXPECT_EQ(s.page_misses, w.page_misses);
    EXPECT_EQ(s.pages_selected, s.page_hits + s.page_misses);
    EXPECT_GT(s.page_misses, 0);
    EXPECT_EQ(s.bytes_loaded, s.page_misses * 2 * page_bytes);
    EXPECT_EQ(s.selected_bytes_read, s.pages_selected * 2 * page_bytes);
    EXPECT_EQ(s.bytes_written_back, w.bytes_written_back);
    EXPECT_EQ(s.hot_bytes_read, w.hot_bytes_read) << "hot set: sinks plus window tokens";
    EXPECT_EQ(s.summary_bytes_read, w.summary_bytes_read) << "bounds of the cold pages";
    EXPECT_GE(s.plan_ms, 0.0);
    EXPECT_GE(s.select_ms, 0.0);
    EXPECT_GE(s.resolve_ms, 0.0);
    EXPECT_GE(s.load_ms, 0.0);
    EXPECT_GE(s.attend_ms, 0.0);
    EXPECT_GT(s.step_ms, 0.0) << "collect_timings is on";
  }
  EXPECT_GT(stats.DecodeBoundMs(), 0.0);
  EXPECT_EQ(stats.hbm_bytes_per_second, o.hbm_bytes_per_second);
  EXPECT_EQ(stats.pcie_bytes_per_second, o.pcie_bytes_per_second);
  EXPECT_EQ(stats.host_pages_used, d.model().HostPagesNeeded(p));
  const LayerStats total = stats.Total();
  EXPECT_EQ(total.pages_selected, want[0].pages_selected + want[1].pages_selected);

  d.cache().ResetStats();
  const Stats reset = d.cache().GetStats();
  EXPECT_EQ(reset.Total().decode_steps, 0);
  EXPECT_EQ(reset.Total().pages_selected, 0);
  EXPECT_EQ(reset.Total().page_hits, 0);
  EXPECT_EQ(reset.Total().bytes_loaded, 0);
  EXPECT_EQ(reset.Total().step_ms, 0.0);
  EXPECT_EQ(reset.DecodeBoundMs(), 0.0);
  EXPECT_EQ(reset.host_pages_used, d.model().HostPagesNeeded(p));
  EXPECT_EQ(reset.num_sequences, 3);
  // Counting resumes from zero.
  const DecodeInputs in = d.RandomDecodeInputs(1, rng);
  ASSERT_OK(d.Decode(0, {1}, in, DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> x = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(x.ok());
  const LayerStats after = d.cache().GetStats().layers[0];
  EXPECT_EQ(after.decode_steps, 1);
  EXPECT_EQ(after.pages_selected, after.page_hits + after.page_misses);
  EXPECT_EQ(after.pages_selected,
            hk * std::min<int64_t>(o.budget.max_pages, geo.NumCold(d.model().Tokens(1, 0))));
}

// ---- Inspect ------------------------------------------------------------------------------

// kv_cache.h: Inspect reports "the last Decode of `layer` that included `seq`", which need not
// be the layer's last Decode.
TEST(KvCacheInspectTest, ReportsTheLayersLastDecodeWhenItIncludedTheSequence) {
  Options o = HostOptions(1, 64, DType::kBF16, 16, 0, 16);
  o.budget.max_pages = 2;
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  Driver& d = **created;
  std::mt19937_64 rng(61);
  for (SeqId seq : {1, 2}) {
    ASSERT_OK(d.Add(seq));
    for (int layer = 0; layer < 2; ++layer) ASSERT_OK(d.PrefillRandom(seq, layer, 200, rng));
  }
  ASSERT_OK(d.Decode(0, {1, 2}, d.RandomDecodeInputs(2, rng), DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> first = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->selected_pages.size(), 2u);
  EXPECT_EQ(first->hits + first->misses, 2);
  // Another layer's decode does not change layer 0's report.
  ASSERT_OK(d.Decode(1, {1}, d.RandomDecodeInputs(1, rng), DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> other_layer = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(other_layer.ok());
  EXPECT_EQ(other_layer->selected_pages, first->selected_pages);
  // A decode of layer 0 without sequence 1: the layer's step arrays now hold another batch,
  // so the selection part is empty (kv_cache.h), while the directory is still sequence 1's.
  ASSERT_OK(d.Decode(0, {2}, d.RandomDecodeInputs(1, rng), DType::kFP32, nullptr));
  absl::StatusOr<KvCache::CacheInspection> later = d.cache().Inspect(1, 0, 0);
  ASSERT_TRUE(later.ok());
  EXPECT_TRUE(later->selected_pages.empty());
  EXPECT_EQ(later->hits, 0);
  EXPECT_EQ(later->misses, 0);
  EXPECT_EQ(later->slot_page, first->slot_page);
  // A removed sequence is never reported, even when its id comes back.
  ASSERT_OK(d.cache().RemoveSequence(2));
  ASSERT_OK(d.cache().AddSequence(2));
  absl::StatusOr<KvCache::CacheInspection> readded = d.cache().Inspect(2, 0, 0);
  ASSERT_TRUE(readded.ok());
  EXPECT_TRUE(readded->selected_pages.empty());
}

}  // namespace
}  // namespace kvtier
