#include "tools/replay/serving_report.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/common/json_text.h"
#include "tools/replay/machine_rates.h"
#include "tools/replay/replay_report.h"

namespace kvtier::replay {
namespace {

std::string Ms(const Percentiles& p) {
  return absl::StrFormat("%.1f / %.1f / %.1f ms", p.p50, p.p90, p.p99);
}

void JsonPercentiles(tools::JsonObject& parent, absl::string_view key, const Percentiles& p,
                     std::ostream& out) {
  parent.Raw(key, "");
  tools::JsonObject o(out, 2);
  o.Num("p50", p.p50).Num("p90", p.p90).Num("p99", p.p99);
  o.Close();
}

// Means (and the largest output error) over the samples; NaN stays NaN.
struct SampledAccuracy {
  int count = 0;
  double mass = 0, oracle_mass = 0, output_error = 0, max_output_error = 0;
};
SampledAccuracy Accuracy(const ServingResult& r) {
  SampledAccuracy a;
  a.count = static_cast<int>(r.samples.size());
  for (const AccuracySample& s : r.samples) {
    a.mass += s.mass_captured / a.count;
    a.oracle_mass += s.oracle_mass_captured / a.count;
    a.output_error += s.output_error / a.count;
    a.max_output_error = std::isnan(s.output_error) || std::isnan(a.max_output_error)
                             ? std::nan("")
                             : std::max(a.max_output_error, s.output_error);
  }
  return a;
}

double PcieGbps(const ServingResult& r) {
  return r.kvtier_seconds > 0 ? static_cast<double>(r.stats.pcie_bytes()) / r.kvtier_seconds / 1e9
                              : 0.0;
}

}  // namespace

void PrintServingTable(const ServingResult& r, const Trace& trace, std::ostream& out) {
  const ServingSummary& s = r.summary;
  auto row = [&](absl::string_view name, const std::string& value) {
    out << absl::StrFormat("  %-24s %s\n", name, value);
  };
  out << "kvtier-replay: serving a " << TraceFormatName(trace.format) << " trace on " << r.device
      << "\n";
  row("trace", absl::StrCat(trace.requests.size(), " requests of ", trace.data_lines, " lines; ",
                            trace.bad_lines, " bad lines skipped, ", trace.clipped,
                            " prompts clipped, ", trace.skipped, " skipped"));
  row("limits",
      absl::StrCat("batch ", r.limits.max_batch, ", ", r.limits.max_sequences, " sequences, ",
                   r.limits.max_sequence_tokens, " tokens a request, store of ",
                   r.limits.store_pages, " pages of ", r.limits.page_size,
                   " tokens, prefill chunk ", r.limits.prefill_chunk));
  row("requests", absl::StrCat(s.completed, " completed, ", s.rejected,
                               " rejected (longer than the cache holds)"));
  row("output tokens/s", absl::StrFormat("%.1f (%d tokens in %.3f s)", s.output_tokens_per_second,
                                         s.output_tokens, s.makespan_s));
  row("requests/s", absl::StrFormat("%.2f", s.requests_per_second));
  row("TTFT p50/p90/p99", Ms(s.ttft_ms));
  row("TPOT p50/p90/p99", Ms(s.tpot_ms));
  row("queueing p50/p90/p99", Ms(s.queueing_ms));
  row("decode batch", absl::StrFormat("%.2f mean, %d max over %d iterations", s.mean_batch,
                                      s.max_batch, r.iterations));
  row("host store",
      absl::StrCat(r.peak_host_pages, " of ", r.host_pages_capacity, " frames at the peak"));
  row("GPU reserved", FormatBytes(static_cast<double>(r.gpu_bytes_reserved)));
  row("page cache",
      absl::StrFormat("%.1f %% hits, %s over PCIe (%.2f GB/s over kvtier's time)",
                      100 * r.stats.hit_rate(),
                      FormatBytes(static_cast<double>(r.stats.pcie_bytes())), PcieGbps(r)));
  row("time", absl::StrFormat("kvtier %.3f s (decode bound %.3f s), wall %.1f s", r.kvtier_seconds,
                              r.decode_bound_ms / 1e3, r.wall_seconds));
  row("rates from", r.rates_source);
  const SampledAccuracy a = Accuracy(r);
  if (a.count > 0) {
    row("accuracy",
        absl::StrFormat("%d sampled requests: mass captured %.4f (oracle %.4f), "
                        "output error %.3f mean, %.3f max",
                        a.count, a.mass, a.oracle_mass, a.output_error, a.max_output_error));
  }
  for (const std::string& note : r.notes) out << "  note: " << note << "\n";
}

void PrintServingJson(const ServingResult& r, const Trace& trace, std::ostream& out) {
  const ServingSummary& s = r.summary;
  tools::JsonObject o(out, 0);
  o.Str("mode", "serving")
      .Str("trace_format", TraceFormatName(trace.format))
      .Str("device", r.device);
  o.Num("output_tokens_per_second", s.output_tokens_per_second);
  o.Num("requests_per_second", s.requests_per_second);
  JsonPercentiles(o, "ttft_ms", s.ttft_ms, out);
  JsonPercentiles(o, "tpot_ms", s.tpot_ms, out);
  JsonPercentiles(o, "queueing_ms", s.queueing_ms, out);
  o.Int("requests", s.requests).Int("requests_completed", s.completed);
  o.Int("requests_rejected", s.rejected).Int("requests_skipped", trace.skipped);
  o.Int("requests_clipped", trace.clipped).Int("bad_lines", trace.bad_lines);
  o.Int("output_tokens", s.output_tokens).Num("makespan_seconds", s.makespan_s);
  o.Num("mean_batch", s.mean_batch).Int("max_batch", s.max_batch).Int("iterations", r.iterations);
  o.Int("max_sequences", r.limits.max_sequences)
      .Int("max_sequence_tokens", r.limits.max_sequence_tokens);
  o.Int("store_pages", r.limits.store_pages).Int("prefill_chunk", r.limits.prefill_chunk);
  o.Int("host_frames_peak", r.peak_host_pages).Int("host_frames_capacity", r.host_pages_capacity);
  o.Int("gpu_bytes_reserved", r.gpu_bytes_reserved);
  o.Num("hit_rate", r.stats.hit_rate()).Int("pcie_bytes", r.stats.pcie_bytes());
  o.Num("pcie_gbps", PcieGbps(r));
  std::string batches = "[";
  const size_t n = r.batch_sizes.size();
  const size_t points = std::min<size_t>(n, 200);
  for (size_t j = 0; j < points; ++j) {
    const size_t i = points > 1 ? j * (n - 1) / (points - 1) : 0;
    absl::StrAppend(&batches, j ? ", " : "", "[", tools::JsonNumber(r.iteration_ends[i]), ", ",
                    r.batch_sizes[i], "]");
  }
  o.Raw("batch_over_time", batches + "]");
  o.Num("kvtier_seconds", r.kvtier_seconds).Num("decode_bound_seconds", r.decode_bound_ms / 1e3);
  o.Str("rates_source", r.rates_source);
  o.Num("wall_seconds", r.wall_seconds);
  const SampledAccuracy a = Accuracy(r);
  o.Int("accuracy_samples", a.count).Num("mean_mass_captured", a.mass);
  o.Num("mean_oracle_mass", a.oracle_mass).Num("mean_output_error", a.output_error);
  o.Num("max_output_error", a.max_output_error);
  std::string notes = "[";
  for (size_t i = 0; i < r.notes.size(); ++i) {
    absl::StrAppend(&notes, i ? ", " : "", tools::JsonString(r.notes[i]));
  }
  o.Raw("notes", notes + "]");
  o.Close();
  out << "\n";
}

void WriteServingCsv(const ServingResult& r, const Trace& trace, std::ostream& out) {
  out << "request,line,arrival_s,admitted_s,first_token_s,finished_s,input_tokens,"
         "stated_input_tokens,output_tokens,rejected,ttft_ms,tpot_ms\n";
  auto time = [](double t) { return t < 0 ? std::string() : absl::StrFormat("%.6f", t); };
  for (size_t i = 0; i < trace.requests.size() && i < r.times.size(); ++i) {
    const TraceRequest& q = trace.requests[i];
    const RequestTimes& t = r.times[i];
    std::string ttft, tpot;
    if (t.first_token >= 0) ttft = absl::StrFormat("%.3f", (t.first_token - t.arrival) * 1e3);
    if (t.finished >= 0 && q.output_tokens > 1) {
      tpot = absl::StrFormat("%.3f", (t.finished - t.first_token) * 1e3 / (q.output_tokens - 1));
    }
    out << absl::StrCat(i, ",", q.line, ",", time(t.arrival), ",", time(t.admitted), ",",
                        time(t.first_token), ",", time(t.finished), ",", q.input_tokens, ",",
                        q.stated_input_tokens, ",", q.output_tokens, ",", t.rejected ? 1 : 0, ",",
                        ttft, ",", tpot)
        << "\n";
  }
}

}  // namespace kvtier::replay
