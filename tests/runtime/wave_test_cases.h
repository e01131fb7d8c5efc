// What the wave-index KvCache tests share (host backend in wave_index_test.cc, CUDA backend in
// wave_index_gpu_test.cc): the parameter of a case, its test-name suffix, its options (on top
// of runtime_test::HostOptions) and the two checks every case runs, target F1 at a budget
// covering every cold page and a small budget's consistent selection. Header-only; no CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/dtype.h"
#include "runtime/core/options.h"
#include "tests/runtime/runtime_schedules.h"
#include "tests/runtime/runtime_test_util.h"

namespace kvtier::runtime_test {

struct WaveCase {
  int g;
  int head_dim;
  DType dtype;
  int page;
  int sink;
  int window;
  int max_prefill_chunk;       // Options::max_prefill_chunk_tokens: the largest segment
  int64_t prefill_call_chunk;  // largest Prefill call (0: one call per layer)
  int budget;                  // budget.max_pages (0: every page)
  int estimate;                // budget.estimate_pages; -1: budget.estimate_rest
  uint64_t seed;
};

inline std::string WaveCaseName(const ::testing::TestParamInfo<WaveCase>& info) {
  const WaveCase& c = info.param;
  return absl::StrCat("G", c.g, "_D", c.head_dim, "_", DTypeName(c.dtype), "_P", c.page, "_S",
                      c.sink, "_W", c.window, "_chunk", c.max_prefill_chunk, "_k", c.budget, "_e",
                      c.estimate < 0 ? std::string("rest") : absl::StrCat(c.estimate));
}

// HostOptions of the case's shape with sequences of up to `max_sequence_tokens` tokens and the
// wave index: budget.max_pages c.budget (0: every page of a longest sequence, and one cache
// slot a budget page; else 1.5), budget.estimate_pages c.estimate, segments of up to
// c.max_prefill_chunk tokens. The caller sets the backend and the memory sizes.
inline Options WaveOptions(const WaveCase& c, int64_t max_sequence_tokens) {
  Options o = HostOptions(c.g, c.head_dim, c.dtype, c.page, c.sink, c.window);
  o.max_sequence_tokens = max_sequence_tokens;
  o.index = IndexKind::kWave;
  o.budget.max_pages = c.budget > 0 ? c.budget : static_cast<int>(o.max_sequence_tokens / c.page);
  o.budget.estimate_pages = std::max(c.estimate, 0);
  o.budget.estimate_rest = c.estimate < 0;
  o.cache_slots_per_budget = c.budget > 0 ? 1.5 : 1.0;
  o.max_prefill_chunk_tokens = c.max_prefill_chunk;
  return o;
}

// The case's schedule: sequences of up to `max_tokens` tokens prefilled in calls of up to
// c.prefill_call_chunk tokens, `steps` decode steps, the case's seed.
inline Schedule WaveSchedule(const WaveCase& c, int64_t max_tokens, int steps) {
  Schedule schedule;
  schedule.max_tokens = max_tokens;
  schedule.prefill_call_chunk = c.prefill_call_chunk;
  schedule.steps = steps;
  schedule.seed = c.seed;
  return schedule;
}

// WaveSchedule for a small budget: a sequence leaves and one joins every 5 steps, and queries
// of standard deviation 2 give a peaked softmax, so the selection matters.
inline Schedule WaveSmallBudgetSchedule(const WaveCase& c, int64_t max_tokens, int steps) {
  Schedule schedule = WaveSchedule(c, max_tokens, steps);
  schedule.churn = 5;
  schedule.q_scale = 2.0f;
  return schedule;
}

// Target F1 on a cache of `options` (a budget covering every cold page): ExpectFullBudgetExact.
inline void ExpectWaveFullBudgetExact(const Options& options, const Schedule& schedule,
                                      const ToleranceOf& tolerance) {
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  ExpectFullBudgetExact(**created, schedule, tolerance);
}

// A small budget on a cache of `options`: ExpectSmallBudgetConsistent, and the segment layout
// is in use: some selected pages hold tokens out of position order.
inline void ExpectWaveSmallBudgetConsistent(const Options& options, const Schedule& schedule,
                                            const ToleranceOf& tolerance) {
  absl::StatusOr<std::unique_ptr<Driver>> created = Driver::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  int64_t reordered = 0;
  ExpectSmallBudgetConsistent(**created, schedule, tolerance, &reordered);
  EXPECT_GT(reordered, 0) << "every selected page held its positions in order";
}

}  // namespace kvtier::runtime_test
