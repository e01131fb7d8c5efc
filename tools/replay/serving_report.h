// How kvtier-replay shows a serving run (--trace): a table for people, JSON for scripts.
#pragma once

#include <ostream>

#include "tools/replay/serving_run.h"
#include "tools/workload/trace.h"

namespace kvtier::replay {

// What ran (trace, counts of bad, clipped and skipped lines), then throughput, latency
// percentiles, batch, memory, cache traffic (PCIe GB/s over kvtier's time) and the decode
// bound.
void PrintServingTable(const ServingResult& result, const Trace& trace, std::ostream& out);

// One JSON object with at least output_tokens_per_second, requests_per_second, ttft_ms,
// tpot_ms and queueing_ms (each {p50, p90, p99}), requests_completed, requests_rejected
// (could never fit), requests_skipped (prompts over --max_context with
// --long_prompts=skip), requests_clipped, bad_lines, plus the run's sizes and counters and
// batch_over_time: [[seconds, decode batch], ...] at up to 200 iterations spread evenly.
// Times in milliseconds unless the key says "_seconds"; NaN prints as null.
void PrintServingJson(const ServingResult& result, const Trace& trace, std::ostream& out);

// One CSV row a request (after a header): request, line, arrival_s, admitted_s,
// first_token_s, finished_s, input_tokens, stated_input_tokens, output_tokens, rejected,
// ttft_ms, tpot_ms; times on the scheduler's clock, empty where they did not happen.
void WriteServingCsv(const ServingResult& result, const Trace& trace, std::ostream& out);

}  // namespace kvtier::replay
