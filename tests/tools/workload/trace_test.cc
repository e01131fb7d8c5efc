// The serving-trace readers (tools/workload/trace.h): the real traces as the README measures
// them, every kind of malformed line (an error naming source, line and field, or skipped and
// counted), the options (first N, time scale, long prompts clipped or skipped), format names.
#include "tools/workload/trace.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace kvtier {
namespace {

constexpr char kHeader[] = "TIMESTAMP,ContextTokens,GeneratedTokens\n";

std::string TraceDir() { return KVTIER_TRACE_DATA_DIR; }

absl::StatusOr<Trace> Azure(const std::string& rows, const TraceOptions& options = {}) {
  return ParseTrace(absl::StrCat(kHeader, rows), TraceFormat::kAzureCsv, options, "a.csv");
}
absl::StatusOr<Trace> Mooncake(const std::string& lines, const TraceOptions& options = {}) {
  return ParseTrace(lines, TraceFormat::kMooncakeJsonl, options, "m.jsonl");
}
std::string MooncakeLine(double ms, int input, int output) {
  std::string ids;
  for (int i = 0; i < (input + 511) / 512; ++i) absl::StrAppend(&ids, i == 0 ? "" : ", ", 100 + i);
  return absl::StrCat("{\"timestamp\": ", ms, ", \"input_length\": ", input,
                      ", \"output_length\": ", output, ", \"hash_ids\": [", ids, "]}\n");
}

// `result` failed with InvalidArgument whose message holds every one of `parts`.
void ExpectInvalid(const absl::StatusOr<Trace>& result, const std::vector<std::string>& parts) {
  ASSERT_FALSE(result.ok()) << "accepted; expected an error with " << parts[0];
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  for (const std::string& part : parts) {
    EXPECT_NE(result.status().message().find(part), absl::string_view::npos)
        << "\"" << part << "\" not in: " << result.status();
  }
}

TEST(TraceTest, ReadsTheAzureTraceAsTheReadmeMeasuresIt) {
  const std::string path = TraceDir() + "/AzureLLMInferenceTrace_conv.csv";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is not here";
  absl::StatusOr<Trace> trace = ReadTrace(path, std::nullopt, {});
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->format, TraceFormat::kAzureCsv);
  ASSERT_EQ(trace->requests.size(), 19366u);
  EXPECT_EQ(trace->data_lines, 19366);
  EXPECT_EQ(trace->bad_lines + trace->clipped + trace->skipped, 0);
  // 2023-11-16 18:15:46.6805900,374,44 then 18:15:50.9951690,396,109.
  EXPECT_EQ(trace->requests[0].line, 2);
  EXPECT_EQ(trace->requests[0].arrival_s, 0.0);
  EXPECT_EQ(trace->requests[0].input_tokens, 374);
  EXPECT_EQ(trace->requests[0].output_tokens, 44);
  EXPECT_NEAR(trace->requests[1].arrival_s, 4.314579, 1e-9);
  int64_t longest = 0;
  for (size_t i = 1; i < trace->requests.size(); ++i) {
    ASSERT_GE(trace->requests[i].arrival_s, trace->requests[i - 1].arrival_s);
    longest = std::max(longest, trace->requests[i].input_tokens);
  }
  EXPECT_EQ(longest, 14050);  // the README's input max
  // The README's 5.5 requests a second, over about an hour.
  EXPECT_NEAR(19365 / trace->requests.back().arrival_s, 5.5, 0.05);
}

TEST(TraceTest, ReadsTheMooncakeTraceWithItsHashBlocks) {
  const std::string path = TraceDir() + "/mooncake_conversation_trace.jsonl";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is not here";
  absl::StatusOr<Trace> trace = ReadTrace(path, std::nullopt, {});
  ASSERT_TRUE(trace.ok()) << trace.status();
  EXPECT_EQ(trace->format, TraceFormat::kMooncakeJsonl);
  ASSERT_EQ(trace->requests.size(), 12031u);
  const TraceRequest& first = trace->requests[0];
  EXPECT_EQ(first.input_tokens, 6758);
  EXPECT_EQ(first.output_tokens, 500);
  ASSERT_EQ(first.hash_ids.size(), 14u);
  EXPECT_EQ(first.hash_ids[13], 13);
  // The second request shares the first's leading block.
  EXPECT_EQ(trace->requests[1].hash_ids[0], 0);
  int64_t longest = 0;
  for (const TraceRequest& r : trace->requests) {
    ASSERT_EQ(static_cast<int64_t>(r.hash_ids.size()), (r.input_tokens + 511) / 512);
    longest = std::max(longest, r.input_tokens);
  }
  EXPECT_EQ(longest, 126195);                                        // the README's input max
  EXPECT_NEAR(12030 / trace->requests.back().arrival_s, 3.4, 0.05);  // requests a second
}

TEST(TraceTest, ClipsOrSkipsLongPromptsAndCountsThem) {
  const std::string lines =
      MooncakeLine(0, 3000, 10) + MooncakeLine(5, 100, 20) + MooncakeLine(9, 1025, 30);
  TraceOptions clip;
  clip.max_context = 1024;
  absl::StatusOr<Trace> clipped = Mooncake(lines, clip);
  ASSERT_TRUE(clipped.ok()) << clipped.status();
  ASSERT_EQ(clipped->requests.size(), 3u);
  EXPECT_EQ(clipped->clipped, 2);
  EXPECT_EQ(clipped->requests[0].input_tokens, 1024);
  EXPECT_EQ(clipped->requests[0].stated_input_tokens, 3000);
  EXPECT_EQ(clipped->requests[0].hash_ids.size(), 2u);  // blocks of the clipped prompt
  EXPECT_EQ(clipped->requests[2].hash_ids.size(), 2u);

  TraceOptions skip = clip;
  skip.long_prompts = LongPrompts::kSkip;
  absl::StatusOr<Trace> skipped = Mooncake(lines, skip);
  ASSERT_TRUE(skipped.ok()) << skipped.status();
  ASSERT_EQ(skipped->requests.size(), 1u);
  EXPECT_EQ(skipped->skipped, 2);
  EXPECT_EQ(skipped->requests[0].line, 2);
  EXPECT_EQ(skipped->requests[0].arrival_s, 0.0);  // times count from the first kept request
}

TEST(TraceTest, TakesTheFirstRequestsAndScalesTime) {
  TraceOptions options;
  options.max_requests = 2;
  options.time_scale = 4.0;
  absl::StatusOr<Trace> trace =
      Azure("2023-11-16 18:15:46.5,10,1\n2023-11-16 18:15:50.5,20,2\n2023-11-16 18:15:51,30,3\n",
            options);
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->requests.size(), 2u);
  EXPECT_DOUBLE_EQ(trace->requests[1].arrival_s, 1.0);  // 4 s, 4 times faster
  EXPECT_EQ(trace->data_lines, 2);
}

TEST(TraceTest, AcceptsCrlfBlankLinesAndNoFinalNewline) {
  absl::StatusOr<Trace> trace = ParseTrace(
      "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-01-01 00:00:00,5,6\r\n\n"
      "2023-01-01 00:00:01.25,7,8",
      TraceFormat::kAzureCsv, {}, "crlf.csv");
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->requests.size(), 2u);
  EXPECT_DOUBLE_EQ(trace->requests[1].arrival_s, 1.25);
  EXPECT_EQ(trace->requests[1].line, 4);
}

TEST(TraceTest, AzureBadRowsNameTheLineAndTheField) {
  const struct {
    std::string row;
    std::string says;
  } cases[] = {
      {"2023-11-16 18:15:46.68,374", "2 comma-separated fields"},
      {"2023-11-16 18:15:46.68,374,44,1", "4 comma-separated fields"},
      {"2023-11-16 18:15:46.68,,44", "ContextTokens is empty"},
      {"2023-11-16 18:15:46.68,-3,44", "ContextTokens \"-3\" is not a count"},
      {"2023-11-16 18:15:46.68,3.5,44", "is not a count"},
      {"2023-11-16 18:15:46.68,374,0", "GeneratedTokens is 0"},
      {"2023-11-16 18:15:46.68,374,99999999999", "is above 2147483647"},
      {"2023-13-16 18:15:46.68,374,44", "not a real date"},
      {"2023-02-30 18:15:46,374,44", "not a real date"},
      {"2023-11-16 24:00:00,374,44", "not a real date"},
      {"2023-11-16T18:15:46,374,44", "is not a date and time"},
      {"2023-11-16 18:15,374,44", "is not a date and time"},
      {"2023-11-16 18:15:46.,374,44", "bad fraction"},
      {"2023-11-16 18:15:46.1234567890,374,44", "bad fraction"},
      {"2023-11-16 18:15:46.12a,374,44", "bad fraction"},
      {"1708-11-16 18:15:46,374,44", "outside the years 1970 to 2261"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.row);
    ExpectInvalid(Azure("2023-11-16 18:15:40,1,1\n" + c.row + "\n"), {"a.csv:3: ", c.says});
  }
}

TEST(TraceTest, MooncakeBadLinesNameTheLineAndWhatIsWrong) {
  const struct {
    std::string line;
    std::string says;
  } cases[] = {
      {"[1, 2]", "expected a JSON object"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}", "\"hash_ids\" is missing"},
      {"{\"timestamp\": 0, \"timestamp\": 1, \"input_length\": 5, \"output_length\": 1, "
       "\"hash_ids\": [1]}",
       "\"timestamp\" appears twice"},
      {"{\"timestamp\": -1, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}",
       "timestamp is -1"},
      {"{\"timestamp\": \"0\", \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}",
       "timestamp is not a number"},
      {"{\"timestamp\": 0, \"input_length\": 5.5, \"output_length\": 1, \"hash_ids\": [1]}",
       "input_length is 5.5"},
      {"{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1, \"hash_ids\": []}",
       "input_length is 0"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 99999999999999999999, "
       "\"hash_ids\": [1]}",
       "output_length is 99999999999999999999"},
      {"{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 1, \"hash_ids\": [1]}",
       "hash_ids has 1 ids; input_length 600 needs"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [-1]}",
       "a hash id is -1"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": 7}",
       "hash_ids is not an array"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1} ",
       "expected ',' or ']'"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]} x",
       "text after the object"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]",
       "expected ',' or '}'"},
      {"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1], "
       "\"note\": \"unterminated}",
       "unterminated string"},
      {"{\"timestamp\": 0 \"input_length\": 5}", "expected ',' or '}' at byte 17"},
      {"{\"x\": " + std::string(40, '[') + std::string(40, ']') + "}", "nested too deep"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.line);
    ExpectInvalid(Mooncake(MooncakeLine(0, 5, 1) + c.line + "\n"), {"m.jsonl:2: ", c.says});
  }
}

TEST(TraceTest, OtherKeysOfAnyTypeAreSkipped) {
  absl::StatusOr<Trace> trace = Mooncake(
      "{\"note\": {\"a\": [1, 2.5e3, \"s\\\"\\u00e9\", true, null]}, \"hash_ids\": [4], "
      "\"output_length\": 2, \"input_length\": 1, \"timestamp\": 12.5}\n");
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->requests.size(), 1u);
  EXPECT_EQ(trace->requests[0].hash_ids, std::vector<int64_t>{4});
}

TEST(TraceTest, TimeGoingBackIsABadLine) {
  ExpectInvalid(Mooncake(MooncakeLine(10, 5, 1) + MooncakeLine(9, 5, 1)),
                {"m.jsonl:2: ", "before line 1's", "arrival order"});
  ExpectInvalid(Azure("2023-11-16 18:15:46,1,1\n2023-11-16 18:15:45.5,1,1\n"),
                {"a.csv:3: ", "500 ms before line 2's"});
}

TEST(TraceTest, SkipBadLinesCountsThemAndKeepsTheRest) {
  TraceOptions options;
  options.skip_bad_lines = true;
  absl::StatusOr<Trace> trace = Azure(
      "2023-11-16 18:15:46,1,1\nnot a row\n2023-11-16 18:15:45,1,1\n2023-11-16 18:15:47,2,2\n",
      options);
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->requests.size(), 2u);
  EXPECT_EQ(trace->bad_lines, 2);
  EXPECT_EQ(trace->data_lines, 4);
  EXPECT_NE(trace->first_bad_line.find("a.csv:3: "), std::string::npos) << trace->first_bad_line;
  EXPECT_EQ(trace->requests[1].line, 5);
  EXPECT_DOUBLE_EQ(trace->requests[1].arrival_s, 1.0);
}

TEST(TraceTest, FileLevelErrorsAreNeverSkipped) {
  TraceOptions skip;
  skip.skip_bad_lines = true;
  ExpectInvalid(ParseTrace("TIMESTAMP,Context,Generated\n2023-11-16 18:15:46,1,1\n",
                           TraceFormat::kAzureCsv, skip, "h.csv"),
                {"h.csv:1: ", "expected the header TIMESTAMP,ContextTokens,GeneratedTokens"});
  ExpectInvalid(ParseTrace("", TraceFormat::kAzureCsv, skip, "e.csv"), {"e.csv: empty"});
  ExpectInvalid(ParseTrace(kHeader, TraceFormat::kAzureCsv, skip, "h.csv"), {"no requests"});
  ExpectInvalid(ParseTrace("\n\n", TraceFormat::kMooncakeJsonl, skip, "e.jsonl"),
                {"e.jsonl: no requests"});
}

TEST(TraceTest, BadOptionsAreRefused) {
  TraceOptions o;
  o.time_scale = 0.0;
  ExpectInvalid(Azure("2023-11-16 18:15:46,1,1\n", o), {"time_scale is 0"});
  o = {};
  o.max_requests = -1;
  ExpectInvalid(Azure("2023-11-16 18:15:46,1,1\n", o), {"max_requests is -1"});
  o = {};
  o.max_context = -5;
  ExpectInvalid(Azure("2023-11-16 18:15:46,1,1\n", o), {"max_context is -5"});
}

TEST(TraceTest, FormatsByNameAndExtension) {
  EXPECT_EQ(*ParseTraceFormat("azure"), TraceFormat::kAzureCsv);
  EXPECT_EQ(*ParseTraceFormat("mooncake"), TraceFormat::kMooncakeJsonl);
  EXPECT_FALSE(ParseTraceFormat("sharegpt").ok());
  EXPECT_EQ(*TraceFormatOfPath("x/y.CSV"), TraceFormat::kAzureCsv);
  EXPECT_EQ(*TraceFormatOfPath("t.jsonl"), TraceFormat::kMooncakeJsonl);
  const absl::StatusOr<TraceFormat> unknown = TraceFormatOfPath("t.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("--trace_format"), absl::string_view::npos);
  EXPECT_EQ(TraceFormatName(TraceFormat::kMooncakeJsonl), "mooncake");
}

TEST(TraceTest, AMissingFileIsNotFoundAndNamesThePath) {
  const absl::StatusOr<Trace> trace = ReadTrace("/nonexistent/t.csv", std::nullopt, {});
  ASSERT_FALSE(trace.ok());
  EXPECT_EQ(trace.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(trace.status().message().find("/nonexistent/t.csv"), absl::string_view::npos);
}

TEST(TraceTest, ReadTraceGivesTheFilesPathInLineErrors) {
  const std::string path = ::testing::TempDir() + "/kvtier_trace_test_bad.jsonl";
  {
    std::ofstream out(path);
    out << MooncakeLine(0, 5, 1) << "{}\n";
  }
  ExpectInvalid(ReadTrace(path, std::nullopt, {}), {path + ":2: ", "is missing"});
  std::remove(path.c_str());
}

}  // namespace
}  // namespace kvtier
