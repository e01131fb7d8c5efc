// The serving scheduler's policy (tools/replay/serving_scheduler.h): arrivals and the clock,
// FIFO admission under sequence and memory limits, chunked prefill on page boundaries,
// continuous batching (join and leave between iterations), first-token and finish times,
// requests that can never fit, and bad limits. A driver loop stands in for the KvCache: each
// iteration takes a fixed time, and every invariant is checked at every iteration.
#include "tools/replay/serving_scheduler.h"

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace kvtier::replay {
namespace {

TraceRequest Request(double arrival, int64_t input, int64_t output) {
  TraceRequest r;
  r.arrival_s = arrival;
  r.input_tokens = r.stated_input_tokens = input;
  r.output_tokens = output;
  return r;
}

ServingLimits Limits() {
  ServingLimits l;
  l.max_batch = 2;
  l.max_sequences = 3;
  l.max_sequence_tokens = 1000;
  l.store_pages = 100;
  l.page_size = 16;
  l.prefill_chunk = 64;
  return l;
}

// Runs `s` to the end, `seconds` an iteration, checking what must hold at every iteration;
// returns the iterations.
std::vector<Iteration> RunToEnd(ServingScheduler& s, const ServingLimits& limits,
                                double seconds = 0.01) {
  std::vector<Iteration> out;
  std::set<int> stored;
  std::vector<int64_t> prefilled(s.requests().size(), 0);
  while (!s.done()) {
    Iteration it = s.Next();
    // Empty only when Next itself found the last requests rejected.
    EXPECT_TRUE(!it.empty() || s.done()) << "an empty iteration before the end";
    if (it.empty() || out.size() > 100000) break;
    for (int i : it.admitted) EXPECT_TRUE(stored.insert(i).second) << "admitted twice: " << i;
    EXPECT_LE(static_cast<int>(stored.size()), limits.max_sequences);
    EXPECT_LE(s.pages_reserved(), limits.store_pages);
    EXPECT_LE(static_cast<int>(it.decode.size()), limits.max_batch);
    int64_t chunk_tokens = 0;
    for (const Iteration::Chunk& c : it.prefill) {
      EXPECT_TRUE(stored.count(c.request)) << "prefill of a request not admitted";
      EXPECT_EQ(c.first_token, prefilled[c.request]);
      prefilled[c.request] += c.tokens;
      EXPECT_EQ(c.last, prefilled[c.request] == s.requests()[c.request].input_tokens);
      if (!c.last) {
        EXPECT_EQ(prefilled[c.request] % limits.page_size, 0);
      }
      chunk_tokens += c.tokens;
    }
    EXPECT_LE(chunk_tokens, limits.prefill_chunk);
    for (int i : it.decode) {
      EXPECT_TRUE(stored.count(i));
      EXPECT_EQ(prefilled[i], s.requests()[i].input_tokens) << "decode before the prompt is in";
      EXPECT_LE(s.requests()[i].arrival_s, s.now());
    }
    std::vector<int> finished;
    s.Complete(it, seconds, &finished);
    for (int i : finished) EXPECT_EQ(stored.erase(i), 1u);
    out.push_back(std::move(it));
  }
  EXPECT_TRUE(stored.empty());
  return out;
}

TEST(ServingSchedulerTest, OneRequestPrefillsInPageChunksThenDecodes) {
  ServingLimits limits = Limits();
  auto s = ServingScheduler::Create(limits, {Request(5.0, 150, 4)});
  ASSERT_TRUE(s.ok()) << s.status();
  const std::vector<Iteration> its = RunToEnd(*s, limits, 0.5);
  // 150 tokens in chunks of 64: 64, 64, 22; the third yields token 1; then 3 decode steps.
  ASSERT_EQ(its.size(), 6u);
  EXPECT_EQ(its[0].prefill[0].tokens, 64);
  EXPECT_EQ(its[2].prefill[0].tokens, 22);
  EXPECT_TRUE(its[2].prefill[0].last);
  EXPECT_TRUE(its[2].decode.empty());
  for (int k = 3; k < 6; ++k) EXPECT_EQ(its[k].decode, std::vector<int>{0});
  const RequestTimes& t = s->times()[0];
  EXPECT_DOUBLE_EQ(t.admitted, 5.0);  // the clock jumped to the arrival
  EXPECT_DOUBLE_EQ(t.first_token, 6.5);
  EXPECT_DOUBLE_EQ(t.finished, 8.0);
}

TEST(ServingSchedulerTest, AOneTokenOutputFinishesWithItsPrompt) {
  ServingLimits limits = Limits();
  auto s = ServingScheduler::Create(limits, {Request(0, 10, 1)});
  ASSERT_TRUE(s.ok());
  const std::vector<Iteration> its = RunToEnd(*s, limits);
  ASSERT_EQ(its.size(), 1u);
  EXPECT_DOUBLE_EQ(s->times()[0].finished, s->times()[0].first_token);
}

TEST(ServingSchedulerTest, SequencesJoinAndLeaveTheBatchBetweenIterations) {
  ServingLimits limits = Limits();
  limits.prefill_chunk = 1000;
  // Three short prompts; the batch holds two, so the third decodes once one leaves.
  auto s =
      ServingScheduler::Create(limits, {Request(0, 16, 3), Request(0, 16, 5), Request(0, 16, 4)});
  ASSERT_TRUE(s.ok());
  const std::vector<Iteration> its = RunToEnd(*s, limits);
  EXPECT_EQ(its[0].admitted, (std::vector<int>{0, 1, 2}));  // max_sequences 3
  EXPECT_EQ(its[1].decode, (std::vector<int>{0, 1}));
  EXPECT_EQ(its[2].decode, (std::vector<int>{0, 1}));  // 0 has its 3 tokens after this
  EXPECT_EQ(its[3].decode, (std::vector<int>{1, 2}));  // 2 joins
  for (const RequestTimes& t : s->times()) EXPECT_GT(t.finished, t.first_token);
}

TEST(ServingSchedulerTest, AdmissionWaitsForMemoryInArrivalOrder) {
  ServingLimits limits = Limits();
  limits.store_pages = 10;  // 160 tokens
  limits.prefill_chunk = 1000;
  // 0 takes 8 pages; 1 (4 pages) must wait for it, and 2 (1 page) waits behind 1 (FIFO).
  auto s = ServingScheduler::Create(
      limits, {Request(0, 100, 28), Request(0.001, 60, 4), Request(0.002, 10, 6)});
  ASSERT_TRUE(s.ok());
  RunToEnd(*s, limits);
  const auto& t = s->times();
  EXPECT_GE(t[1].admitted, t[0].finished);
  EXPECT_GE(t[2].admitted, t[1].admitted);
  EXPECT_EQ(s->rejected(), 0);
}

TEST(ServingSchedulerTest, ARequestThatCanNeverFitIsRejectedAndDoesNotBlock) {
  ServingLimits limits = Limits();
  limits.max_sequence_tokens = 200;
  auto s = ServingScheduler::Create(limits,
                                    {Request(0, 300, 5), Request(0, 20, 2), Request(1, 150, 60)});
  ASSERT_TRUE(s.ok());
  RunToEnd(*s, limits);
  EXPECT_EQ(s->rejected(), 2);
  EXPECT_TRUE(s->times()[0].rejected);
  EXPECT_TRUE(s->times()[2].rejected);
  EXPECT_GT(s->times()[1].finished, 0);
}

TEST(ServingSchedulerTest, ARandomTraceFinishesEveryRequestUnderEveryLimit) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    ServingLimits limits;
    limits.page_size = 16;
    limits.max_batch = 1 + static_cast<int>(rng() % 8);
    limits.max_sequences = limits.max_batch + static_cast<int>(rng() % 4);
    limits.max_sequence_tokens = 4096;
    limits.store_pages = 256 + static_cast<int64_t>(rng() % 512);
    limits.prefill_chunk = 16 * (1 + static_cast<int64_t>(rng() % 64));
    std::vector<TraceRequest> requests;
    double t = 0;
    for (int i = 0; i < 60; ++i) {
      t += std::uniform_real_distribution<double>(0, 0.05)(rng);
      requests.push_back(Request(t, 1 + static_cast<int64_t>(rng() % 3000),
                                 1 + static_cast<int64_t>(rng() % 300)));
    }
    auto s = ServingScheduler::Create(limits, requests);
    ASSERT_TRUE(s.ok()) << s.status();
    RunToEnd(*s, limits, 0.003);
    if (HasFailure()) return;
    for (size_t i = 0; i < requests.size(); ++i) {
      const RequestTimes& rt = s->times()[i];
      if (rt.rejected) continue;
      EXPECT_GE(rt.admitted, rt.arrival);
      EXPECT_GT(rt.first_token, rt.admitted);
      EXPECT_GE(rt.finished, rt.first_token);
    }
    EXPECT_EQ(s->batch_sizes().size(), s->iteration_ends().size());
  }
}

TEST(ServingSchedulerTest, BadLimitsAreNamed) {
  ServingLimits limits = Limits();
  limits.max_batch = 0;
  limits.prefill_chunk = 8;
  auto s = ServingScheduler::Create(limits, {});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("max_batch is 0"), absl::string_view::npos);
  EXPECT_NE(s.status().message().find("prefill_chunk is 8"), absl::string_view::npos);
  auto unordered = ServingScheduler::Create(Limits(), {Request(2, 5, 5), Request(1, 5, 5)});
  ASSERT_FALSE(unordered.ok());
  EXPECT_NE(unordered.status().message().find("arrives before"), absl::string_view::npos);
}

TEST(ServingSchedulerTest, TheSummaryGivesThroughputAndLatencyPercentiles) {
  ServingLimits limits = Limits();
  auto s = ServingScheduler::Create(limits, {Request(5.0, 150, 4), Request(5.0, 10, 1)});
  ASSERT_TRUE(s.ok());
  RunToEnd(*s, limits, 0.5);
  const ServingSummary sum = Summarize(*s);
  EXPECT_EQ(sum.completed, 2);
  EXPECT_EQ(sum.output_tokens, 5);
  // Prefill serves the oldest prompt first: 64 + 64 tokens of request 0, then its last 22
  // beside request 1's 10; both first tokens at 6.5; request 0 decodes 3 more to 8.0.
  EXPECT_DOUBLE_EQ(sum.makespan_s, 3.0);
  EXPECT_DOUBLE_EQ(sum.output_tokens_per_second, 5 / 3.0);
  EXPECT_DOUBLE_EQ(sum.ttft_ms.p50, 1500.0);
  EXPECT_DOUBLE_EQ(sum.ttft_ms.p99, 1500.0);
  EXPECT_DOUBLE_EQ(sum.tpot_ms.p50, 500.0);  // only request 0 has more than one token
  EXPECT_DOUBLE_EQ(sum.queueing_ms.p99, 0.0);
  EXPECT_EQ(sum.max_batch, 1);
}

TEST(ServingSchedulerTest, PercentilesTakeTheNearestRank) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  const Percentiles p = PercentilesOf(v);
  EXPECT_EQ(p.p50, 50);
  EXPECT_EQ(p.p90, 90);
  EXPECT_EQ(p.p99, 99);
  EXPECT_EQ(PercentilesOf({}).p99, 0);
  EXPECT_EQ(PercentilesOf({7}).p50, 7);
}

TEST(ServingSchedulerTest, AnEmptyTraceIsDoneAtOnce) {
  auto s = ServingScheduler::Create(Limits(), {});
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->done());
  EXPECT_TRUE(s->Next().empty());
}

}  // namespace
}  // namespace kvtier::replay
