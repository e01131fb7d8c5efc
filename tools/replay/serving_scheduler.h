// The scheduling half of trace replay's serving loop (issue 9): which requests of a trace are
// admitted, prefilled and decoded at each iteration, on a clock the caller advances by what
// each iteration took. It holds no KV; the driver runs each iteration's work on a KvCache
// (AddSequence at admission, Prefill of the chunks, one Decode per layer for the batch,
// RemoveSequence when a request finishes) and reports its time. Kept apart so that the
// policy is tested without a cache.
//
// Policy, as an engine's continuous-batching scheduler (vLLM's first-come-first-served):
// - Arrivals: a request joins the waiting queue once the clock reaches its arrival time. When
//   nothing is admitted and nothing waits, the clock jumps to the next arrival.
// - Admission, in arrival order (a request that does not fit blocks those behind it): a free
//   sequence slot, and room in the token store for the whole request (prompt + output, in
//   pages), reserved until it finishes: a request never runs out of memory half way, so
//   nothing is preempted. A request that could never fit, even alone, is rejected at arrival
//   and counted (it would block the queue for ever).
// - Prefill in chunks: each iteration prefills up to prefill_chunk prompt tokens, continuing
//   the oldest admitted prompts first; a piece ends on a page boundary except a prompt's last.
//   The iteration that prefills a prompt's last token produces its first output token.
// - Decode: every iteration decodes one token for up to max_batch requests whose prompt is
//   done, oldest first; a request leaves after its output_tokens-th token. Sequences join and
//   leave the batch between iterations.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "tools/workload/trace.h"

namespace kvtier::replay {

struct ServingLimits {
  int max_batch = 0;                // >= 1: requests decoded together
  int max_sequences = 0;            // >= max_batch: requests admitted at once
  int64_t max_sequence_tokens = 0;  // >= 1: prompt + output of one request
  int64_t store_pages = 0;          // >= 1: pages the token store holds over all requests
  int page_size = 0;                // >= 1: tokens a page
  int64_t prefill_chunk = 0;        // >= page_size: prompt tokens prefilled per iteration
};

// One request's life on the clock (seconds); -1 where it has not happened.
struct RequestTimes {
  double arrival = 0;
  double admitted = -1;
  double first_token = -1;  // the end of the iteration that finished its prompt
  double finished = -1;     // the end of the iteration that produced its last token
  bool rejected = false;    // could never fit (ServingLimits)
};

// What one iteration does. Indexes are into the trace's request list.
struct Iteration {
  struct Chunk {
    int request = 0;
    int64_t first_token = 0;  // prompt position of the piece's first token
    int64_t tokens = 0;
    bool last = false;  // the prompt's last piece
  };
  std::vector<int> admitted;  // to AddSequence before the prefill (arrival order)
  std::vector<Chunk> prefill;
  std::vector<int> decode;  // the decode batch (admission order), each one token
  bool empty() const { return prefill.empty() && decode.empty(); }
};

class ServingScheduler {
 public:
  // InvalidArgument naming the limit that is out of range.
  static absl::StatusOr<ServingScheduler> Create(const ServingLimits& limits,
                                                 std::vector<TraceRequest> requests);

  // True once every request has finished or been rejected.
  bool done() const;
  double now() const { return now_; }

  // The next iteration's work at the current clock (admitting arrived requests first, and
  // moving the clock to the next arrival when nothing else can happen). Call Complete with
  // it before the next call. Empty only when done().
  Iteration Next();
  // The iteration took `seconds` (>= 0): the clock moves on, chunks and tokens are credited,
  // and the requests that finished are appended to `finished` (to RemoveSequence).
  void Complete(const Iteration& iteration, double seconds, std::vector<int>* finished);

  const std::vector<TraceRequest>& requests() const { return requests_; }
  const std::vector<RequestTimes>& times() const { return times_; }
  // Decode batch size of every iteration so far, and when it ended.
  const std::vector<int>& batch_sizes() const { return batch_sizes_; }
  const std::vector<double>& iteration_ends() const { return iteration_ends_; }
  int64_t rejected() const { return rejected_; }
  int64_t completed() const { return finished_; }
  int64_t pages_reserved() const { return pages_reserved_; }

 private:
  ServingScheduler(const ServingLimits& limits, std::vector<TraceRequest> requests);
  int64_t PagesOf(const TraceRequest& r) const;
  void Arrive();

  ServingLimits limits_;
  std::vector<TraceRequest> requests_;
  std::vector<RequestTimes> times_;
  std::vector<int64_t> prefilled_;  // prompt tokens prefilled, per request
  std::vector<int64_t> generated_;  // output tokens produced, per request
  size_t next_arrival_ = 0;         // requests_[next_arrival_...] have not arrived
  std::vector<int> waiting_;        // arrived, not admitted (FIFO)
  std::vector<int> admitted_;       // admitted, not finished (admission order)
  double now_ = 0;
  int64_t pages_reserved_ = 0;
  int64_t rejected_ = 0;
  int64_t finished_ = 0;
  std::vector<int> batch_sizes_;
  std::vector<double> iteration_ends_;
};

// Percentiles by the nearest rank of the sorted values (0 for none).
struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0;
};
Percentiles PercentilesOf(std::vector<double> values);

// What a user of a serving stack reads off a run (times in seconds unless named _ms).
struct ServingSummary {
  int64_t requests = 0;       // in the trace given
  int64_t completed = 0;      // finished
  int64_t rejected = 0;       // could never fit
  int64_t output_tokens = 0;  // of the completed requests
  double makespan_s = 0;      // first arrival to last finish
  double output_tokens_per_second = 0;
  double requests_per_second = 0;  // completed over the makespan
  Percentiles ttft_ms;             // arrival to first token
  Percentiles tpot_ms;             // (finish - first token) / (output - 1), outputs > 1
  Percentiles queueing_ms;         // arrival to admission
  double mean_batch = 0;           // decode batch over the iterations
  int max_batch = 0;
};
ServingSummary Summarize(const ServingScheduler& scheduler);

}  // namespace kvtier::replay
