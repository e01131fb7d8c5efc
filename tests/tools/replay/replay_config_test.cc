// kvtier-replay's flags, presets, options sizing and report rendering: everything that runs
// without a KvCache (the report is fed a fabricated result).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/core/options.h"
#include "tests/testing/json_checker.h"
#include "tools/replay/replay_config.h"
#include "tools/replay/replay_report.h"
#include "tools/replay/replay_run.h"

namespace kvtier::replay {
namespace {

using testing_util::JsonChecker;

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kGiB = int64_t{1} << 30;

DeviceFacts NoGpu() { return DeviceFacts{}; }
DeviceFacts OneGpu() {
  DeviceFacts facts;
  facts.cuda_built = true;
  facts.cuda_devices = 1;
  facts.free_gpu_bytes = 80 * kGiB;
  return facts;
}

ReplayConfig MustConfig(const ReplayFlags& flags, const DeviceFacts& facts = NoGpu()) {
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(flags, facts);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ReplayConfig{};
}

std::string ErrorOf(const ReplayFlags& flags, absl::StatusCode code,
                    const DeviceFacts& facts = NoGpu()) {
  absl::StatusOr<ReplayConfig> config = MakeReplayConfig(flags, facts);
  EXPECT_FALSE(config.ok());
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), code) << config.status();
  return std::string(config.status().message());
}

// ---- presets and defaults ------------------------------------------------------------------

TEST(ReplayConfigTest, DefaultsAreLlama3OnTheHostWithoutAGpu) {
  const ReplayConfig c = MustConfig(ReplayFlags{});
  EXPECT_EQ(c.model, "llama-3-8b");
  EXPECT_EQ(c.shape.num_layers, 32);
  EXPECT_EQ(c.shape.num_query_heads, 32);
  EXPECT_EQ(c.shape.num_kv_heads, 8);
  EXPECT_EQ(c.shape.head_dim, 128);
  EXPECT_EQ(c.shape.dtype, DType::kBF16);
  EXPECT_EQ(c.backend, Backend::kHost);
  EXPECT_TRUE(c.backend_auto);
  EXPECT_EQ(c.steps, 16);
  EXPECT_EQ(c.warmup_steps, 1);
  EXPECT_EQ(c.policy, PolicyChoice::kScore);
  EXPECT_EQ(c.context_tokens, 4096);
  EXPECT_EQ(c.batch, 4);
  EXPECT_EQ(c.final_tokens(), 4096 + 1 + 16);
  const Options defaults;
  EXPECT_EQ(c.hbm_bytes_per_second, defaults.hbm_bytes_per_second);
  EXPECT_EQ(c.pcie_bytes_per_second, defaults.pcie_bytes_per_second);
}

TEST(ReplayConfigTest, AutoPicksCudaWhenADeviceIsThere) {
  const ReplayConfig c = MustConfig(ReplayFlags{}, OneGpu());
  EXPECT_EQ(c.backend, Backend::kCuda);
  EXPECT_EQ(c.steps, 128);
  EXPECT_EQ(c.gpu_memory_bytes, 80 * kGiB / 10 * 9);  // 90% of the free memory
}

TEST(ReplayConfigTest, AutoStaysOnTheHostWhenBuiltWithoutCuda) {
  DeviceFacts facts = OneGpu();
  facts.cuda_built = false;
  EXPECT_EQ(MustConfig(ReplayFlags{}, facts).backend, Backend::kHost);
}

TEST(ReplayConfigTest, ExplicitStepsAndGpuMemoryWin) {
  ReplayFlags flags;
  flags.steps = 7;
  flags.gpu_memory_gib = 1.5;
  const ReplayConfig c = MustConfig(flags, OneGpu());
  EXPECT_EQ(c.steps, 7);
  EXPECT_EQ(c.gpu_memory_bytes, kGiB * 3 / 2);
}

TEST(ReplayConfigTest, GpuMemoryFallsBackTo70GiBWhenFreeMemoryIsUnknown) {
  DeviceFacts facts = OneGpu();
  facts.free_gpu_bytes = 0;
  EXPECT_EQ(MustConfig(ReplayFlags{}, facts).gpu_memory_bytes, 70 * kGiB);
}

TEST(ReplayConfigTest, QwenPreset) {
  ReplayFlags flags;
  flags.model = "qwen2.5-7b";
  const ReplayConfig c = MustConfig(flags);
  EXPECT_EQ(c.model, "qwen2.5-7b");
  EXPECT_EQ(c.shape.num_layers, 28);
  EXPECT_EQ(c.shape.num_query_heads, 28);
  EXPECT_EQ(c.shape.num_kv_heads, 4);
  EXPECT_EQ(c.shape.head_dim, 128);
}

TEST(ReplayConfigTest, PresetListNamesBoth) {
  ASSERT_EQ(ModelPresets().size(), 2u);
  EXPECT_EQ(ModelPresetNames(), "llama-3-8b, qwen2.5-7b");
}

TEST(ReplayConfigTest, SizeFlagsOverrideAPresetAndTheNameSaysSo) {
  ReplayFlags flags;
  flags.layers = 2;
  flags.head_dim = 128;  // same as the preset: not an override
  const ReplayConfig c = MustConfig(flags);
  EXPECT_EQ(c.shape.num_layers, 2);
  EXPECT_EQ(c.shape.num_query_heads, 32);
  EXPECT_EQ(c.model, "llama-3-8b (layers 2)");
}

TEST(ReplayConfigTest, CustomModelTakesAllFourSizes) {
  ReplayFlags flags;
  flags.model = "custom";
  flags.layers = 3;
  flags.query_heads = 16;
  flags.kv_heads = 2;
  flags.head_dim = 64;
  flags.dtype = "fp16";
  const ReplayConfig c = MustConfig(flags);
  EXPECT_EQ(c.model, "custom");
  EXPECT_EQ(c.shape.num_layers, 3);
  EXPECT_EQ(c.shape.group_size(), 8);
  EXPECT_EQ(c.shape.head_dim, 64);
  EXPECT_EQ(c.shape.dtype, DType::kFP16);
}

TEST(ReplayConfigTest, CustomModelWithoutSizesNamesEachMissingFlag) {
  ReplayFlags flags;
  flags.model = "custom";
  flags.layers = 4;
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(error, AllOf(HasSubstr("--query_heads=0: must be given"),
                           HasSubstr("--kv_heads=0: must be given"),
                           HasSubstr("--head_dim=0: must be given"), Not(HasSubstr("--layers"))));
}

// ---- bad flags -----------------------------------------------------------------------------

TEST(ReplayConfigTest, UnknownNamesListWhatIsAllowed) {
  ReplayFlags flags;
  flags.model = "gpt-5";
  flags.policy = "fifo";
  flags.backend = "tpu";
  flags.dtype = "fp8";
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(error, HasSubstr("--model=gpt-5: allowed llama-3-8b, qwen2.5-7b or custom"));
  EXPECT_THAT(error, HasSubstr("--policy=fifo: allowed lru, score, last or off"));
  EXPECT_THAT(error, HasSubstr("--backend=tpu: allowed auto, cuda or host"));
  EXPECT_THAT(error, HasSubstr("--dtype=fp8: allowed bf16 or fp16"));
}

TEST(ReplayConfigTest, EveryBadNumberIsReportedAtOnce) {
  ReplayFlags flags;
  flags.context = 0;
  flags.batch = 0;
  flags.steps = -1;
  flags.warmup_steps = -2;
  flags.budget = 0;
  flags.mass_target = 1.5;
  flags.cache_slots = 0.5;
  flags.score_decay = 0;
  flags.device = -1;
  flags.gpu_memory_gib = -1;
  flags.hbm_gbps = std::numeric_limits<double>::infinity();
  flags.pcie_gbps = -3;
  flags.accuracy_samples = -1;
  flags.accuracy_steps = -1;
  flags.layers = -4;
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  for (const char* expected :
       {"--context=0: must be >= 1", "--batch=0: must be >= 1",
        "--steps=-1:", "--warmup_steps=-2: must be >= 0", "--budget=0: must be >= 1",
        "--mass_target=1.5:", "--cache_slots=0.5: must be >= 1",
        "--score_decay=0: must be in (0, 1]",
        "--device=-1:", "--gpu_memory_gib=-1:", "--hbm_gbps=inf:", "--pcie_gbps=-3:",
        "--accuracy_samples=-1:", "--accuracy_steps=-1:", "--layers=-4:"}) {
    EXPECT_THAT(error, HasSubstr(expected));
  }
}

TEST(ReplayConfigTest, PageSizeSinkAndWindowMustAgree) {
  ReplayFlags flags;
  flags.page_size = 24;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kInvalidArgument),
              HasSubstr("--page_size=24: allowed 16, 32 or 64"));
  flags.page_size = 32;
  flags.sink = 48;
  flags.window = 1000;
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(error, HasSubstr("--sink=48: must be a multiple of --page_size (32)"));
  EXPECT_THAT(error, HasSubstr("--window=1000: must be a positive multiple of --page_size (32)"));
  flags.window = 0;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kInvalidArgument), HasSubstr("--window=0:"));
}

TEST(ReplayConfigTest, AShapeTheRuntimeRejectsNamesTheShapeFlags) {
  ReplayFlags flags;
  flags.kv_heads = 3;  // does not divide 32 query heads
  flags.head_dim = 96;
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(error, HasSubstr("--kv_heads"));
  EXPECT_THAT(error, HasSubstr("shape.num_kv_heads = 3"));
  EXPECT_THAT(error, HasSubstr("shape.head_dim = 96"));
}

TEST(ReplayConfigTest, CudaWithoutCudaIsAFailedPrecondition) {
  ReplayFlags flags;
  flags.backend = "cuda";
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kFailedPrecondition),
              HasSubstr("built without CUDA"));
  DeviceFacts built = OneGpu();
  built.cuda_devices = 0;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kFailedPrecondition, built),
              HasSubstr("no CUDA device 0 (0 visible)"));
  flags.device = 1;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kFailedPrecondition, OneGpu()),
              HasSubstr("no CUDA device 1 (1 visible)"));
  flags.backend = "host";
  EXPECT_EQ(MustConfig(flags, NoGpu()).backend, Backend::kHost);
}

TEST(ReplayConfigTest, TheRuntimesOwnLimitsHaveTheLastWord) {
  ReplayFlags flags;
  flags.context = int64_t{2} << 20;  // more pages per sequence than the index scores
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kInvalidArgument), HasSubstr("max_sequence_tokens"));
}

// ---- options sizing ------------------------------------------------------------------------

TEST(ReplayConfigTest, OptionsCarryTheRunsChoices) {
  ReplayFlags flags;
  flags.index = "wave";
  flags.budget = 32;
  flags.mass_target = 0.9;
  flags.estimate_pages = 48;
  flags.cache_slots = 2.5;
  flags.score_decay = 0.5;
  flags.sink = 32;
  flags.window = 256;
  flags.page_size = 32;
  flags.hbm_gbps = 2000;
  flags.pcie_gbps = 25;
  flags.phase_timings = true;
  flags.seed = 9;
  for (const auto& [name, policy] :
       {std::pair{"lru", CachePolicy::kLeastRecentlyUsed},
        std::pair{"score", CachePolicy::kLowestScore},
        std::pair{"last", CachePolicy::kLastSelection}, std::pair{"off", CachePolicy::kNone}}) {
    flags.policy = name;
    const ReplayConfig c = MustConfig(flags);
    absl::StatusOr<Options> o = MakeOptions(c);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->cache_policy, policy) << name;
    EXPECT_EQ(o->budget.max_pages, 32);
    EXPECT_EQ(o->budget.mass_target, 0.9);
    EXPECT_EQ(o->index, IndexKind::kWave);
    EXPECT_EQ(o->budget.estimate_pages, 48);
    EXPECT_EQ(o->cache_slots_per_budget, 2.5);
    EXPECT_EQ(o->score_decay, 0.5f);
    EXPECT_EQ(o->sink_tokens, 32);
    EXPECT_EQ(o->window_tokens, 256);
    EXPECT_EQ(o->page_size, 32);
    EXPECT_EQ(o->hbm_bytes_per_second, 2000e9);
    EXPECT_EQ(o->pcie_bytes_per_second, 25e9);
    EXPECT_TRUE(o->collect_timings);
    EXPECT_EQ(o->backend, Backend::kHost);
    EXPECT_EQ(o->shape.num_layers, 32);
    EXPECT_TRUE(ValidateOptions(*o).ok());
  }
}

// ---- index flags ---------------------------------------------------------------------------

TEST(ReplayConfigTest, PageBoundsIsTheDefaultIndexWithoutEstimation) {
  const ReplayConfig c = MustConfig(ReplayFlags{});
  EXPECT_EQ(c.index, IndexKind::kPageBounds);
  EXPECT_EQ(c.estimate_pages, 0);
  absl::StatusOr<Options> o = MakeOptions(c);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->index, IndexKind::kPageBounds);
  EXPECT_EQ(o->budget.estimate_pages, 0);
}

TEST(ReplayConfigTest, WaveIndexTakesAnEstimationZoneInPages) {
  ReplayFlags flags;
  flags.index = "wave";
  flags.estimate_pages = 100;
  const ReplayConfig c = MustConfig(flags);
  EXPECT_EQ(c.index, IndexKind::kWave);
  EXPECT_EQ(c.estimate_pages, 100);
}

TEST(ReplayConfigTest, EstimateFractionIsAShareOfTheColdTokensAtTheLastStep) {
  ReplayFlags flags;
  flags.index = "wave";
  flags.context = 4096;
  flags.steps = 15;
  flags.warmup_steps = 1;  // 4112 tokens after the last step: 257 pages, 4 sink, 64 window
  flags.estimate_fraction = 0.1;
  const ReplayConfig c = MustConfig(flags);
  EXPECT_EQ(c.final_tokens(), 4112);
  // Cold pages [4, 257 - 64) = 189 pages = 3024 tokens; 10% = 302.4 tokens = 18.9 pages.
  EXPECT_EQ(c.estimate_pages, 19);
  EXPECT_EQ(MakeOptions(c)->budget.estimate_pages, 19);
}

TEST(ReplayConfigTest, IndexFlagsAreCheckedTogether) {
  ReplayFlags flags;
  flags.index = "quest";
  flags.estimate_pages = -1;
  flags.estimate_fraction = 1.5;
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(error, AllOf(HasSubstr("--index=quest: allowed page_bounds or wave"),
                           HasSubstr("--estimate_pages=-1: must be >= 0"),
                           HasSubstr("--estimate_fraction=1.5: must be in [0, 1]")));
  flags.index = "wave";
  flags.estimate_pages = 8;
  flags.estimate_fraction = 0.1;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kInvalidArgument),
              HasSubstr("--estimate_pages=8 and --estimate_fraction=0.1: give at most one"));
}

TEST(ReplayConfigTest, PageBoundsRefusesAMassTargetAndAnEstimationZone) {
  ReplayFlags flags;
  flags.mass_target = 0.9;
  flags.estimate_pages = 16;
  const std::string error = ErrorOf(flags, absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(error, AllOf(HasSubstr("--mass_target=0.9: the page_bounds index selects by count"),
                           HasSubstr("--estimate_pages=16: the page_bounds index has no "
                                     "estimation zone")));
  flags.mass_target = 0;
  flags.estimate_pages = 0;
  flags.estimate_fraction = 0.05;
  EXPECT_THAT(ErrorOf(flags, absl::StatusCode::kInvalidArgument),
              HasSubstr("--estimate_fraction=0.05: the page_bounds index has no estimation zone"));
}

TEST(ReplayConfigTest, OptionsAreSizedFromTheWorkload) {
  ReplayFlags flags;
  flags.context = 1000;
  flags.batch = 3;
  flags.steps = 20;
  flags.warmup_steps = 2;
  flags.page_size = 64;
  flags.sink = 64;
  flags.window = 256;
  const ReplayConfig c = MustConfig(flags);
  absl::StatusOr<Options> o = MakeOptions(c);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->max_sequences, 3);
  EXPECT_EQ(o->max_batch_size, 3);
  EXPECT_EQ(o->max_sequence_tokens, 1024);  // 1000 + 2 + 20 tokens, rounded up to a page
  EXPECT_EQ(o->max_prefill_chunk_tokens % o->page_size, 0);
  EXPECT_EQ(PrefillChunkTokens(c), 1024);
  // The host store holds every page of every (sequence, layer, KV head), K and V.
  const int64_t frames_needed = int64_t{3} * 32 * 8 * ((1022 + 63) / 64);
  const int64_t frame_bytes = 2 * PageBytes(o->shape, 64);
  EXPECT_EQ(o->host_memory_bytes, HostStoreBytes(c));
  EXPECT_GE(o->host_memory_bytes / frame_bytes, frames_needed);
  // ... without wasting more than a sixth of it plus the fixed slack.
  EXPECT_LE(o->host_memory_bytes, frames_needed * frame_bytes * 7 / 6 + (int64_t{80} << 20));
  EXPECT_EQ(o->host_memory_bytes % (int64_t{1} << 20), 0);
}

TEST(ReplayConfigTest, ShortPromptsPrefillInOnePageAlignedChunk) {
  ReplayFlags flags;
  flags.context = 100;
  EXPECT_EQ(PrefillChunkTokens(MustConfig(flags)), 112);
}

TEST(ReplayConfigTest, AccuracyStepsSpreadAndEndAtTheLastStep) {
  ReplayConfig c;
  c.steps = 32;
  c.accuracy_steps = 4;
  EXPECT_EQ(AccuracySteps(c), (std::vector<int>{7, 15, 23, 31}));
  c.accuracy_steps = 1;
  EXPECT_EQ(AccuracySteps(c), std::vector<int>{31});
  c.steps = 3;
  c.accuracy_steps = 5;
  EXPECT_EQ(AccuracySteps(c), (std::vector<int>{0, 1, 2}));
  c.accuracy_steps = 0;
  EXPECT_TRUE(AccuracySteps(c).empty());
}

TEST(ReplayConfigTest, AccuracySamplingIsClampedAndSwitchedOffTogether) {
  ReplayFlags flags;
  flags.model = "custom";
  flags.layers = 1;
  flags.query_heads = 4;
  flags.kv_heads = 2;
  flags.head_dim = 64;
  flags.batch = 2;
  flags.steps = 3;
  flags.accuracy_samples = 100;  // 4 triples exist
  flags.accuracy_steps = 10;
  ReplayConfig c = MustConfig(flags);
  EXPECT_EQ(c.accuracy_samples, 4);
  EXPECT_EQ(c.accuracy_steps, 3);
  flags.accuracy_steps = 0;
  c = MustConfig(flags);
  EXPECT_EQ(c.accuracy_samples, 0);
  EXPECT_EQ(c.accuracy_steps, 0);
}

// ---- report --------------------------------------------------------------------------------

TEST(JsonCheckerTest, TellsGoodFromBad) {
  EXPECT_TRUE(JsonChecker(R"({"a": [1, -2.5e3, "x\"y"], "b": {"c": null, "d": true}})").Valid());
  EXPECT_FALSE(JsonChecker(R"({"a": 1,})").Valid());
  EXPECT_FALSE(JsonChecker(R"({"a": nan})").Valid());
  EXPECT_FALSE(JsonChecker(R"({"a": 1} x)").Valid());
}

ReplayResult FabricatedResult() {
  ReplayFlags flags;
  flags.steps = 4;
  flags.phase_timings = true;
  ReplayResult r;
  r.config = MustConfig(flags);
  r.config.pcie_rate_source = "kvtier-probe report /cache/probe.json";
  r.options = *MakeOptions(r.config);
  r.device = "host (2 threads)";
  r.create_seconds = 0.25;
  r.prefill_seconds = 12.5;
  r.prefill_tokens = 4 * 32 * 4096;
  r.step_ms = {100, 300, 200, 400};
  r.decode.decode_steps = 4 * 32;
  r.decode.pages_selected = 4000;
  r.decode.page_hits = 3000;
  r.decode.page_misses = 1000;
  r.decode.bytes_loaded = 4 << 20;
  r.decode.bytes_written_back = 2 << 20;
  r.decode.hot_bytes_read = 6 << 20;
  r.decode.selected_bytes_read = 1 << 20;
  r.decode.summary_bytes_read = 1 << 20;
  r.decode.select_ms = 8;
  r.decode_bound_ms = 2.0;
  r.gpu_bytes_reserved = int64_t{3} << 30;
  AccuracySample a;
  a.step = 3;
  a.sequence = 1;
  a.layer = 5;
  a.kv_head = 2;
  a.tokens = 4101;
  a.captured_tokens = 2000;
  a.selected_pages = 64;
  a.hits = 60;
  a.misses = 4;
  a.mass_captured = 0.9;
  a.min_mass_captured = 0.8;
  a.output_error = 0.05;
  a.restricted_error = 1e-6;
  r.samples.push_back(a);
  a.mass_captured = 0.7;
  a.min_mass_captured = 0.6;
  a.output_error = 0.15;
  a.restricted_error = 3e-6;
  r.samples.push_back(a);
  r.notes.push_back("a \"quoted\" note");
  return r;
}

TEST(ReplayReportTest, SummaryDividesByTheTimedSteps) {
  const ReplaySummary s = Summarize(FabricatedResult());
  EXPECT_EQ(s.steps, 4);
  EXPECT_DOUBLE_EQ(s.decode_seconds, 1.0);
  EXPECT_DOUBLE_EQ(s.tokens_per_second, 4 * 4 / 1.0);  // batch 4, 4 steps, 1 s
  EXPECT_DOUBLE_EQ(s.mean_step_ms, 250);
  EXPECT_DOUBLE_EQ(s.median_step_ms, 250);
  EXPECT_DOUBLE_EQ(s.min_step_ms, 100);
  EXPECT_DOUBLE_EQ(s.max_step_ms, 400);
  EXPECT_DOUBLE_EQ(s.bound_step_ms, 0.5);
  EXPECT_DOUBLE_EQ(s.hit_rate, 0.75);
  EXPECT_DOUBLE_EQ(s.pages_selected_per_step, 1000);
  EXPECT_DOUBLE_EQ(s.page_misses_per_step, 250);
  EXPECT_DOUBLE_EQ(s.pcie_bytes_per_step, (6 << 20) / 4.0);
  EXPECT_DOUBLE_EQ(s.bytes_loaded_per_step, (4 << 20) / 4.0);
  EXPECT_DOUBLE_EQ(s.hbm_bytes_per_step, (8 << 20) / 4.0);
  EXPECT_DOUBLE_EQ(s.select_ms, 2);
  EXPECT_EQ(s.accuracy_samples, 2);
  EXPECT_DOUBLE_EQ(s.mean_mass_captured, 0.8);
  EXPECT_DOUBLE_EQ(s.min_mass_captured, 0.6);
  EXPECT_DOUBLE_EQ(s.mean_output_error, 0.1);
  EXPECT_DOUBLE_EQ(s.max_output_error, 0.15);
  EXPECT_DOUBLE_EQ(s.max_restricted_error, 3e-6);
}

TEST(ReplayReportTest, SummaryOfNothingIsZeros) {
  ReplayResult r;
  const ReplaySummary s = Summarize(r);
  EXPECT_EQ(s.steps, 0);
  EXPECT_EQ(s.tokens_per_second, 0);
  EXPECT_EQ(s.hit_rate, 0);
  EXPECT_EQ(s.accuracy_samples, 0);
  EXPECT_EQ(s.max_output_error, 0);
}

TEST(ReplayReportTest, AnUnwrittenOutputStaysVisibleAsNaN) {
  ReplayResult r = FabricatedResult();
  r.samples[0].output_error = std::numeric_limits<double>::quiet_NaN();
  const ReplaySummary s = Summarize(r);
  EXPECT_TRUE(std::isnan(s.max_output_error));
  EXPECT_TRUE(std::isnan(s.mean_output_error));
  std::ostringstream json;
  PrintJson(r, json);
  EXPECT_TRUE(JsonChecker(json.str()).Valid()) << json.str();
  EXPECT_THAT(json.str(), HasSubstr("\"max_output_error\": null"));
}

TEST(ReplayReportTest, TableShowsEveryHeadline) {
  std::ostringstream out;
  PrintTable(FabricatedResult(), out, /*per_sample=*/true);
  const std::string text = out.str();
  for (const char* expected :
       {"kvtier-replay: llama-3-8b (32 layers, 32 query heads, 8 KV heads, D 128, bf16)",
        "host (auto), host (2 threads)", "batch 4 x 4096 prompt tokens, 1 warm-up + 4 timed",
        "budget 64 pages of 16 tokens", "score (lowest score, decay 0.99), 4 x budget slots",
        "16.0 tokens/s", "250 ms mean, 250 median (100 to 400)", "0.500 ms/step", "measured 500x",
        "75.0 % of 1000 pages selected/step", "PCIe / step", "1.5 MiB", "phases ms/step",
        "select 2.00", "0.8000 mean, 0.6000 min", "0.100 mean, 0.150 max", "3.00e-06 max",
        "note: a \"quoted\" note",
        "rates from               HBM: built-in (an H100's; kvtier-probe --json_out=FILE, then "
        "--rates=FILE, for this machine's); PCIe: kvtier-probe report /cache/probe.json"}) {
    EXPECT_THAT(text, HasSubstr(expected));
  }
  // One line per sample with --samples.
  EXPECT_THAT(text, HasSubstr("4101"));
}

TEST(ReplayReportTest, TableSaysWhenAccuracyWasNotSampled) {
  ReplayResult r = FabricatedResult();
  r.samples.clear();
  std::ostringstream out;
  PrintTable(r, out);
  EXPECT_THAT(out.str(), HasSubstr("not sampled"));
}

TEST(ReplayReportTest, JsonIsWellFormedWithStableKeys) {
  std::ostringstream out;
  PrintJson(FabricatedResult(), out);
  const std::string json = out.str();
  EXPECT_TRUE(JsonChecker(json).Valid()) << json;
  for (const char* expected : {"\"config\": {",
                               "\"model\": \"llama-3-8b\"",
                               "\"policy\": \"score\"",
                               "\"backend\": \"host\"",
                               "\"options\": {",
                               "\"host_memory_bytes\": ",
                               "\"device\": \"host (2 threads)\"",
                               "\"prefill_seconds\": 12.5",
                               "\"hbm_rate_source\": \"built-in (an H100's",
                               "\"pcie_rate_source\": \"kvtier-probe report /cache/probe.json\"",
                               "\"tokens_per_second\": 16",
                               "\"bound_step_ms\": 0.5",
                               "\"hit_rate\": 0.75",
                               "\"pcie_bytes_per_step\": 1.57286e+06",
                               "\"select_ms_per_step\": 2",
                               "\"step_ms\": [100, 300, 200, 400]",
                               "\"num_samples\": 2",
                               "\"mean_mass_captured\": 0.8",
                               "\"samples\": [",
                               "\"restricted_error\": 3e-06",
                               "\"notes\": [\"a \\\"quoted\\\" note\"]"}) {
    EXPECT_THAT(json, HasSubstr(expected));
  }
}

TEST(ReplayReportTest, JsonOfAnEmptyResultIsWellFormed) {
  ReplayResult r;
  r.config = MustConfig(ReplayFlags{});
  std::ostringstream out;
  PrintJson(r, out);
  EXPECT_TRUE(JsonChecker(out.str()).Valid()) << out.str();
  EXPECT_THAT(out.str(), HasSubstr("\"samples\": []"));
}

TEST(ReplayReportTest, ProgressBarFillsInProportion) {
  const std::string half = FormatProgress("decode", 16, 32, 60);
  EXPECT_EQ(half.size(), 60u);
  EXPECT_THAT(half, HasSubstr("16/32"));
  const size_t hashes = std::count(half.begin(), half.end(), '#');
  const size_t dots = std::count(half.begin(), half.end(), '.');
  EXPECT_LE(std::max(hashes, dots) - std::min(hashes, dots), 1u);
  const std::string done = FormatProgress("prefill", 5, 5, 60);
  EXPECT_EQ(std::count(done.begin(), done.end(), '.'), 0);
  const std::string none = FormatProgress("prefill", 0, 0, 60);
  EXPECT_EQ(std::count(none.begin(), none.end(), '#'), 0);
}

TEST(ReplayReportTest, ProgressShowsAnEtaFromTheRateSoFar) {
  // A quarter done in 20 s: 60 s to go.
  const std::string line = FormatProgress("serve", 25, 100, 70, 20.0);
  EXPECT_NE(line.find("25/100  ETA 1m00s"), std::string::npos) << line;
  EXPECT_EQ(FormatProgress("serve", 100, 100, 70, 20.0).find("ETA"), std::string::npos);
  EXPECT_EQ(FormatProgress("serve", 0, 100, 70, 20.0).find("ETA"), std::string::npos);
  EXPECT_EQ(FormatEta(42), "42s");
  EXPECT_EQ(FormatEta(3720), "1h02m");
}

TEST(ReplayReportTest, FormatBytesPicksAUnit) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(4096), "4 KiB");
  EXPECT_EQ(FormatBytes(1.5 * (1 << 20)), "1.5 MiB");
  EXPECT_EQ(FormatBytes(double{int64_t{1} << 30}), "1 GiB");
}

}  // namespace
}  // namespace kvtier::replay
