#include "runtime/core/options.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvtier {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Llama-3-8B: 32 layers, 32 query heads, 8 KV heads of dimension 128, bf16.
ModelShape Llama3_8B() {
  ModelShape shape;
  shape.num_layers = 32;
  shape.num_query_heads = 32;
  shape.num_kv_heads = 8;
  shape.head_dim = 128;
  shape.dtype = DType::kBF16;
  return shape;
}

Options ValidOptions() {
  Options options;
  options.shape = Llama3_8B();
  return options;
}

// The message as a std::string (Debian's absl::string_view is not std::string_view).
std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(ValidateOptionsTest, DefaultsWithARealShapeAreValid) {
  EXPECT_TRUE(ValidateOptions(ValidOptions()).ok()) << ValidateOptions(ValidOptions());
}

TEST(ValidateOptionsTest, DefaultOptionsWithoutAShapeAreInvalid) {
  const absl::Status status = ValidateOptions(Options{});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("shape.num_layers = 0"));
}

// ---------------------------------------------------------------------------------------
// Valid edge cases: each must pass on its own.

struct Case {
  std::string name;
  std::function<void(Options&)> mutate;
  std::vector<std::string> expected;  // substrings of the message; empty for valid cases
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string CaseName(const testing::TestParamInfo<Case>& info) { return info.param.name; }

class ValidOptionsTest : public testing::TestWithParam<Case> {};

TEST_P(ValidOptionsTest, Passes) {
  Options options = ValidOptions();
  GetParam().mutate(options);
  const absl::Status status = ValidateOptions(options);
  EXPECT_TRUE(status.ok()) << status;
}

INSTANTIATE_TEST_SUITE_P(
    Edges, ValidOptionsTest,
    testing::Values(
        Case{"Fp16", [](Options& o) { o.shape.dtype = DType::kFP16; }, {}},
        Case{"HeadDim64", [](Options& o) { o.shape.head_dim = 64; }, {}},
        Case{"HeadDim256", [](Options& o) { o.shape.head_dim = 256; }, {}},
        Case{"MultiHeadAttention", [](Options& o) { o.shape.num_kv_heads = 32; }, {}},
        Case{"GroupSize16", [](Options& o) { o.shape.num_kv_heads = 2; }, {}},
        Case{"SingleLayerSingleHead",
             [](Options& o) {
               o.shape.num_layers = 1;
               o.shape.num_query_heads = 1;
               o.shape.num_kv_heads = 1;
             },
             {}},
        Case{"PageSize32", [](Options& o) { o.page_size = 32; }, {}},
        Case{"PageSize64", [](Options& o) { o.page_size = 64; }, {}},
        Case{"NoSinkTokens", [](Options& o) { o.sink_tokens = 0; }, {}},
        Case{"OnePageWindow", [](Options& o) { o.window_tokens = 16; }, {}},
        Case{"OnePageBudget", [](Options& o) { o.budget.max_pages = 1; }, {}},
        Case{"LargestBudget", [](Options& o) { o.budget.max_pages = 4096; }, {}},
        Case{"MassTarget1",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.mass_target = 1.0;
             },
             {}},
        Case{"MassTargetHalf",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.mass_target = 0.5;
             },
             {}},
        Case{"WaveEstimationZone",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.estimate_pages = 512;
             },
             {}},
        Case{"WaveEstimateRest",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.estimate_rest = true;
             },
             {}},
        Case{"CacheSlotsExactlyOneBudget", [](Options& o) { o.cache_slots_per_budget = 1.0; }, {}},
        Case{"LruPolicy", [](Options& o) { o.cache_policy = CachePolicy::kLeastRecentlyUsed; }, {}},
        Case{"LastStepSelectionPolicy",
             [](Options& o) { o.cache_policy = CachePolicy::kLastSelection; },
             {}},
        Case{"BatchEqualsMaxSequences",
             [](Options& o) {
               o.max_sequences = 8;
               o.max_batch_size = 8;
             },
             {}},
        Case{"ExplicitSoftmaxScale", [](Options& o) { o.softmax_scale = 0.125f; }, {}},
        Case{"HostBackend", [](Options& o) { o.backend = Backend::kHost; }, {}},
        Case{"SecondDevice", [](Options& o) { o.device_id = 1; }, {}}),
    CaseName);

// ---------------------------------------------------------------------------------------
// One bad field at a time: InvalidArgument naming that field and its value, and no other
// problem reported.

class InvalidOptionsTest : public testing::TestWithParam<Case> {};

TEST_P(InvalidOptionsTest, ReportsTheFieldAndItsValue) {
  Options options = ValidOptions();
  GetParam().mutate(options);
  const absl::Status status = ValidateOptions(options);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  const std::string message = Message(status);
  EXPECT_THAT(message, StartsWith("invalid kvtier options: "));
  for (const std::string& expected : GetParam().expected) {
    EXPECT_THAT(message, HasSubstr(expected));
  }
  EXPECT_THAT(message, Not(HasSubstr("; "))) << "exactly one problem expected";
}

INSTANTIATE_TEST_SUITE_P(
    OneBadField, InvalidOptionsTest,
    testing::Values(
        // Model shape.
        Case{"ZeroLayers", [](Options& o) { o.shape.num_layers = 0; }, {"shape.num_layers = 0"}},
        Case{"NegativeLayers",
             [](Options& o) { o.shape.num_layers = -3; },
             {"shape.num_layers = -3"}},
        Case{"ZeroQueryHeads",
             [](Options& o) { o.shape.num_query_heads = 0; },
             {"shape.num_query_heads = 0"}},
        Case{"ZeroKvHeads",
             [](Options& o) { o.shape.num_kv_heads = 0; },
             {"shape.num_kv_heads = 0"}},
        Case{"NegativeKvHeads",
             [](Options& o) { o.shape.num_kv_heads = -8; },
             {"shape.num_kv_heads = -8"}},
        Case{"KvHeadsDoNotDivideQueryHeads",
             [](Options& o) { o.shape.num_kv_heads = 5; },
             {"shape.num_kv_heads = 5", "must divide shape.num_query_heads (32)"}},
        Case{"MoreKvHeadsThanQueryHeads",
             [](Options& o) { o.shape.num_kv_heads = 64; },
             {"shape.num_kv_heads = 64", "must divide shape.num_query_heads (32)"}},
        Case{"GroupSize32",
             [](Options& o) {
               o.shape.num_query_heads = 64;
               o.shape.num_kv_heads = 2;
             },
             {"shape.num_kv_heads = 2", "(32) must be at most 16"}},
        Case{"HeadDim96", [](Options& o) { o.shape.head_dim = 96; }, {"shape.head_dim = 96"}},
        Case{"HeadDim0", [](Options& o) { o.shape.head_dim = 0; }, {"shape.head_dim = 0"}},
        Case{"HeadDim512", [](Options& o) { o.shape.head_dim = 512; }, {"shape.head_dim = 512"}},
        Case{"DtypeFp32",
             [](Options& o) { o.shape.dtype = DType::kFP32; },
             {"shape.dtype = fp32", "bf16 or fp16"}},
        Case{"DtypeOutOfRange",
             [](Options& o) { o.shape.dtype = static_cast<DType>(9); },
             {"shape.dtype = unknown"}},
        // Pages, sink and window.
        Case{"PageSize24", [](Options& o) { o.page_size = 24; }, {"page_size = 24"}},
        Case{"PageSize8", [](Options& o) { o.page_size = 8; }, {"page_size = 8"}},
        Case{"PageSize128", [](Options& o) { o.page_size = 128; }, {"page_size = 128"}},
        Case{"PageSize0", [](Options& o) { o.page_size = 0; }, {"page_size = 0"}},
        Case{"PageSizeMinus16", [](Options& o) { o.page_size = -16; }, {"page_size = -16"}},
        Case{"NegativeSink", [](Options& o) { o.sink_tokens = -16; }, {"sink_tokens = -16"}},
        Case{"SinkNotAMultipleOfPage",
             [](Options& o) { o.sink_tokens = 40; },
             {"sink_tokens = 40", "multiple of page_size (16)"}},
        Case{"SinkNotAMultipleOfPage64",
             [](Options& o) {
               o.page_size = 64;
               o.sink_tokens = 96;
             },
             {"sink_tokens = 96", "multiple of page_size (64)"}},
        Case{"ZeroWindow", [](Options& o) { o.window_tokens = 0; }, {"window_tokens = 0"}},
        Case{"NegativeWindow",
             [](Options& o) { o.window_tokens = -1024; },
             {"window_tokens = -1024"}},
        Case{"WindowNotAMultipleOfPage",
             [](Options& o) { o.window_tokens = 1000; },
             {"window_tokens = 1000", "multiple of page_size (16)"}},
        Case{"WindowShorterThanAPage",
             [](Options& o) { o.window_tokens = 8; },
             {"window_tokens = 8"}},
        // Selection budget and page cache.
        Case{"ZeroBudget", [](Options& o) { o.budget.max_pages = 0; }, {"budget.max_pages = 0"}},
        Case{"NegativeBudget",
             [](Options& o) { o.budget.max_pages = -128; },
             {"budget.max_pages = -128"}},
        Case{"BudgetAboveLimit",
             [](Options& o) { o.budget.max_pages = 4097; },
             {"budget.max_pages = 4097", "[1, 4096]"}},
        Case{"NegativeMassTarget",
             [](Options& o) { o.budget.mass_target = -0.25; },
             {"budget.mass_target = -0.25"}},
        Case{"MassTargetAboveOne",
             [](Options& o) { o.budget.mass_target = 1.5; },
             {"budget.mass_target = 1.5"}},
        Case{"PageBoundsMassTarget",
             [](Options& o) { o.budget.mass_target = 0.5; },
             {"budget.mass_target = 0.5", "index = wave"}},
        Case{"PageBoundsEstimationZone",
             [](Options& o) { o.budget.estimate_pages = 8; },
             {"budget.estimate_pages = 8", "no estimation zone"}},
        Case{"PageBoundsEstimateRest",
             [](Options& o) { o.budget.estimate_rest = true; },
             {"budget.estimate_rest = true", "no estimation zone", "index = wave"}},
        Case{"WaveEstimateRestWithAZone",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.estimate_rest = true;
               o.budget.estimate_pages = 8;
             },
             {"budget.estimate_pages = 8", "must be 0 with budget.estimate_rest"}},
        Case{"WaveNegativeEstimationZone",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.estimate_pages = -1;
             },
             {"budget.estimate_pages = -1"}},
        Case{"WaveBudgetsAboveTheKernelsLimit",
             [](Options& o) {
               o.index = IndexKind::kWave;
               o.budget.max_pages = 4000;
               o.budget.estimate_pages = 100;
             },
             {"budget.estimate_pages = 100", "at most 4096"}},
        Case{"UnknownIndexKind",
             [](Options& o) { o.index = static_cast<IndexKind>(7); },
             {"index = 7"}},
        Case{"NaNMassTarget",
             [](Options& o) { o.budget.mass_target = kNaN; },
             {"budget.mass_target = nan"}},
        Case{"CacheSlotsBelowOneBudget",
             [](Options& o) { o.cache_slots_per_budget = 0.5; },
             {"cache_slots_per_budget = 0.5"}},
        Case{"ZeroCacheSlots",
             [](Options& o) { o.cache_slots_per_budget = 0.0; },
             {"cache_slots_per_budget = 0"}},
        Case{"NaNCacheSlots",
             [](Options& o) { o.cache_slots_per_budget = kNaN; },
             {"cache_slots_per_budget = nan"}},
        Case{"InfiniteCacheSlots",
             [](Options& o) { o.cache_slots_per_budget = kInf; },
             {"cache_slots_per_budget = inf"}},
        Case{"CachePolicyOutOfRange",
             [](Options& o) { o.cache_policy = static_cast<CachePolicy>(7); },
             {"cache_policy = 7"}},
        // Memory and batch limits.
        Case{"ZeroHostMemory",
             [](Options& o) { o.host_memory_bytes = 0; },
             {"host_memory_bytes = 0"}},
        Case{"NegativeHostMemory",
             [](Options& o) { o.host_memory_bytes = -4096; },
             {"host_memory_bytes = -4096"}},
        Case{"ZeroGpuMemory", [](Options& o) { o.gpu_memory_bytes = 0; }, {"gpu_memory_bytes = 0"}},
        Case{"NegativeGpuMemory",
             [](Options& o) { o.gpu_memory_bytes = -1; },
             {"gpu_memory_bytes = -1"}},
        Case{"ZeroMaxSequences", [](Options& o) { o.max_sequences = 0; }, {"max_sequences = 0"}},
        Case{"ZeroBatch", [](Options& o) { o.max_batch_size = 0; }, {"max_batch_size = 0"}},
        Case{"BatchAboveMaxSequences",
             [](Options& o) {
               o.max_sequences = 32;
               o.max_batch_size = 33;
             },
             {"max_batch_size = 33", "max_sequences (32)"}},
        // Softmax scale, backend, device.
        Case{"NegativeSoftmaxScale",
             [](Options& o) { o.softmax_scale = -0.5f; },
             {"softmax_scale = -0.5"}},
        Case{"NaNSoftmaxScale",
             [](Options& o) { o.softmax_scale = std::numeric_limits<float>::quiet_NaN(); },
             {"softmax_scale = nan"}},
        Case{"InfiniteSoftmaxScale",
             [](Options& o) { o.softmax_scale = std::numeric_limits<float>::infinity(); },
             {"softmax_scale = inf"}},
        Case{"BackendOutOfRange",
             [](Options& o) { o.backend = static_cast<Backend>(5); },
             {"backend = 5"}},
        Case{"NegativeDeviceId", [](Options& o) { o.device_id = -1; }, {"device_id = -1"}}),
    CaseName);

TEST(ValidateOptionsTest, ReportsEveryBadFieldInOneMessage) {
  Options options = ValidOptions();
  options.shape.head_dim = 96;
  options.page_size = 24;
  options.budget.max_pages = 0;
  options.budget.mass_target = 2.0;
  options.gpu_memory_bytes = 0;
  options.device_id = -2;
  const absl::Status status = ValidateOptions(options);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message = Message(status);
  EXPECT_THAT(message, HasSubstr("shape.head_dim = 96"));
  EXPECT_THAT(message, HasSubstr("page_size = 24"));
  EXPECT_THAT(message, HasSubstr("budget.max_pages = 0"));
  EXPECT_THAT(message, HasSubstr("budget.mass_target = 2"));
  EXPECT_THAT(message, HasSubstr("gpu_memory_bytes = 0"));
  EXPECT_THAT(message, HasSubstr("device_id = -2"));
  // Six problems, separated by "; ".
  size_t separators = 0;
  for (size_t at = message.find("; "); at != std::string::npos; at = message.find("; ", at + 1)) {
    ++separators;
  }
  EXPECT_EQ(separators, 5u) << message;
}

TEST(ValidateOptionsTest, SinkAndWindowBothOffThePageGrid) {
  Options options = ValidOptions();
  options.page_size = 32;
  options.sink_tokens = 48;
  options.window_tokens = 1040;
  const absl::Status status = ValidateOptions(options);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("sink_tokens = 48"));
  EXPECT_THAT(Message(status), HasSubstr("window_tokens = 1040"));
}

// ---------------------------------------------------------------------------------------

TEST(EffectiveSoftmaxScaleTest, ZeroMeansInverseSqrtHeadDim) {
  Options options = ValidOptions();
  EXPECT_FLOAT_EQ(options.EffectiveSoftmaxScale(), 1.0f / std::sqrt(128.0f));
  options.shape.head_dim = 64;
  EXPECT_FLOAT_EQ(options.EffectiveSoftmaxScale(), 0.125f);
  options.shape.head_dim = 256;
  EXPECT_FLOAT_EQ(options.EffectiveSoftmaxScale(), 0.0625f);
}

TEST(EffectiveSoftmaxScaleTest, ExplicitScaleIsUsedAsIs) {
  Options options = ValidOptions();
  options.softmax_scale = 0.3f;
  EXPECT_EQ(options.EffectiveSoftmaxScale(), 0.3f);
}

TEST(EffectiveSoftmaxScaleTest, NoHeadDimGivesZero) {
  Options options;  // head_dim 0
  EXPECT_EQ(options.EffectiveSoftmaxScale(), 0.0f);
}

// ---------------------------------------------------------------------------------------

TEST(ValidateModelShapeTest, RealShapesAreValid) {
  EXPECT_TRUE(ValidateModelShape(Llama3_8B()).ok());
  ModelShape fp16 = Llama3_8B();
  fp16.dtype = DType::kFP16;
  EXPECT_TRUE(ValidateModelShape(fp16).ok());
  ModelShape llama70b = Llama3_8B();
  llama70b.num_layers = 80;
  llama70b.num_query_heads = 64;
  EXPECT_TRUE(ValidateModelShape(llama70b).ok());
}

TEST(ValidateModelShapeTest, DefaultShapeReportsEveryEmptyField) {
  const absl::Status status = ValidateModelShape(ModelShape{});
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message = Message(status);
  EXPECT_THAT(message, StartsWith("invalid model shape: "));
  EXPECT_THAT(message, HasSubstr("shape.num_layers = 0"));
  EXPECT_THAT(message, HasSubstr("shape.num_query_heads = 0"));
  EXPECT_THAT(message, HasSubstr("shape.num_kv_heads = 0"));
  EXPECT_THAT(message, HasSubstr("shape.head_dim = 0"));
  EXPECT_THAT(message, Not(HasSubstr("shape.dtype")));  // bf16 by default
}

TEST(ValidateModelShapeTest, ReportsOnlyShapeProblems) {
  ModelShape shape = Llama3_8B();
  shape.head_dim = 96;
  shape.dtype = DType::kFP32;
  const absl::Status status = ValidateModelShape(shape);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Message(status),
            "invalid model shape: shape.head_dim = 96: allowed 64, 128 or 256; "
            "shape.dtype = fp32: allowed bf16 or fp16");
}

TEST(ValidateModelShapeTest, GroupSizeLimit) {
  ModelShape shape = Llama3_8B();
  shape.num_query_heads = 128;
  shape.num_kv_heads = 8;  // group 16: the largest supported
  EXPECT_TRUE(ValidateModelShape(shape).ok());
  shape.num_kv_heads = 4;  // group 32
  const absl::Status status = ValidateModelShape(shape);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("shape.num_kv_heads = 4"));
  EXPECT_THAT(Message(status), HasSubstr("(32) must be at most 16"));
}

TEST(PageBytesTest, PageTimesHeadDimTimesElementSize) {
  EXPECT_EQ(PageBytes(Llama3_8B(), 16), 16 * 128 * 2);
  ModelShape shape = Llama3_8B();
  shape.dtype = DType::kFP32;
  shape.head_dim = 256;
  EXPECT_EQ(PageBytes(shape, 64), 64 * 256 * 4);
}

TEST(IsSupportedPageSizeTest, Only16To64PowersOfTwo) {
  static_assert(IsSupportedPageSize(16) && IsSupportedPageSize(32) && IsSupportedPageSize(64));
  static_assert(!IsSupportedPageSize(0) && !IsSupportedPageSize(8) && !IsSupportedPageSize(24));
  static_assert(!IsSupportedPageSize(128) && !IsSupportedPageSize(-16));
}

}  // namespace
}  // namespace kvtier
