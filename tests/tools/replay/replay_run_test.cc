// kvtier-replay's driver end to end on the host backend, on a tiny model: the counters are
// consistent, a budget that covers every page captures all the attention mass and matches
// exact attention, and a small one captures less while the kernels stay exact given the
// selection. (The exact-attention measure itself is tested in
// tests/tools/accuracy/attention_accuracy_test.cc.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/base/dtype.h"
#include "tools/replay/replay_config.h"
#include "tools/replay/replay_report.h"
#include "tools/replay/replay_run.h"

namespace kvtier::replay {
namespace {

// 2 layers, 4 query heads over 2 KV heads of D 64; 512-token prompts of 32 pages; a hot set of
// one sink page and four window pages.
ReplayFlags TinyFlags() {
  ReplayFlags f;
  f.model = "custom";
  f.layers = 2;
  f.query_heads = 4;
  f.kv_heads = 2;
  f.head_dim = 64;
  f.context = 512;
  f.batch = 2;
  f.steps = 4;
  f.warmup_steps = 1;
  f.page_size = 16;
  f.sink = 16;
  f.window = 64;
  f.budget = 40;  // more than the 33 pages a sequence ever has
  f.cache_slots = 1;
  f.backend = "host";
  f.accuracy_samples = 3;
  f.accuracy_steps = 2;
  f.seed = 5;
  return f;
}

ReplayResult MustRun(const ReplayFlags& flags) {
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(flags, DeviceFacts{});
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return ReplayResult{};
  absl::StatusOr<ReplayResult> result = RunReplay(*config);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : ReplayResult{};
}

TEST(ReplayRunTest, CountersAreConsistent) {
  ReplayFlags flags = TinyFlags();
  flags.budget = 4;
  flags.cache_slots = 2;
  int64_t prefill_calls = 0, decode_calls = 0;
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ReplayResult> result =
      RunReplay(*config, [&](absl::string_view phase, int64_t done, int64_t total) {
        EXPECT_LE(done, total);
        (phase == "prefill" ? prefill_calls : decode_calls)++;
      });
  ASSERT_TRUE(result.ok()) << result.status();
  const ReplayResult& r = *result;
  EXPECT_EQ(prefill_calls, 2);  // one 512-token chunk per sequence
  EXPECT_EQ(decode_calls, 5);   // warm-up included
  ASSERT_EQ(r.step_ms.size(), 4u);
  for (double ms : r.step_ms) EXPECT_GT(ms, 0);
  EXPECT_EQ(r.prefill_tokens, 2 * 2 * 512);
  // Stats cover the timed steps only: 4 steps x 2 layers, 2 sequences x 2 KV heads each.
  EXPECT_EQ(r.decode.decode_steps, 4 * 2);
  EXPECT_EQ(r.decode.decode_items, 4 * 2 * 2 * 2);
  EXPECT_EQ(r.decode.pages_selected, 4 * 2 * 2 * 2 * 4);  // every item selects its budget
  EXPECT_EQ(r.decode.page_hits + r.decode.page_misses, r.decode.pages_selected);
  const ReplaySummary s = Summarize(r);
  EXPECT_GE(s.hit_rate, 0.0);
  EXPECT_LE(s.hit_rate, 1.0);
  EXPECT_GT(s.tokens_per_second, 0);
  EXPECT_GT(s.bound_step_ms, 0);
  EXPECT_GT(s.hbm_bytes_per_step, 0);
  EXPECT_EQ(r.device.rfind("host (", 0), 0u);
  ASSERT_EQ(r.samples.size(), 3u * 2u);
  for (const AccuracySample& a : r.samples) {
    EXPECT_EQ(a.selected_pages, 4);
    EXPECT_EQ(a.hits + a.misses, 4);
    EXPECT_EQ(a.tokens, 512 + 1 + a.step + 1);
    EXPECT_GT(a.mass_captured, 0.0);
    EXPECT_LE(a.mass_captured, 1.0);
    EXPECT_LE(a.min_mass_captured, a.mass_captured);
    // No index beats the best pages at the same budget.
    EXPECT_LE(a.mass_captured, a.oracle_mass_captured + 1e-12);
    EXPECT_LE(a.oracle_mass_captured, 1.0 + 1e-12);
    // The kernels are exact given the selection: only rounding separates them.
    EXPECT_LT(a.restricted_error, 1e-4) << "step " << a.step << " layer " << a.layer;
  }
}

TEST(ReplayRunTest, ABudgetCoveringEveryPageIsExactAttention) {
  const ReplayResult r = MustRun(TinyFlags());
  ASSERT_EQ(r.samples.size(), 6u);
  for (const AccuracySample& a : r.samples) {
    EXPECT_EQ(a.captured_tokens, a.tokens);
    EXPECT_NEAR(a.mass_captured, 1.0, 1e-12);
    EXPECT_NEAR(a.oracle_mass_captured, 1.0, 1e-12);
    EXPECT_LT(a.output_error, 1e-4);
    EXPECT_LT(a.restricted_error, 1e-4);
  }
  const ReplaySummary s = Summarize(r);
  EXPECT_GE(s.hit_rate, 0.0);
  EXPECT_LE(s.hit_rate, 1.0);
  EXPECT_NEAR(s.min_mass_captured, 1.0, 1e-12);
}

TEST(ReplayRunTest, ASmallBudgetCapturesLessMass) {
  ReplayFlags flags = TinyFlags();
  flags.budget = 1;
  flags.window = 16;
  flags.accuracy_samples = 8;  // every (sequence, layer, KV head)
  const ReplayResult r = MustRun(flags);
  ASSERT_EQ(r.samples.size(), 16u);
  double min_mass = 1;
  for (const AccuracySample& a : r.samples) {
    EXPECT_LT(a.captured_tokens, a.tokens);
    min_mass = std::min(min_mass, a.mass_captured);
    EXPECT_LT(a.restricted_error, 1e-4);
  }
  EXPECT_LT(min_mass, 1.0);
}

TEST(ReplayRunTest, SameSeedSameSelections) {
  ReplayFlags flags = TinyFlags();
  flags.budget = 3;
  const ReplayResult a = MustRun(flags);
  const ReplayResult b = MustRun(flags);
  ASSERT_EQ(a.samples.size(), b.samples.size());
  for (size_t i = 0; i < a.samples.size(); ++i) {
    EXPECT_EQ(a.samples[i].layer, b.samples[i].layer);
    EXPECT_EQ(a.samples[i].mass_captured, b.samples[i].mass_captured);
    EXPECT_EQ(a.samples[i].hits, b.samples[i].hits);
  }
  EXPECT_EQ(a.decode.page_hits, b.decode.page_hits);
}

TEST(ReplayRunTest, ErrorsComeBack) {
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(TinyFlags(), DeviceFacts{});
  ASSERT_TRUE(config.ok()) << config.status();
  config->budget_pages = 0;  // past MakeReplayConfig's checks: the runtime's rejection
  absl::StatusOr<ReplayResult> result = RunReplay(*config);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
}

TEST(ReplayRunTest, PolicyOffLoadsEverySelectedPage) {
  ReplayFlags flags = TinyFlags();
  flags.budget = 4;
  flags.policy = "off";
  const ReplayResult r = MustRun(flags);
  EXPECT_GT(r.decode.pages_selected, 0);
  EXPECT_EQ(r.decode.page_hits, 0);
  EXPECT_EQ(r.decode.page_misses, r.decode.pages_selected);
}

}  // namespace
}  // namespace kvtier::replay
