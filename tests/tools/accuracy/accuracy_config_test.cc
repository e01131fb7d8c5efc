// kvtier-accuracy's flags: defaults, every bad flag reported at once, sweeps and index lists,
// the backend choice, and the repeatable --dump.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "tools/accuracy/accuracy_config.h"

namespace kvtier::accuracy {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

tools::DeviceFacts NoGpu() { return tools::DeviceFacts{}; }
tools::DeviceFacts OneGpu() {
  tools::DeviceFacts facts;
  facts.cuda_built = true;
  facts.cuda_devices = 1;
  return facts;
}

AccuracyFlags OneDump() {
  AccuracyFlags flags;
  flags.dumps = {"a.npz"};
  return flags;
}

AccuracyConfig MustConfig(const AccuracyFlags& flags, const tools::DeviceFacts& facts = NoGpu()) {
  absl::StatusOr<AccuracyConfig> config = MakeAccuracyConfig(flags, facts);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : AccuracyConfig{};
}

std::string ErrorOf(const AccuracyFlags& flags,
                    absl::StatusCode code = absl::StatusCode::kInvalidArgument,
                    const tools::DeviceFacts& facts = NoGpu()) {
  absl::StatusOr<AccuracyConfig> config = MakeAccuracyConfig(flags, facts);
  EXPECT_FALSE(config.ok());
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), code) << config.status();
  return std::string(config.status().message());
}

TEST(AccuracyConfigTest, DefaultsArePageBoundsAtTwoPercentOnTheHost) {
  const AccuracyConfig c = MustConfig(OneDump());
  EXPECT_THAT(c.dumps, ElementsAre("a.npz"));
  EXPECT_FALSE(c.synthetic);
  EXPECT_THAT(c.indexes, ElementsAre(IndexKind::kPageBounds));
  EXPECT_THAT(c.budget_fractions, ElementsAre(0.02));
  EXPECT_FALSE(c.sweep);
  EXPECT_EQ(c.estimate_fraction, 0);
  EXPECT_EQ(c.mass_target, 0);
  EXPECT_EQ(c.page_size, 16);
  EXPECT_EQ(c.sink_tokens, 64);
  EXPECT_EQ(c.window_tokens, 1024);
  EXPECT_EQ(c.queries, 32);
  EXPECT_EQ(c.backend, Backend::kHost);
  EXPECT_TRUE(c.backend_auto);
  EXPECT_THAT(c.notes, ElementsAre(HasSubstr("no CUDA device")));
}

TEST(AccuracyConfigTest, AutoPicksCudaWhenADeviceIsThere) {
  const AccuracyConfig c = MustConfig(OneDump(), OneGpu());
  EXPECT_EQ(c.backend, Backend::kCuda);
  EXPECT_THAT(c.notes, IsEmpty());
  AccuracyFlags flags = OneDump();
  flags.backend = "host";
  EXPECT_EQ(MustConfig(flags, OneGpu()).backend, Backend::kHost);
}

TEST(AccuracyConfigTest, CudaWithoutCudaIsAFailedPrecondition) {
  AccuracyFlags flags = OneDump();
  flags.backend = "cuda";
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kFailedPrecondition),
              HasSubstr("built without CUDA"));
  tools::DeviceFacts facts = OneGpu();
  facts.cuda_devices = 0;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kFailedPrecondition, facts),
              HasSubstr("no CUDA device 0"));
}

TEST(AccuracyConfigTest, SyntheticWithNeedles) {
  AccuracyFlags flags;
  flags.synthetic = true;
  flags.context = 8192;
  flags.needles = 12;
  flags.seed = 7;
  const AccuracyConfig c = MustConfig(flags);
  EXPECT_TRUE(c.synthetic);
  EXPECT_THAT(c.dumps, IsEmpty());
  EXPECT_EQ(c.synthetic_context, 8192);
  EXPECT_EQ(c.needles, 12);
  EXPECT_EQ(c.seed, 7u);
}

TEST(AccuracyConfigTest, EveryBadFlagIsReportedAtOnce) {
  AccuracyFlags flags;  // no input
  flags.needles = -1;
  flags.queries = 0;
  flags.index = "quest";
  flags.budget_fraction = 0;
  flags.estimate_fraction = 1.5;
  flags.mass_target = -0.5;
  flags.page_size = 20;
  flags.sink = -16;
  flags.window = 0;
  flags.backend = "tpu";
  flags.device = -1;
  const std::string error = ErrorOf(flags);
  EXPECT_THAT(error, HasSubstr("invalid kvtier-accuracy flags: "));
  for (const char* expected :
       {"no input: give --dump=PATH.npz (repeatable) or --synthetic", "--needles=-1: must be >= 0",
        "--queries=0: must be >= 1", "--index=quest: 'quest' is not an index",
        "--budget_fraction=0: must be in (0, 1]", "--estimate_fraction=1.5: must be in [0, 1]",
        "--mass_target=-0.5: must be 0", "--page_size=20: allowed 16, 32 or 64",
        "--sink=-16: must be a multiple", "--window=0: must be a positive multiple",
        "--backend=tpu: allowed auto, cuda or host", "--device=-1: must be >= 0"}) {
    EXPECT_THAT(error, HasSubstr(expected));
  }
}

TEST(AccuracyConfigTest, SinkAndWindowMustBeWholePages) {
  AccuracyFlags flags = OneDump();
  flags.page_size = 32;
  flags.sink = 48;
  flags.window = 1000;
  EXPECT_THAT(ErrorOf(flags), AllOf(HasSubstr("--sink=48: must be a multiple of --page_size (32)"),
                                    HasSubstr("--window=1000: must be a positive multiple")));
}

TEST(AccuracyConfigTest, SyntheticFlagsNeedTheSyntheticInput) {
  AccuracyFlags flags = OneDump();
  flags.needles = 4;
  EXPECT_THAT(ErrorOf(flags), HasSubstr("--needles=4: needs --synthetic"));
  flags = AccuracyFlags{};
  flags.synthetic = true;
  flags.context = 300;
  EXPECT_THAT(ErrorOf(flags), HasSubstr("--context=300: must be >= 512 tokens"));
}

TEST(AccuracyConfigTest, NeedlesNeedColdTokensAndDistinctSlots) {
  AccuracyFlags flags;
  flags.synthetic = true;
  flags.context = 1024;  // the first query at 768 sees only its hot set
  flags.needles = 1;
  EXPECT_THAT(ErrorOf(flags), HasSubstr("has no cold tokens to hide a needle in"));
  flags.context = 8192;
  flags.queries = 2;
  flags.needles = 17;  // 2 queries x 8 KV heads
  EXPECT_THAT(ErrorOf(flags), HasSubstr("--needles=17: at most --queries x 8 KV heads"));
}

TEST(AccuracyConfigTest, PageBoundsRefusesEstimationAndAMassTarget) {
  AccuracyFlags flags = OneDump();
  flags.estimate_fraction = 0.1;
  flags.mass_target = 0.9;
  EXPECT_THAT(ErrorOf(flags),
              AllOf(HasSubstr("--estimate_fraction=0.1: the page_bounds index has no estimation"),
                    HasSubstr("--mass_target=0.9: the page_bounds index selects by count only")));
  flags.index = "wave";
  const AccuracyConfig c = MustConfig(flags);
  EXPECT_THAT(c.indexes, ElementsAre(IndexKind::kWave));
  EXPECT_EQ(c.estimate_fraction, 0.1);
  EXPECT_EQ(c.mass_target, 0.9);
}

TEST(AccuracyConfigTest, AnIndexListNeedsASweep) {
  AccuracyFlags flags = OneDump();
  flags.index = "page_bounds,wave";
  EXPECT_THAT(ErrorOf(flags), HasSubstr("a list of index kinds needs --sweep"));
  flags.sweep = "0.05,0.01,0.02,0.05";
  flags.estimate_fraction = 0.1;  // applies to the wave runs only
  const AccuracyConfig c = MustConfig(flags);
  EXPECT_TRUE(c.sweep);
  EXPECT_THAT(c.indexes, ElementsAre(IndexKind::kPageBounds, IndexKind::kWave));
  EXPECT_THAT(c.budget_fractions, ElementsAre(0.01, 0.02, 0.05));  // sorted, distinct
  EXPECT_EQ(c.csv_path, "accuracy_sweep.csv");
  EXPECT_EQ(c.png_path, "accuracy_sweep.png");
  EXPECT_THAT(c.notes, testing::Contains(HasSubstr("apply to the wave runs")));
  flags.index = "wave,wave";
  EXPECT_THAT(ErrorOf(flags), HasSubstr("--index=wave,wave: names wave twice"));
}

TEST(AccuracyConfigTest, SweepValuesAreCheckedOneByOne) {
  AccuracyFlags flags = OneDump();
  flags.sweep = "0.01,x,0,1.5";
  flags.csv = "";
  const std::string error = ErrorOf(flags);
  EXPECT_THAT(error, AllOf(HasSubstr("'x' is not a budget fraction in (0, 1]"),
                           HasSubstr("'0' is not a budget fraction"),
                           HasSubstr("'1.5' is not a budget fraction"),
                           HasSubstr("--csv=: must name the sweep's CSV file")));
}

TEST(AccuracyConfigTest, SweepIgnoresTheSingleBudget) {
  AccuracyFlags flags = OneDump();
  flags.budget_fraction = 7;  // not checked: --sweep gives the budgets
  flags.sweep = "1";
  flags.png = "";
  const AccuracyConfig c = MustConfig(flags);
  EXPECT_THAT(c.budget_fractions, ElementsAre(1.0));
  EXPECT_EQ(c.png_path, "");
}

// ---- the repeatable --dump ----------------------------------------------------------------

std::vector<std::string> Strings(const std::vector<char*>& args) {
  return std::vector<std::string>(args.begin(), args.end());
}

TEST(TakeRepeatedFlagTest, TakesEveryFormInOrderAndLeavesTheRest) {
  std::string a0 = "kvtier-accuracy", a1 = "--dump=x,y.npz", a2 = "--json", a3 = "-dump=b.npz",
              a4 = "--dump", a5 = "c d.npz", a6 = "--dumpster=1", a7 = "--", a8 = "--dump=e";
  std::vector<char*> args = {a0.data(), a1.data(), a2.data(), a3.data(), a4.data(),
                             a5.data(), a6.data(), a7.data(), a8.data()};
  std::vector<std::string> dumps;
  std::string bad;
  ASSERT_TRUE(TakeRepeatedFlag(args, "dump", &dumps, &bad));
  EXPECT_THAT(dumps, ElementsAre("x,y.npz", "b.npz", "c d.npz"));
  EXPECT_THAT(Strings(args),
              ElementsAre("kvtier-accuracy", "--json", "--dumpster=1", "--", "--dump=e"));
}

TEST(TakeRepeatedFlagTest, ABareFlagAtTheEndIsAnError) {
  std::string a0 = "kvtier-accuracy", a1 = "--dump=a", a2 = "--dump";
  std::vector<char*> args = {a0.data(), a1.data(), a2.data()};
  std::vector<std::string> dumps;
  std::string bad;
  EXPECT_FALSE(TakeRepeatedFlag(args, "dump", &dumps, &bad));
  EXPECT_EQ(bad, "--dump");
  EXPECT_EQ(args.size(), 3u);
  EXPECT_THAT(dumps, IsEmpty());
}

}  // namespace
}  // namespace kvtier::accuracy
