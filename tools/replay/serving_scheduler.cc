// The serving scheduler (serving_scheduler.h).
#include "tools/replay/serving_scheduler.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvtier::replay {

absl::StatusOr<ServingScheduler> ServingScheduler::Create(const ServingLimits& limits,
                                                          std::vector<TraceRequest> requests) {
  std::string bad;
  auto check = [&](bool ok, absl::string_view what) {
    if (!ok) absl::StrAppend(&bad, bad.empty() ? "" : "; ", what);
  };
  check(limits.max_batch >= 1, absl::StrCat("max_batch is ", limits.max_batch, "; expected >= 1"));
  check(limits.max_sequences >= limits.max_batch,
        absl::StrCat("max_sequences is ", limits.max_sequences, "; expected >= max_batch (",
                     limits.max_batch, ")"));
  check(limits.max_sequence_tokens >= 1,
        absl::StrCat("max_sequence_tokens is ", limits.max_sequence_tokens, "; expected >= 1"));
  check(limits.store_pages >= 1,
        absl::StrCat("store_pages is ", limits.store_pages, "; expected >= 1"));
  check(limits.page_size >= 1, absl::StrCat("page_size is ", limits.page_size, "; expected >= 1"));
  check(limits.prefill_chunk >= std::max(limits.page_size, 1),
        absl::StrCat("prefill_chunk is ", limits.prefill_chunk, "; expected >= page_size (",
                     limits.page_size, ")"));
  for (size_t i = 1; i < requests.size() && bad.empty(); ++i) {
    check(requests[i].arrival_s >= requests[i - 1].arrival_s,
          absl::StrCat("request ", i, " arrives before request ", i - 1));
  }
  if (!bad.empty()) return absl::InvalidArgumentError(absl::StrCat("ServingLimits: ", bad));
  return ServingScheduler(limits, std::move(requests));
}

ServingScheduler::ServingScheduler(const ServingLimits& limits, std::vector<TraceRequest> requests)
    : limits_(limits),
      requests_(std::move(requests)),
      times_(requests_.size()),
      prefilled_(requests_.size(), 0),
      generated_(requests_.size(), 0) {
  for (size_t i = 0; i < requests_.size(); ++i) times_[i].arrival = requests_[i].arrival_s;
}

int64_t ServingScheduler::PagesOf(const TraceRequest& r) const {
  return (r.input_tokens + r.output_tokens + limits_.page_size - 1) / limits_.page_size;
}

bool ServingScheduler::done() const {
  return finished_ + rejected_ == static_cast<int64_t>(requests_.size());
}

void ServingScheduler::Arrive() {
  while (next_arrival_ < requests_.size() && requests_[next_arrival_].arrival_s <= now_) {
    const int i = static_cast<int>(next_arrival_++);
    const TraceRequest& r = requests_[i];
    if (r.input_tokens + r.output_tokens > limits_.max_sequence_tokens ||
        PagesOf(r) > limits_.store_pages) {
      times_[i].rejected = true;
      ++rejected_;
      continue;
    }
    waiting_.push_back(i);
  }
}

Iteration ServingScheduler::Next() {
  Iteration it;
  Arrive();
  // Nothing admitted and nothing waiting: the clock jumps to the next arrival.
  while (admitted_.empty() && waiting_.empty() && next_arrival_ < requests_.size()) {
    now_ = std::max(now_, requests_[next_arrival_].arrival_s);
    Arrive();
  }
  // Admission in arrival order; the first that does not fit stops it.
  size_t taken = 0;
  while (taken < waiting_.size() && static_cast<int>(admitted_.size()) < limits_.max_sequences &&
         pages_reserved_ + PagesOf(requests_[waiting_[taken]]) <= limits_.store_pages) {
    const int i = waiting_[taken++];
    pages_reserved_ += PagesOf(requests_[i]);
    times_[i].admitted = now_;
    admitted_.push_back(i);
    it.admitted.push_back(i);
  }
  waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(taken));

  // Prefill: the oldest unfinished prompts, up to prefill_chunk tokens.
  int64_t budget = limits_.prefill_chunk;
  for (int i : admitted_) {
    if (budget <= 0) break;
    const int64_t left = requests_[i].input_tokens - prefilled_[i];
    if (left <= 0) continue;
    int64_t tokens = std::min(left, budget);
    if (tokens < left) {  // not the prompt's last piece: end on a page boundary
      tokens = (prefilled_[i] + tokens) / limits_.page_size * limits_.page_size - prefilled_[i];
      if (tokens <= 0) break;
    }
    it.prefill.push_back({i, prefilled_[i], tokens, tokens == left});
    budget -= tokens;
  }
  // Decode: prompts done (before this iteration), output not, oldest first.
  for (int i : admitted_) {
    if (static_cast<int>(it.decode.size()) >= limits_.max_batch) break;
    if (prefilled_[i] == requests_[i].input_tokens && generated_[i] < requests_[i].output_tokens) {
      it.decode.push_back(i);
    }
  }
  return it;
}

void ServingScheduler::Complete(const Iteration& it, double seconds, std::vector<int>* finished) {
  now_ += std::max(seconds, 0.0);
  auto finish_if_done = [&](int i) {
    if (generated_[i] < requests_[i].output_tokens) return;
    times_[i].finished = now_;
    pages_reserved_ -= PagesOf(requests_[i]);
    ++finished_;
    admitted_.erase(std::find(admitted_.begin(), admitted_.end(), i));
    finished->push_back(i);
  };
  for (int i : it.decode) {
    ++generated_[i];
    finish_if_done(i);
  }
  for (const Iteration::Chunk& c : it.prefill) {
    prefilled_[c.request] += c.tokens;
    if (c.last) {  // the prompt's forward pass yields the first output token
      times_[c.request].first_token = now_;
      ++generated_[c.request];
      finish_if_done(c.request);
    }
  }
  if (!it.empty()) {
    batch_sizes_.push_back(static_cast<int>(it.decode.size()));
    iteration_ends_.push_back(now_);
  }
}

Percentiles PercentilesOf(std::vector<double> values) {
  Percentiles p;
  if (values.empty()) return p;
  std::sort(values.begin(), values.end());
  auto rank = [&](double q) {
    const size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::clamp<size_t>(k, 1, values.size()) - 1];
  };
  p.p50 = rank(0.50);
  p.p90 = rank(0.90);
  p.p99 = rank(0.99);
  return p;
}

ServingSummary Summarize(const ServingScheduler& s) {
  ServingSummary out;
  out.requests = static_cast<int64_t>(s.requests().size());
  out.rejected = s.rejected();
  std::vector<double> ttft, tpot, queueing;
  double first_arrival = -1, last_finish = 0;
  for (size_t i = 0; i < s.requests().size(); ++i) {
    const RequestTimes& t = s.times()[i];
    if (t.finished < 0) continue;
    const int64_t output = s.requests()[i].output_tokens;
    ++out.completed;
    out.output_tokens += output;
    if (first_arrival < 0 || t.arrival < first_arrival) first_arrival = t.arrival;
    last_finish = std::max(last_finish, t.finished);
    ttft.push_back((t.first_token - t.arrival) * 1e3);
    queueing.push_back((t.admitted - t.arrival) * 1e3);
    if (output > 1) tpot.push_back((t.finished - t.first_token) * 1e3 / (output - 1));
  }
  out.makespan_s = out.completed > 0 ? last_finish - first_arrival : 0;
  if (out.makespan_s > 0) {
    out.output_tokens_per_second = out.output_tokens / out.makespan_s;
    out.requests_per_second = out.completed / out.makespan_s;
  }
  out.ttft_ms = PercentilesOf(std::move(ttft));
  out.tpot_ms = PercentilesOf(std::move(tpot));
  out.queueing_ms = PercentilesOf(std::move(queueing));
  int64_t batch_sum = 0;
  for (int b : s.batch_sizes()) {
    batch_sum += b;
    out.max_batch = std::max(out.max_batch, b);
  }
  if (!s.batch_sizes().empty()) {
    out.mean_batch = static_cast<double>(batch_sum) / static_cast<double>(s.batch_sizes().size());
  }
  return out;
}

}  // namespace kvtier::replay
