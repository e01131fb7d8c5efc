// kvtier-accuracy end to end on the host backend: inputs (synthetic with needles, the
// learned-attention dumps), a budget covering every cold page giving full attention, the
// page-bounds figures near the dumps' README, failures reported as results, the reports
// (table, JSON, CSV), the plot, and the command's exit statuses.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/testing/attention_dumps.h"
#include "tests/testing/json_checker.h"
#include "tools/accuracy/accuracy_config.h"
#include "tools/accuracy/accuracy_report.h"
#include "tools/accuracy/accuracy_run.h"

namespace kvtier::accuracy {
namespace {

using ::testing::HasSubstr;
using testing_util::DumpPath;
using testing_util::JsonChecker;

// A synthetic input small enough for a unit test (also under the sanitizers): 2048 tokens, a
// 512-token window, `queries` evaluated queries.
AccuracyConfig SyntheticConfig(int needles, int queries = 8) {
  AccuracyFlags flags;
  flags.synthetic = true;
  flags.context = 2048;
  flags.window = 512;
  flags.needles = needles;
  flags.queries = queries;
  flags.backend = "host";
  flags.seed = 3;
  absl::StatusOr<AccuracyConfig> config = MakeAccuracyConfig(flags, tools::DeviceFacts{});
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : AccuracyConfig{};
}

RunSpec Spec(const AccuracyConfig& c, double budget_fraction) {
  RunSpec spec = RunSpecs(c).front();
  spec.budget_fraction = budget_fraction;
  return spec;
}

bool HaveDump(const char* name, std::string* why) {
  if (std::filesystem::exists(DumpPath(name))) return true;
  *why = absl::StrCat(DumpPath(name),
                      " is absent (the learned-attention dumps live in "
                      "../shared/data/attention beside the checkout)");
  return false;
}

TEST(EvenlySpacedTest, TheReadmesSample) {
  const std::vector<int> s = EvenlySpaced(256, 32);
  ASSERT_EQ(s.size(), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(s[i], 8 * i);
  EXPECT_THAT(EvenlySpaced(3, 5), testing::ElementsAre(0, 1, 2));
  EXPECT_THAT(EvenlySpaced(10, 3), testing::ElementsAre(0, 3, 6));
}

TEST(SyntheticInputTest, NeedlesSitInTheColdTokensOfEvaluatedQueries) {
  const AccuracyConfig c = SyntheticConfig(12);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->name, "synthetic");
  EXPECT_EQ(in->shape.num_query_heads, 32);
  EXPECT_EQ(in->shape.num_kv_heads, 8);
  EXPECT_EQ(in->shape.head_dim, 128);
  EXPECT_EQ(in->shape.dtype, DType::kBF16);
  EXPECT_EQ(in->tokens, 2048);
  ASSERT_EQ(in->query_positions.size(), 256u);
  EXPECT_EQ(in->query_positions.front(), 2048 - 256);
  EXPECT_EQ(in->query_positions.back(), 2047);
  ASSERT_EQ(in->needles.size(), 12u);
  std::vector<int64_t> evaluated;
  for (const int i : in->evaluated) evaluated.push_back(in->query_positions[i]);
  for (const workload::Needle& n : in->needles) {
    EXPECT_THAT(evaluated, testing::Contains(n.query_position));
    const tools::HotSetGeometry g = tools::HotSet(n.query_position + 1, 16, 64, 512);
    EXPECT_GE(n.key_position, g.sink_end);
    EXPECT_LT(n.key_position, g.window_begin);
  }
  EXPECT_EQ(in->keys.size(), size_t{2048} * 8 * 128);
  EXPECT_EQ(in->queries.size(), size_t{256} * 32 * 128);
}

// ARCHITECTURE.md: when the budget covers every block the output equals full attention.
TEST(AccuracyRunTest, AFullBudgetOnSyntheticInputIsFullAttentionAndFindsEveryNeedle) {
  const AccuracyConfig c = SyntheticConfig(8);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  const RunResult r = RunInput(*in, Spec(c, 1.0));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.queries, 8);
  EXPECT_EQ(r.budget_pages * 16, r.cold_tokens);  // every cold page of the last query
  EXPECT_NEAR(r.mean_mass_captured, 1.0, 1e-9);
  EXPECT_NEAR(r.min_mass_captured, 1.0, 1e-9);
  EXPECT_NEAR(r.mean_oracle_mass, 1.0, 1e-9);
  EXPECT_EQ(r.output_error.count, 8 * 32);
  EXPECT_EQ(r.output_error.non_finite, 0);
  EXPECT_LE(r.output_error.max, 1e-2);
  EXPECT_EQ(r.needles_planted, 8);
  EXPECT_EQ(r.needles_found, 8);
  EXPECT_TRUE(r.needles_missed.empty());
  EXPECT_EQ(r.tokens_estimated, 0);
}

TEST(AccuracyRunTest, ASmallBudgetCapturesLessButAttendsWhatItKeptExactly) {
  const AccuracyConfig c = SyntheticConfig(0);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  const RunResult r = RunInput(*in, Spec(c, 0.05));
  ASSERT_TRUE(r.status.ok()) << r.status;
  // 5% of the cold tokens of the last evaluated query (position 2016: pages [4, 127 - 32)),
  // rounded up to pages: 72.8 tokens, 5 pages.
  EXPECT_EQ(r.cold_tokens, 1456);
  EXPECT_EQ(r.budget_pages, 5);
  EXPECT_LT(r.mean_mass_captured, 1.0);
  EXPECT_GT(r.mean_mass_captured, 0.3);
  EXPECT_GE(r.mean_oracle_mass, r.mean_mass_captured - 1e-12);
  EXPECT_GT(r.output_error.mean, 0);
  EXPECT_LE(r.output_error.mean, r.output_error.p95);
  EXPECT_LE(r.output_error.p95, r.output_error.max);
  EXPECT_LE(r.max_restricted_error, 1e-4);  // rounding only, given the selection
  EXPECT_DOUBLE_EQ(r.tokens_retrieved, 5 * 16);
}

TEST(AccuracyRunTest, AFullBudgetOnADumpIsFullAttention) {
  std::string why;
  if (!HaveDump("code_dev8k_L6", &why)) GTEST_SKIP() << why;
  absl::StatusOr<AccuracyInput> in = LoadDumpInput(DumpPath("code_dev8k_L6"), 32);
  ASSERT_TRUE(in.ok()) << in.status();
  EXPECT_EQ(in->shape.dtype, DType::kFP16);
  EXPECT_EQ(in->evaluated.size(), 32u);
  RunSpec spec = Spec(SyntheticConfig(0), 1.0);
  spec.window_tokens = 1024;
  const RunResult r = RunInput(*in, spec);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_NEAR(r.mean_mass_captured, 1.0, 1e-9);
  EXPECT_NEAR(r.min_mass_captured, 1.0, 1e-9);
  EXPECT_EQ(r.output_error.count, 32 * 8);
  EXPECT_LE(r.output_error.max, 1e-2);
  EXPECT_EQ(r.needles_planted, 0);
}

// The README's "bounds 2%" column for the concentrated 8K dumps. The README's budget is 2% of
// the whole causal context (10 pages at 8K) and its window the pages of the last 1024 tokens;
// here it is 2% of the cold tokens (9 pages) in the runtime's page geometry, hence ~0.03.
TEST(AccuracyRunTest, PageBoundsAtTwoPercentLandsNearTheReadme) {
  std::string why;
  if (!testing_util::DumpsPresent(&why)) GTEST_SKIP() << why;
  RunSpec spec = Spec(SyntheticConfig(0), 0.02);
  spec.window_tokens = 1024;  // the README's hot set: 64 + 1024 tokens
  for (const char* name : {"code_dev8k_L2", "prose_dev8k_L2"}) {
    SCOPED_TRACE(name);
    const testing_util::ReadmeRow* row = nullptr;
    for (const testing_util::ReadmeRow& r : testing_util::kReadme) {
      if (std::string(r.dump) == name) row = &r;
    }
    ASSERT_NE(row, nullptr);
    absl::StatusOr<AccuracyInput> in = LoadDumpInput(DumpPath(name), 32);
    ASSERT_TRUE(in.ok()) << in.status();
    const RunResult r = RunInput(*in, spec);
    ASSERT_TRUE(r.status.ok()) << r.status;
    std::printf("%-16s pages %d: mass %.4f [bounds %.3f], oracle %.4f [%.3f], error %.2f%%\n", name,
                r.budget_pages, r.mean_mass_captured, row->bounds_2, r.mean_oracle_mass,
                row->oracle_2, 100 * r.output_error.mean);
    EXPECT_EQ(r.budget_pages, 9);
    EXPECT_NEAR(r.mean_mass_captured, row->bounds_2, 0.03);
    EXPECT_NEAR(r.mean_oracle_mass, row->oracle_2, 0.03);
    EXPECT_LE(r.mean_mass_captured, r.mean_oracle_mass + 1e-12);
    EXPECT_LE(r.max_restricted_error, 1e-4);
  }
}

// Issue 8's fidelity targets at 2% retrieval, the rest estimated (with the value shift): the
// diffuse dumps at most half of page bounds' output error, a concentrated one within 5%.
// Measured on the host: prose_dev_L1 15.6% (page bounds about 49%), code_dev_L4 8.5%,
// code_dev8k_L6 4.3%.
TEST(AccuracyRunTest, TheWaveIndexHoldsTheFidelityTargets) {
  std::string why;
  if (!testing_util::DumpsPresent(&why)) GTEST_SKIP() << why;
  RunSpec bounds = Spec(SyntheticConfig(0), 0.02);
  bounds.window_tokens = 1024;
  RunSpec wave = bounds;
  wave.index = IndexKind::kWave;
  wave.estimate_fraction = 1.0;
  for (const char* name : {"prose_dev_L1", "code_dev_L4", "code_dev8k_L6"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<AccuracyInput> in = LoadDumpInput(DumpPath(name), 32);
    ASSERT_TRUE(in.ok()) << in.status();
    const RunResult w = RunInput(*in, wave);
    ASSERT_TRUE(w.status.ok()) << w.status;
    EXPECT_EQ(w.output_error.non_finite, 0);
    if (std::string(name) == "code_dev8k_L6") {
      EXPECT_LE(w.output_error.mean, 0.05);
      continue;
    }
    const RunResult b = RunInput(*in, bounds);
    ASSERT_TRUE(b.status.ok()) << b.status;
    std::printf("%-14s wave + rest %.2f%%, page bounds %.2f%%\n", name, 100 * w.output_error.mean,
                100 * b.output_error.mean);
    EXPECT_LE(w.output_error.mean, 0.5 * b.output_error.mean);
  }
}

// --value_shift=false estimates from the mean values alone: the same run otherwise, a
// different estimate, and the JSON says which.
TEST(AccuracyRunTest, TheValueShiftCanBeTurnedOff) {
  const AccuracyConfig c = SyntheticConfig(0, 2);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  in->query_positions.resize(4);
  in->evaluated = {1, 3};
  RunSpec spec = Spec(c, 0.05);
  spec.index = IndexKind::kWave;
  spec.estimate_fraction = 1.0;
  const RunResult on = RunInput(*in, spec);
  spec.value_shift = false;
  absl::StatusOr<Options> options = MakeRunOptions(*in, spec);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_FALSE(options->budget.value_shift);
  const RunResult off = RunInput(*in, spec);
  ASSERT_TRUE(on.status.ok() && off.status.ok()) << on.status << off.status;
  EXPECT_EQ(off.output_error.non_finite, 0);
  EXPECT_NE(on.output_error.mean, off.output_error.mean);
  EXPECT_DOUBLE_EQ(on.mean_mass_captured, off.mean_mass_captured);  // the same selection
  std::ostringstream json;
  PrintJson({on, off}, json);
  EXPECT_THAT(json.str(), HasSubstr("\"value_shift\": true"));
  EXPECT_THAT(json.str(), HasSubstr("\"value_shift\": false"));
}

TEST(AccuracyRunTest, AnUnreadableDumpNamesItsPath) {
  const absl::StatusOr<AccuracyInput> in = LoadDumpInput("/nonexistent/x.npz", 32);
  ASSERT_FALSE(in.ok());
  EXPECT_THAT(in.status().message(), HasSubstr("cannot read dump /nonexistent/x.npz"));
}

TEST(AccuracyRunTest, ARefusedCreateIsTheRunsErrorNotACrash) {
  const AccuracyConfig c = SyntheticConfig(0);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  const RunSpec spec = Spec(c, 0.02);
  absl::StatusOr<Options> options = MakeRunOptions(*in, spec);
  ASSERT_TRUE(options.ok()) << options.status();
  options->budget.max_pages = 5000;  // beyond what the runtime selects
  const RunResult r = RunInputWithOptions(*in, spec, *options);
  EXPECT_FALSE(r.status.ok());
  EXPECT_THAT(r.status.message(), HasSubstr("KvCache::Create (index page_bounds)"));
  EXPECT_TRUE(std::isnan(r.mean_mass_captured));
}

// Until the wave index lands KvCache::Create refuses it; either way the run reports, never
// crashes.
TEST(AccuracyRunTest, TheWaveIndexRunsOrSaysWhy) {
  const AccuracyConfig c = SyntheticConfig(0, 2);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  RunSpec spec = Spec(c, 0.05);
  spec.index = IndexKind::kWave;
  spec.estimate_fraction = 0.1;
  const RunResult r = RunInput(*in, spec);
  if (r.status.ok()) {
    EXPECT_EQ(r.output_error.non_finite, 0);
    EXPECT_GT(r.mean_mass_captured, 0);
  } else {
    EXPECT_FALSE(r.status.message().empty());
  }
}

// --estimate_fraction=1 estimates every cold page the selection leaves (Options::budget.
// estimate_rest), and the run, its JSON object, CSV row and table say so. The synthetic input
// is cut to its first 4 query positions (prefill 1792 tokens, 4 decodes), 2 of them evaluated.
TEST(AccuracyRunTest, EstimateFractionOneEstimatesTheRest) {
  const AccuracyConfig c = SyntheticConfig(0, 2);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_EQ(in->prefill_tokens, 1792);
  in->query_positions.resize(4);
  in->evaluated = {1, 3};  // positions 1793 and 1795
  RunSpec spec = Spec(c, 0.05);
  spec.index = IndexKind::kWave;
  spec.estimate_fraction = 1.0;
  absl::StatusOr<Options> options = MakeRunOptions(*in, spec);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_TRUE(options->budget.estimate_rest);
  EXPECT_EQ(options->budget.estimate_pages, 0);
  const RunResult r = RunInput(*in, spec);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_TRUE(r.estimate_rest);
  EXPECT_EQ(r.estimate_pages, 0);
  EXPECT_EQ(r.queries, 2);
  // 1794 and 1796 tokens: 113 pages, cold [4, 113 - 32) = 77 pages (1232 tokens); 5% of them
  // is 3.85 pages: a budget of 4 pages, and the other 73 pages (1168 tokens) are estimated.
  EXPECT_EQ(r.cold_tokens, 1232);
  EXPECT_EQ(r.budget_pages, 4);
  EXPECT_DOUBLE_EQ(r.tokens_retrieved, 4 * 16);
  EXPECT_DOUBLE_EQ(r.tokens_estimated, 73 * 16);
  EXPECT_EQ(r.output_error.non_finite, 0);

  RunResult zone = r;  // a run with a zone in pages instead, for the contrast
  zone.estimate_rest = false;
  zone.estimate_pages = 7;
  std::ostringstream json;
  PrintJson({r, zone}, json);
  EXPECT_TRUE(JsonChecker(json.str()).Valid()) << json.str();
  const std::vector<std::string> objects = absl::StrSplit(json.str(), "\"dump\": ");
  ASSERT_EQ(objects.size(), 3u) << json.str();
  // estimate_rest a boolean, right after estimate_pages.
  EXPECT_THAT(objects[1], HasSubstr("\"estimate_pages\": 0,\n    \"estimate_rest\": true,\n"));
  EXPECT_THAT(objects[2], HasSubstr("\"estimate_pages\": 7,\n    \"estimate_rest\": false,\n"));

  std::ostringstream csv;
  WriteCsv({r, zone}, csv);
  const std::vector<std::string> lines = absl::StrSplit(csv.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[0], HasSubstr(",estimate_pages,estimate_rest,value_shift,mass_target,"));
  // budget_fraction, budget_pages, estimate_fraction, estimate_pages, estimate_rest (1 / 0),
  // value_shift (1).
  EXPECT_THAT(lines[1], HasSubstr(",0.05,4,1,0,1,1,0,"));
  EXPECT_THAT(lines[2], HasSubstr(",0.05,4,1,7,0,1,0,"));

  std::ostringstream table;
  PrintTable(c, {r}, table);
  EXPECT_THAT(table.str(), HasSubstr("     4  rest "));
}

// ---- reports -------------------------------------------------------------------------------

std::vector<RunResult> TwoRuns() {
  const AccuracyConfig c = SyntheticConfig(2, 2);
  absl::StatusOr<AccuracyInput> in = MakeSyntheticInput(c);
  EXPECT_TRUE(in.ok()) << in.status();
  if (!in.ok()) return {};
  RunResult failed;
  failed.input = "a \"quoted\", path.npz";
  failed.spec = Spec(c, 0.05);
  failed.spec.index = IndexKind::kWave;
  failed.status = absl::InvalidArgumentError("KvCache::Create (index wave): not yet");
  return {RunInput(*in, Spec(c, 0.5)), failed};
}

TEST(AccuracyReportTest, JsonIsOneArrayWithTheRequiredKeys) {
  const std::vector<RunResult> runs = TwoRuns();
  ASSERT_EQ(runs.size(), 2u);
  ASSERT_TRUE(runs[0].status.ok()) << runs[0].status;
  std::ostringstream out;
  PrintJson(runs, out);
  const std::string json = out.str();
  EXPECT_TRUE(JsonChecker(json).Valid()) << json;
  EXPECT_EQ(json.front(), '[');
  for (const char* key :
       {"dump", "index", "budget_fraction", "mean_output_error", "p95_output_error",
        "mean_mass_captured", "mean_oracle_mass", "needles_found", "needles_planted",
        "estimate_fraction", "context", "max_output_error", "min_mass_captured", "tokens_retrieved",
        "tokens_estimated", "backend", "error"}) {
    const std::string quoted = absl::StrCat("\"", key, "\": ");
    // Once per object.
    EXPECT_EQ(std::vector<std::string>(absl::StrSplit(json, quoted)).size(), 3u) << key;
  }
  EXPECT_THAT(json, HasSubstr("\"dump\": \"synthetic\""));
  EXPECT_THAT(json, HasSubstr("\"needles_planted\": 2"));
  EXPECT_THAT(json, HasSubstr("\"error\": null"));
  EXPECT_THAT(json, HasSubstr("\"error\": \"KvCache::Create (index wave): not yet\""));
  EXPECT_THAT(json, HasSubstr("\"mean_output_error\": null"));  // the failed run's NaN
  std::ostringstream empty;
  PrintJson({}, empty);
  EXPECT_TRUE(JsonChecker(empty.str()).Valid()) << empty.str();
}

TEST(AccuracyReportTest, TableShowsEveryRunAndEveryFailure) {
  const std::vector<RunResult> runs = TwoRuns();
  ASSERT_EQ(runs.size(), 2u);
  std::ostringstream out;
  PrintTable(SyntheticConfig(2, 2), runs, out);
  const std::string table = out.str();
  for (const char* text : {"input", "oracle", "err p95", "needles", "synthetic", "2/2",
                           "failed runs", "KvCache::Create (index wave): not yet"}) {
    EXPECT_THAT(table, HasSubstr(text));
  }
}

TEST(AccuracyReportTest, CsvHasAHeaderAndARowPerRun) {
  const std::vector<RunResult> runs = TwoRuns();
  std::ostringstream out;
  WriteCsv(runs, out);
  const std::vector<std::string> lines = absl::StrSplit(out.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[0], testing::StartsWith("dump,index,backend,context,cold_tokens,"
                                            "budget_fraction,"));
  EXPECT_THAT(lines[1], testing::StartsWith("synthetic,page_bounds,host,2048,"));
  // The failed run: its path quoted, its figures empty, its error last.
  EXPECT_THAT(lines[2], testing::StartsWith("\"a \"\"quoted\"\", path.npz\",wave,"));
  EXPECT_THAT(lines[2], testing::EndsWith(",KvCache::Create (index wave): not yet"));
  EXPECT_THAT(lines[2], HasSubstr(",,"));
}

// ---- the plot and the command --------------------------------------------------------------

bool HaveMatplotlib(std::string* why) {
  const std::string python = PlotPython();
  const std::string command = absl::StrCat("'", python, "' -c 'import matplotlib' >/dev/null 2>&1");
  if (std::system(command.c_str()) == 0) return true;
  *why = absl::StrCat(python,
                      " has no matplotlib (Debian: python3-matplotlib; or set "
                      "KVTIER_PYTHON)");
  return false;
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          absl::StrCat("kvtier_accuracy_test_", ::getpid(), "_", name))
      .string();
}

TEST(AccuracyPlotTest, TheScriptDrawsTheSweep) {
  std::string why;
  if (!HaveMatplotlib(&why)) GTEST_SKIP() << why;
  const std::string csv = TempPath("sweep.csv"), png = TempPath("sweep.png");
  ASSERT_TRUE(WriteCsvFile(TwoRuns(), csv).ok());
  const absl::Status plotted = Plot({PlotPython(), KVTIER_PLOT_SCRIPT}, csv, png);
  EXPECT_TRUE(plotted.ok()) << plotted;
  EXPECT_GT(std::filesystem::file_size(png), 1000u);
  std::filesystem::remove(csv);
  std::filesystem::remove(png);
}

TEST(AccuracyPlotTest, AFailedPlotSaysWhatFailedAndWhereTheCsvIs) {
  const std::string csv = TempPath("fail.csv"), png = TempPath("fail.png");
  absl::Status s = Plot({"/nonexistent/python3", KVTIER_PLOT_SCRIPT}, csv, png);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("cannot run /nonexistent/python3"));
  EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("the data is at ", csv)));
  s = Plot({"/bin/false", KVTIER_PLOT_SCRIPT}, csv, png);
  EXPECT_THAT(s.message(), HasSubstr("exited with status 1"));
  s = Plot({"/bin/true", KVTIER_PLOT_SCRIPT}, csv, png);
  EXPECT_THAT(s.message(), HasSubstr("wrote no"));
}

// Runs the command with `args`; returns its exit status, stdout and stderr.
int RunCommand(const std::string& args, std::string* out, std::string* err) {
  const std::string out_path = TempPath("stdout"), err_path = TempPath("stderr");
  const std::string command =
      absl::StrCat(KVTIER_ACCURACY_BINARY, " ", args, " >", out_path, " 2>", err_path);
  const int status = std::system(command.c_str());
  const auto slurp = [](const std::string& path) {
    std::ifstream file(path);
    return std::string(std::istreambuf_iterator<char>(file), {});
  };
  *out = slurp(out_path);
  *err = slurp(err_path);
  std::filesystem::remove(out_path);
  std::filesystem::remove(err_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(AccuracyCommandTest, ExitStatusesAndMessages) {
  std::string out, err;
  EXPECT_EQ(RunCommand("--synthetic --queries=0 --index=quest", &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("--queries=0: must be >= 1"));
  EXPECT_THAT(err, HasSubstr("--index=quest"));
  EXPECT_EQ(RunCommand("--synthetic stray", &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("unexpected argument 'stray'"));
  EXPECT_EQ(RunCommand("--dump=/nonexistent/y.npz", &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("cannot read dump /nonexistent/y.npz"));
  EXPECT_EQ(RunCommand("--synthetic --context=1024 --queries=2 --backend=host --json --needles=2"
                       " --window=256",
                       &out, &err),
            0)
      << err;
  EXPECT_TRUE(JsonChecker(out).Valid()) << out;
  EXPECT_THAT(out, HasSubstr("\"needles_planted\": 2"));
}

}  // namespace
}  // namespace kvtier::accuracy
