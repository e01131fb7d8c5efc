// kvtier-scaling's sweep (tools/replay/scaling_run.h) on the host backend with a tiny model:
// bad plans named; every system up to its memory limit, which stops the sweep before the batch
// that does not fit and says why; the systems differ as they should (the page cache off never
// hits); the JSON, CSV and table carry every point; the plot script draws the three plots.
#include "tools/replay/scaling_run.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/common/plot_command.h"
#include "tools/common/tool_flags.h"

namespace kvtier::replay {
namespace {

using ::testing::HasSubstr;

// 2 layers, 4 query heads over 2 KV heads of D 64, a hot set of one sink and four window
// pages, a budget of 4 pages, 2 timed steps.
ScalingPlan TinyPlan() {
  ScalingPlan plan;
  ReplayFlags& f = plan.base;
  f.model = "custom";
  f.layers = 2;
  f.query_heads = 4;
  f.kv_heads = 2;
  f.head_dim = 64;
  f.budget = 4;
  f.sink = 16;
  f.window = 64;
  f.steps = 2;
  f.warmup_steps = 1;
  f.backend = "host";
  f.accuracy_samples = 2;
  f.accuracy_steps = 1;
  f.phase_timings = true;
  plan.contexts = {512};
  plan.batches = {1, 2, 4};
  plan.systems = {"page_bounds", "page_bounds_nocache"};
  plan.host_memory_bytes = int64_t{1} << 40;
  return plan;
}

int64_t HostBytesAt(const ScalingPlan& plan, int batch) {
  ReplayFlags f = plan.base;
  f.context = plan.contexts[0];
  f.batch = batch;
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(f, tools::DeviceFacts{});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? HostStoreBytes(*c) : 0;
}

TEST(ScalingPlanTest, NamesWhatIsWrong) {
  ScalingPlan plan = TinyPlan();
  EXPECT_TRUE(ValidateScalingPlan(plan).ok());
  plan.batches = {1, 4, 2};
  plan.systems = {"page_bounds", "vllm"};
  plan.host_memory_bytes = 0;
  const absl::Status status = ValidateScalingPlan(plan);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("batch sizes must ascend (4 then 2)"));
  EXPECT_THAT(status.message(), HasSubstr("system 'vllm': allowed page_bounds, wave"));
  EXPECT_THAT(status.message(), HasSubstr("host memory limit 0"));
  plan = TinyPlan();
  plan.contexts.clear();
  EXPECT_THAT(ValidateScalingPlan(plan).message(), HasSubstr("no contexts"));
  EXPECT_FALSE(RunScaling(plan).ok());
}

// A limit between batch 2's host store and batch 4's: each system runs batches 1 and 2 and
// stops before 4, saying why.
TEST(ScalingRunTest, EverySystemRunsUpToItsMemoryLimit) {
  ScalingPlan plan = TinyPlan();
  const int64_t two = HostBytesAt(plan, 2), four = HostBytesAt(plan, 4);
  ASSERT_LT(two, four);
  plan.host_memory_bytes = (two + four) / 2;
  absl::StatusOr<ScalingResult> result = RunScaling(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->points.size(), 4u);
  ASSERT_EQ(result->limits.size(), 2u);
  for (const ScalingLimit& limit : result->limits) {
    EXPECT_EQ(limit.context, 512);
    EXPECT_EQ(limit.largest_batch, 2) << limit.system;
    EXPECT_THAT(limit.reason, HasSubstr("batch 4 needs a host store of"));
  }
  EXPECT_EQ(result->limits[0].system, "page_bounds");
  EXPECT_EQ(result->limits[1].system, "page_bounds_nocache");
  const std::string order[4] = {"page_bounds 1", "page_bounds 2", "page_bounds_nocache 1",
                                "page_bounds_nocache 2"};
  for (size_t i = 0; i < result->points.size(); ++i) {
    const ScalingPoint& p = result->points[i];
    EXPECT_EQ(absl::StrCat(p.system, " ", p.batch), order[i]);
    EXPECT_GT(p.summary.tokens_per_second, 0) << order[i];
    EXPECT_GT(p.summary.mean_step_ms, 0) << order[i];
    EXPECT_GT(p.summary.select_ms, 0) << order[i] << ": phase timings";
    EXPECT_LE(p.host_store_bytes, plan.host_memory_bytes);
    if (p.system == "page_bounds_nocache") {
      EXPECT_EQ(p.summary.hit_rate, 0) << order[i] << ": a page cache that is off never hits";
    }
  }
  EXPECT_GT(result->points[1].summary.hit_rate, 0.5);  // page bounds keeps its pages
  EXPECT_EQ(result->device.rfind("host", 0), 0u) << result->device;
  EXPECT_THAT(result->rates_source, HasSubstr("built-in"));

  std::ostringstream json, csv, table;
  PrintScalingJson(*result, json);
  PrintScalingCsv(*result, csv);
  PrintScalingTable(*result, table);
  EXPECT_THAT(json.str(), HasSubstr("\"system\": \"page_bounds_nocache\", \"batch\": 2,"));
  EXPECT_THAT(json.str(), HasSubstr("\"largest_batch\": 2, \"reason\": \"batch 4 needs"));
  EXPECT_THAT(json.str(), HasSubstr("\"tokens_per_second\": "));
  const std::vector<std::string> lines = absl::StrSplit(csv.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_THAT(lines[0], ::testing::StartsWith("context,system,batch,tokens_per_second,"));
  EXPECT_THAT(lines[3], ::testing::StartsWith("512,page_bounds_nocache,1,"));
  EXPECT_THAT(table.str(), HasSubstr("page_bounds_nocache: largest batch 2; batch 4 needs"));
  EXPECT_THAT(table.str(),
              HasSubstr("page_bounds_nocache: kvtier, page-bounds index, page cache off"));
}

TEST(ScalingRunTest, EveryBatchThatFitsRunsAndNothingIsSaidToStopIt) {
  ScalingPlan plan = TinyPlan();
  plan.batches = {1, 3};
  plan.systems = {"wave_rest"};
  absl::StatusOr<ScalingResult> result = RunScaling(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->points.size(), 2u);
  ASSERT_EQ(result->limits.size(), 1u);
  EXPECT_EQ(result->limits[0].largest_batch, 3);
  EXPECT_EQ(result->limits[0].reason, "");
  std::ostringstream table;
  PrintScalingTable(*result, table);
  EXPECT_THAT(table.str(), HasSubstr("wave_rest: largest batch 3 (every batch listed ran)"));
}

TEST(ScalingPlotTest, TheScriptDrawsThreePlots) {
  const std::string python = tools::PlotPython();
  if (std::system(absl::StrCat("'", python, "' -c 'import matplotlib' >/dev/null 2>&1").c_str()) !=
      0) {
    GTEST_SKIP() << python << " has no matplotlib (Debian: python3-matplotlib)";
  }
  ScalingPlan plan = TinyPlan();
  plan.batches = {1, 2};
  absl::StatusOr<ScalingResult> result = RunScaling(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  const std::filesystem::path dir = std::filesystem::temp_directory_path();
  const std::string stem = absl::StrCat("kvtier_scaling_test_", ::getpid());
  const std::string json = (dir / (stem + ".json")).string();
  const std::string png = (dir / (stem + ".png")).string();
  {
    std::ofstream file(json);
    PrintScalingJson(*result, file);
  }
  const absl::Status plotted = tools::Plot({python, KVTIER_SCALING_PLOT_SCRIPT}, json, png);
  ASSERT_TRUE(plotted.ok()) << plotted;
  for (const std::string suffix : {"", "_pareto", "_phases"}) {
    const std::filesystem::path file = dir / (stem + suffix + ".png");
    ASSERT_TRUE(std::filesystem::exists(file)) << file;
    EXPECT_GT(std::filesystem::file_size(file), 1000u) << file;
    std::filesystem::remove(file);
  }
  std::filesystem::remove(json);
}

}  // namespace
}  // namespace kvtier::replay
