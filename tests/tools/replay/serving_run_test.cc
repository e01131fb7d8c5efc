// The serving loop end to end on the host backend, on a tiny model: a trace of requests of
// mixed lengths arrives, is admitted under slot and memory limits, prefilled in chunks and
// decoded in a batch that sequences join and leave, and every request finishes with its
// output; the host store is never over-full and the counters agree with the trace.
#include "tools/replay/serving_run.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "tools/replay/replay_config.h"
#include "tools/replay/serving_report.h"
#include "tools/workload/trace.h"

namespace kvtier::replay {
namespace {

// 2 layers, 4 query heads over 2 KV heads of D 64, a hot set of one sink and four window
// pages, budget 4 pages (with both index kinds).
ServingConfig TinyServing(const std::string& index, int64_t host_memory_bytes) {
  ReplayFlags f;
  f.model = "custom";
  f.layers = 2;
  f.query_heads = 4;
  f.kv_heads = 2;
  f.head_dim = 64;
  f.context = 512;
  f.batch = 3;
  f.page_size = 16;
  f.sink = 16;
  f.window = 64;
  f.budget = 4;
  f.index = index;
  if (index == "wave") f.estimate_pages = 4;
  f.backend = "host";
  f.seed = 3;
  absl::StatusOr<ReplayConfig> replay = MakeReplayConfig(f, DeviceFacts{});
  EXPECT_TRUE(replay.ok()) << replay.status();
  ServingConfig c;
  if (replay.ok()) c.replay = *replay;
  c.max_sequences = 4;
  c.prefill_chunk = 256;
  c.max_sequence_tokens = 1024;
  c.host_memory_bytes = host_memory_bytes;
  return c;
}

// n requests, prompts of 100 to 699 tokens, outputs of 1 to 24, arriving up to max_gap
// seconds apart (far less than an iteration takes here, so they overlap).
Trace RandomTrace(int n, uint64_t seed, double max_gap = 1e-4) {
  std::mt19937_64 rng(seed);
  Trace t;
  double arrival = 0;
  for (int i = 0; i < n; ++i) {
    TraceRequest r;
    r.line = i + 1;
    arrival += std::uniform_real_distribution<double>(0, max_gap)(rng);
    r.arrival_s = arrival;
    r.input_tokens = r.stated_input_tokens = 100 + static_cast<int64_t>(rng() % 600);
    r.output_tokens = 1 + static_cast<int64_t>(rng() % 24);
    t.requests.push_back(r);
  }
  t.data_lines = n;
  return t;
}

TEST(ServingRunTest, EveryRequestFinishesWithinTheLimits) {
  for (const char* index : {"page_bounds", "wave"}) {
    SCOPED_TRACE(index);
    // A store of 16 MiB: room for every request; the slots and the batch limit.
    const ServingConfig c = TinyServing(index, int64_t{16} << 20);
    const Trace trace = RandomTrace(14, 11);
    absl::StatusOr<ServingResult> r = RunServing(c, trace);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->summary.completed, 14);
    EXPECT_EQ(r->summary.rejected, 0);
    int64_t outputs = 0, prompts = 0;
    for (const TraceRequest& q : trace.requests) {
      outputs += q.output_tokens;
      prompts += q.input_tokens;
    }
    EXPECT_EQ(r->summary.output_tokens, outputs);
    // Every prompt token went in once a layer; every token after the first decoded once.
    EXPECT_EQ(r->stats.prefill_tokens, prompts * 2);
    EXPECT_EQ(r->stats.decode_items, (outputs - 14) * 2 * 2);  // layers x KV heads
    EXPECT_LE(r->peak_host_pages, r->host_pages_capacity);
    EXPECT_GT(r->summary.output_tokens_per_second, 0);
    EXPECT_GE(r->summary.tpot_ms.p99, r->summary.tpot_ms.p50);
    for (int b : r->batch_sizes) EXPECT_LE(b, 3);
    EXPECT_GT(r->summary.mean_batch, 1.0);  // sequences decoded together
    // Sampled accuracy: the kernels are exact given the selection, and a 4-page budget
    // misses some of the mass.
    ASSERT_FALSE(r->samples.empty());
    for (const AccuracySample& s : r->samples) {
      EXPECT_LT(s.restricted_error, index == std::string("wave") ? 1.0 : 1e-2);
      EXPECT_TRUE(std::isfinite(s.output_error));
      EXPECT_GT(s.mass_captured, 0.0);
      EXPECT_LE(s.mass_captured, 1.0 + 1e-9);
    }
  }
}

TEST(ServingRunTest, ABudgetCoveringEveryPageMatchesFullAttention) {
  ServingConfig c = TinyServing("page_bounds", int64_t{16} << 20);
  c.replay.budget_pages = 64;  // a request holds at most 45 pages
  const Trace trace = RandomTrace(6, 21);
  absl::StatusOr<ServingResult> r = RunServing(c, trace);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_FALSE(r->samples.empty());
  for (const AccuracySample& s : r->samples) {
    EXPECT_NEAR(s.mass_captured, 1.0, 1e-9);
    EXPECT_LT(s.output_error, 1e-2);
  }
}

TEST(ServingRunTest, MemoryPressureQueuesRequestsInsteadOfFailing) {
  // A store for about two requests at a time: the others wait, none fails.
  const ServingConfig c = TinyServing("page_bounds", int64_t{3} << 19);  // 1.5 MiB
  const Trace trace = RandomTrace(8, 5, 0.0);
  absl::StatusOr<ServingResult> r = RunServing(c, trace);
  ASSERT_TRUE(r.ok()) << r.status();
  // Memory, not the 4 sequence slots, is what limits admission here.
  int64_t largest = 0;
  for (const TraceRequest& q : trace.requests) {
    largest = std::max(largest, (q.input_tokens + q.output_tokens + 15) / 16);
  }
  EXPECT_LT(r->limits.store_pages, 4 * largest) << "store of " << r->limits.store_pages;
  EXPECT_EQ(r->summary.completed, 8);
  EXPECT_GT(r->summary.queueing_ms.p90, 0);
  EXPECT_LE(r->peak_host_pages, r->host_pages_capacity);
}

TEST(ServingRunTest, ARequestLongerThanTheCacheHoldsIsRejectedAndCounted) {
  ServingConfig c = TinyServing("page_bounds", int64_t{16} << 20);
  Trace trace = RandomTrace(3, 2);
  trace.requests[1].input_tokens = 2000;  // beyond max_sequence_tokens 1024
  absl::StatusOr<ServingResult> r = RunServing(c, trace);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->summary.completed, 2);
  EXPECT_EQ(r->summary.rejected, 1);
}

TEST(ServingRunTest, BadSizesAreRefusedBeforeAnythingRuns) {
  ServingConfig c = TinyServing("page_bounds", int64_t{16} << 20);
  c.max_sequences = 2;  // below the batch of 3
  absl::StatusOr<ServingResult> r = RunServing(c, RandomTrace(2, 1));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
}

TEST(ServingRunTest, ReportsHoldTheDocumentedKeysAndOneCsvRowARequest) {
  const ServingConfig c = TinyServing("page_bounds", int64_t{16} << 20);
  Trace trace = RandomTrace(5, 4);
  trace.bad_lines = 2;
  trace.skipped = 1;
  absl::StatusOr<ServingResult> r = RunServing(c, trace);
  ASSERT_TRUE(r.ok()) << r.status();
  std::ostringstream json, table, csv;
  PrintServingJson(*r, trace, json);
  for (const char* key :
       {"\"output_tokens_per_second\"", "\"ttft_ms\": {", "\"tpot_ms\": {", "\"p50\"", "\"p90\"",
        "\"p99\"", "\"requests_completed\": 5", "\"requests_skipped\": 1", "\"bad_lines\": 2",
        "\"batch_over_time\": [[", "\"mean_output_error\"", "\"rates_source\": \"built-in"}) {
    EXPECT_NE(json.str().find(key), std::string::npos) << key << " not in " << json.str();
  }
  PrintServingTable(*r, trace, table);
  for (const char* line :
       {"output tokens/s", "TTFT p50/p90/p99", "TPOT p50/p90/p99", "accuracy", "rates from"}) {
    EXPECT_NE(table.str().find(line), std::string::npos) << line << " not in " << table.str();
  }
  WriteServingCsv(*r, trace, csv);
  const std::string text = csv.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 6);  // header + 5 requests
  EXPECT_EQ(text.rfind("request,line,arrival_s,", 0), 0u);
}

TEST(ServingRunTest, ServingFlagsResolveTheirDefaultsAndNameBadOnes) {
  const ServingConfig base = TinyServing("page_bounds", 0);
  const Trace trace = RandomTrace(5, 9);
  int64_t longest = 0;
  for (const TraceRequest& r : trace.requests) {
    longest = std::max(longest, r.input_tokens + r.output_tokens);
  }
  absl::StatusOr<ServingConfig> c = MakeServingConfig(base.replay, ServingFlags{}, trace);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_sequences, 6);  // twice the batch of 3
  EXPECT_EQ(c->max_sequence_tokens, longest);
  EXPECT_GT(c->host_memory_bytes, 0);
  EXPECT_TRUE(MakeServingOptions(*c).ok());

  ServingFlags bad;
  bad.max_sequences = 2;
  bad.prefill_chunk = 8;
  bad.host_memory_gib = -1;
  absl::StatusOr<ServingConfig> refused = MakeServingConfig(base.replay, bad, trace);
  ASSERT_FALSE(refused.ok());
  for (const char* flag : {"--max_sequences=2", "--prefill_chunk=8", "--host_memory_gib=-1"}) {
    EXPECT_NE(refused.status().message().find(flag), absl::string_view::npos) << refused.status();
  }
}

}  // namespace
}  // namespace kvtier::replay
