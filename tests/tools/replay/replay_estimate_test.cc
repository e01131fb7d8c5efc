// kvtier-replay's estimation of the rest: --estimate_fraction=1 with --index=wave estimates
// every cold page that is not retrieved (ReplayConfig::estimate_rest, Options::budget.
// estimate_rest) instead of a zone in pages; page bounds refuses it; the report says so; and a
// tiny host run estimates exactly the cold tokens the selection left.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/options.h"
#include "tests/testing/json_checker.h"
#include "tools/replay/replay_config.h"
#include "tools/replay/replay_report.h"
#include "tools/replay/replay_run.h"

namespace kvtier::replay {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing_util::JsonChecker;

// The wave index on a host run of 4096-token prompts, 1 warm-up + 15 steps: 4112 tokens after
// the last step, 257 pages of which [4, 257 - 64) = 189 are cold (3024 tokens).
ReplayFlags WaveFlags(double estimate_fraction) {
  ReplayFlags flags;
  flags.index = "wave";
  flags.context = 4096;
  flags.steps = 15;
  flags.warmup_steps = 1;
  flags.estimate_fraction = estimate_fraction;
  return flags;
}

TEST(ReplayEstimateRestTest, FractionOneWithTheWaveIndexEstimatesTheRest) {
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(WaveFlags(1.0), DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->index, IndexKind::kWave);
  EXPECT_TRUE(c->estimate_rest);
  EXPECT_EQ(c->estimate_pages, 0);
  absl::StatusOr<Options> o = MakeOptions(*c);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->index, IndexKind::kWave);
  EXPECT_TRUE(o->budget.estimate_rest);
  EXPECT_EQ(o->budget.estimate_pages, 0);
  EXPECT_TRUE(ValidateOptions(*o).ok()) << ValidateOptions(*o);
}

// --value_shift (on by default) reaches Options::budget.value_shift.
TEST(ReplayEstimateRestTest, ValueShiftFlagReachesTheOptions) {
  absl::StatusOr<ReplayConfig> on = MakeReplayConfig(WaveFlags(1.0), DeviceFacts{});
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->value_shift);
  EXPECT_TRUE(MakeOptions(*on)->budget.value_shift);
  ReplayFlags flags = WaveFlags(1.0);
  flags.value_shift = false;
  absl::StatusOr<ReplayConfig> off = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->value_shift);
  EXPECT_FALSE(MakeOptions(*off)->budget.value_shift);
}

TEST(ReplayEstimateRestTest, AFractionBelowOneIsStillAZoneInPages) {
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(WaveFlags(0.999), DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->estimate_rest);
  EXPECT_EQ(c->estimate_pages, 189);  // 0.999 x 3024 tokens = 188.98 pages, rounded up
  absl::StatusOr<Options> o = MakeOptions(*c);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->budget.estimate_rest);
  EXPECT_EQ(o->budget.estimate_pages, 189);
}

TEST(ReplayEstimateRestTest, NoFractionEstimatesNothing) {
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(WaveFlags(0.0), DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->estimate_rest);
  EXPECT_EQ(c->estimate_pages, 0);
  EXPECT_FALSE(MakeOptions(*c)->budget.estimate_rest);
}

TEST(ReplayEstimateRestTest, PageBoundsRefusesIt) {
  ReplayFlags flags = WaveFlags(1.0);
  flags.index = "page_bounds";
  const absl::StatusOr<ReplayConfig> c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("--estimate_fraction=1: the page_bounds index has no estimation zone"));
}

TEST(ReplayEstimateRestTest, FractionOneAndPagesTogetherAreRefused) {
  ReplayFlags flags = WaveFlags(1.0);
  flags.estimate_pages = 8;
  const absl::StatusOr<ReplayConfig> c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("--estimate_pages=8 and --estimate_fraction=1: give at most one"));
}

TEST(ReplayEstimateRestTest, TheReportSaysTheRestIsEstimated) {
  ReplayResult r;
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(WaveFlags(1.0), DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  r.config = *c;
  r.options = *MakeOptions(r.config);
  std::ostringstream table, json;
  PrintTable(r, table);
  PrintJson(r, json);
  EXPECT_THAT(table.str(), HasSubstr("wave index, budget 64 pages of 16 tokens, the rest "
                                     "estimated; hot set"));
  EXPECT_THAT(table.str(), Not(HasSubstr(" 0 estimated")));
  EXPECT_TRUE(JsonChecker(json.str()).Valid()) << json.str();
  EXPECT_THAT(json.str(), HasSubstr("\"estimate_rest\": true"));
  EXPECT_THAT(json.str(), HasSubstr("\"estimate_pages\": 0"));

  // A zone in pages: the row says how many, and the JSON says false.
  c = MakeReplayConfig(WaveFlags(0.5), DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  r.config = *c;
  r.options = *MakeOptions(r.config);
  std::ostringstream zone_table, zone_json;
  PrintTable(r, zone_table);
  PrintJson(r, zone_json);
  EXPECT_THAT(zone_table.str(), HasSubstr("pages of 16 tokens, 95 estimated; hot set"));
  EXPECT_THAT(zone_table.str(), Not(HasSubstr("the rest estimated")));
  EXPECT_THAT(zone_json.str(), HasSubstr("\"estimate_rest\": false"));
}

// A tiny host run (2 layers, 2 KV heads of D 64, 512-token prompts, a hot set of one sink and
// four window pages, a budget of 3 pages): each sample's estimate stands for every cold token
// that is neither in the hot set nor retrieved.
TEST(ReplayEstimateRestTest, ATinyRunEstimatesEveryColdTokenNotRetrieved) {
  ReplayFlags f;
  f.model = "custom";
  f.layers = 2;
  f.query_heads = 4;
  f.kv_heads = 2;
  f.head_dim = 64;
  f.context = 512;
  f.batch = 2;
  f.steps = 2;
  f.warmup_steps = 1;
  f.page_size = 16;
  f.sink = 16;
  f.window = 64;
  f.budget = 3;
  f.index = "wave";
  f.estimate_fraction = 1;
  f.backend = "host";
  f.accuracy_samples = 4;
  f.accuracy_steps = 2;
  f.seed = 7;
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(f, DeviceFacts{});
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->estimate_rest);
  absl::StatusOr<ReplayResult> result = RunReplay(*config);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->samples.size(), 4u * 2u);
  for (const AccuracySample& a : result->samples) {
    EXPECT_EQ(a.selected_pages, 3);
    // The hot set, the retrieved pages and the rest are every token attended.
    EXPECT_EQ(a.estimated_tokens, a.tokens - a.captured_tokens)
        << "step " << a.step << " layer " << a.layer << " head " << a.kv_head;
    EXPECT_GT(a.estimated_tokens, 0);
    EXPECT_TRUE(std::isfinite(a.output_error));
  }
  EXPECT_GT(result->decode.estimate_bytes_read, 0);
}

}  // namespace
}  // namespace kvtier::replay
