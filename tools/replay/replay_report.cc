#include "tools/replay/replay_report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/common/json_text.h"
#include "tools/common/tool_flags.h"
#include "tools/replay/machine_rates.h"

namespace kvtier::replay {
namespace {

using tools::BackendName;
using tools::JsonNumber;
using tools::JsonObject;
using tools::JsonString;

// Three significant digits or so: 3015, 54.8, 2.80, 0.512, 0.000123.
std::string Sig(double value) {
  const double magnitude = std::fabs(value);
  if (!std::isfinite(value)) return "nan";
  if (magnitude >= 100) return absl::StrFormat("%.0f", value);
  if (magnitude >= 10) return absl::StrFormat("%.1f", value);
  if (magnitude >= 1) return absl::StrFormat("%.2f", value);
  if (magnitude >= 0.01 || magnitude == 0) return absl::StrFormat("%.3f", value);
  return absl::StrFormat("%.2e", value);
}

// A share near 1 with the digits that tell 0.9990 from 0.9999.
std::string Share(double share) {
  return std::isfinite(share) ? absl::StrFormat("%.4f", share) : "nan";
}

std::string Percent(double share) { return absl::StrFormat("%.1f %%", 100 * share); }

std::string ShapeText(const ModelShape& s) {
  return absl::StrCat(s.num_layers, " layers, ", s.num_query_heads, " query heads, ",
                      s.num_kv_heads, " KV heads, D ", s.head_dim, ", ", DTypeName(s.dtype));
}

// max that keeps a NaN.
double MaxNan(double a, double b) { return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b); }

}  // namespace

std::string FormatBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = bytes;
  int unit = 0;
  while (std::fabs(value) >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  if (value == std::floor(value)) return absl::StrFormat("%.0f %s", value, kUnits[unit]);
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

ReplaySummary Summarize(const ReplayResult& r) {
  ReplaySummary s;
  s.steps = static_cast<int>(r.step_ms.size());
  if (s.steps > 0) {
    std::vector<double> sorted = r.step_ms;
    std::sort(sorted.begin(), sorted.end());
    for (double ms : sorted) s.decode_seconds += ms / 1e3;
    s.mean_step_ms = s.decode_seconds * 1e3 / s.steps;
    s.median_step_ms = s.steps % 2 == 1 ? sorted[s.steps / 2]
                                        : (sorted[s.steps / 2 - 1] + sorted[s.steps / 2]) / 2;
    s.min_step_ms = sorted.front();
    s.max_step_ms = sorted.back();
    if (s.decode_seconds > 0) {
      s.tokens_per_second = static_cast<double>(r.config.batch) * s.steps / s.decode_seconds;
    }
    const double n = s.steps;
    const LayerStats& d = r.decode;
    s.bound_step_ms = r.decode_bound_ms / n;
    s.pages_selected_per_step = d.pages_selected / n;
    s.page_hits_per_step = d.page_hits / n;
    s.page_misses_per_step = d.page_misses / n;
    s.pcie_bytes_per_step = d.pcie_bytes() / n;
    s.bytes_loaded_per_step = d.bytes_loaded / n;
    s.bytes_written_back_per_step = d.bytes_written_back / n;
    s.hbm_bytes_per_step = d.hbm_bytes() / n;
    s.plan_ms = d.plan_ms / n;
    s.select_ms = d.select_ms / n;
    s.resolve_ms = d.resolve_ms / n;
    s.load_ms = d.load_ms / n;
    s.attend_ms = d.attend_ms / n;
    s.phase_step_ms = d.step_ms / n;
  }
  s.hit_rate = r.decode.hit_rate();

  s.accuracy_samples = static_cast<int>(r.samples.size());
  if (!r.samples.empty()) {
    s.min_mass_captured = 1;
    for (const AccuracySample& a : r.samples) {
      s.mean_mass_captured += a.mass_captured / s.accuracy_samples;
      s.mean_oracle_mass_captured += a.oracle_mass_captured / s.accuracy_samples;
      s.min_mass_captured = std::min(s.min_mass_captured, a.min_mass_captured);
      s.mean_output_error += a.output_error / s.accuracy_samples;
      s.mean_estimated_tokens += static_cast<double>(a.estimated_tokens) / s.accuracy_samples;
      s.max_output_error = MaxNan(s.max_output_error, a.output_error);
      s.max_restricted_error = MaxNan(s.max_restricted_error, a.restricted_error);
    }
  }
  return s;
}

void PrintTable(const ReplayResult& r, std::ostream& out, bool per_sample) {
  const ReplayConfig& c = r.config;
  const Options& o = r.options;
  const ReplaySummary s = Summarize(r);
  const auto row = [&out](absl::string_view name, const std::string& value) {
    out << absl::StrFormat("  %-24s %s\n", name, value);
  };

  out << "kvtier-replay: " << c.model << " (" << ShapeText(c.shape) << ")\n";
  row("backend",
      absl::StrCat(BackendName(c.backend), c.backend_auto ? " (auto)" : "", ", ", r.device));
  row("workload",
      absl::StrCat("batch ", c.batch, " x ", c.context_tokens, " prompt tokens, ", c.warmup_steps,
                   " warm-up + ", c.steps, " timed decode steps, seed ", c.seed));
  row("selection",
      absl::StrCat(IndexKindName(c.index), " index, budget ", c.budget_pages, " pages of ",
                   c.page_size, " tokens",
                   c.mass_target > 0 ? absl::StrCat(" (mass target ", c.mass_target, ")") : "",
                   c.estimate_rest        ? ", the rest estimated"
                   : c.estimate_pages > 0 ? absl::StrCat(", ", c.estimate_pages, " estimated")
                                          : "",
                   "; hot set ", c.sink_tokens, " sink + ", c.window_tokens, " window tokens"));
  row("page cache",
      absl::StrCat(PolicyChoiceName(c.policy), " (", CachePolicyName(o.cache_policy),
                   c.policy == PolicyChoice::kScore ? absl::StrCat(", decay ", c.score_decay) : "",
                   "), ", c.cache_slots_per_budget, " x budget slots"));
  row("memory", absl::StrCat("host store ", FormatBytes(o.host_memory_bytes), " (",
                             r.host_pages_used, " of ", r.host_pages_capacity,
                             " frames used), GPU reserved ", FormatBytes(r.gpu_bytes_reserved)));
  row("setup",
      absl::StrCat("create ", Sig(r.create_seconds), " s, prefill ", Sig(r.prefill_seconds), " s (",
                   r.prefill_tokens, " layer-tokens, generation included)"));

  out << "\ndecode (attention of all " << c.shape.num_layers << " layers, " << s.steps
      << " timed steps)\n";
  row("throughput", absl::StrCat(Sig(s.tokens_per_second), " tokens/s"));
  row("step time", absl::StrCat(Sig(s.mean_step_ms), " ms mean, ", Sig(s.median_step_ms),
                                " median (", Sig(s.min_step_ms), " to ", Sig(s.max_step_ms), ")"));
  row("bound",
      absl::StrCat(Sig(s.bound_step_ms), " ms/step at HBM ", Sig(o.hbm_bytes_per_second / 1e9),
                   " GB/s, PCIe ", Sig(o.pcie_bytes_per_second / 1e9), " GB/s",
                   s.bound_step_ms > 0
                       ? absl::StrCat(" (measured ", Sig(s.mean_step_ms / s.bound_step_ms), "x)")
                       : ""));
  row("rates from", tools::DescribeRateSources(c.hbm_rate_source, c.pcie_rate_source));
  row("hit rate",
      absl::StrCat(Percent(s.hit_rate), " of ", Sig(s.pages_selected_per_step),
                   " pages selected/step (", Sig(s.page_misses_per_step), " misses/step)"));
  row("PCIe / step", absl::StrCat(FormatBytes(s.pcie_bytes_per_step), " (loaded ",
                                  FormatBytes(s.bytes_loaded_per_step), ", written back ",
                                  FormatBytes(s.bytes_written_back_per_step), ")"));
  row("HBM read / step", FormatBytes(s.hbm_bytes_per_step));
  if (c.phase_timings) {
    row("phases ms/step",
        absl::StrCat("plan ", Sig(s.plan_ms), ", select ", Sig(s.select_ms), ", resolve ",
                     Sig(s.resolve_ms), ", load ", Sig(s.load_ms), ", attend ", Sig(s.attend_ms),
                     "; Decode calls ", Sig(s.phase_step_ms)));
  }

  out << "\naccuracy against exact attention";
  if (s.accuracy_samples == 0) {
    out << ": not sampled (--accuracy_samples / --accuracy_steps)\n";
  } else {
    out << " (" << s.accuracy_samples << " samples: " << c.accuracy_samples
        << " (sequence, layer, KV head) x " << s.accuracy_samples / std::max(1, c.accuracy_samples)
        << " steps)\n";
    row("attention mass captured",
        absl::StrCat(Share(s.mean_mass_captured), " mean, ", Share(s.min_mass_captured),
                     " min (hot set + selected pages)"));
    row("oracle, same budget", absl::StrCat(Share(s.mean_oracle_mass_captured),
                                            " mean (hot set + the best pages by exact mass)"));
    row("output error", absl::StrCat(Sig(s.mean_output_error), " mean, ", Sig(s.max_output_error),
                                     " max (relative L2 per query head)"));
    if (c.estimate_pages > 0 || c.estimate_rest) {
      row("estimated",
          absl::StrCat(Sig(s.mean_estimated_tokens), " tokens mean (estimation zone, per sample)"));
    }
    row("error given selection",
        absl::StrCat(Sig(s.max_restricted_error),
                     " max (against exact attention over the same tokens: rounding only",
                     c.estimate_pages > 0 || c.estimate_rest
                         ? ", plus the estimation zone's estimate)"
                         : ")"));
    if (per_sample) {
      out << absl::StrFormat("  %5s %4s %5s %4s %7s %8s %5s %5s %8s %8s %9s %9s\n", "step", "seq",
                             "layer", "head", "tokens", "captured", "pages", "hits", "mass",
                             "min mass", "error", "err|sel");
      for (const AccuracySample& a : r.samples) {
        out << absl::StrFormat("  %5d %4d %5d %4d %7d %8d %5d %5d %8s %8s %9s %9s\n", a.step,
                               a.sequence, a.layer, a.kv_head, a.tokens, a.captured_tokens,
                               a.selected_pages, a.hits, Share(a.mass_captured),
                               Share(a.min_mass_captured), Sig(a.output_error),
                               Sig(a.restricted_error));
      }
    }
  }
  for (const std::string& note : r.notes) out << "\nnote: " << note << "\n";
}

void PrintJson(const ReplayResult& r, std::ostream& out) {
  const ReplayConfig& c = r.config;
  const Options& o = r.options;
  const ReplaySummary s = Summarize(r);
  JsonObject top(out, 0);

  top.Raw("config", "");
  JsonObject config(out, 2);
  config.Str("model", c.model)
      .Int("layers", c.shape.num_layers)
      .Int("query_heads", c.shape.num_query_heads)
      .Int("kv_heads", c.shape.num_kv_heads)
      .Int("head_dim", c.shape.head_dim)
      .Str("dtype", DTypeName(c.shape.dtype))
      .Int("context", c.context_tokens)
      .Int("batch", c.batch)
      .Int("steps", c.steps)
      .Int("warmup_steps", c.warmup_steps)
      .Str("index", IndexKindName(c.index))
      .Int("budget_pages", c.budget_pages)
      .Num("mass_target", c.mass_target)
      .Int("estimate_pages", c.estimate_pages)
      .Bool("estimate_rest", c.estimate_rest)
      .Bool("value_shift", c.value_shift)
      .Str("policy", PolicyChoiceName(c.policy))
      .Num("cache_slots_per_budget", c.cache_slots_per_budget)
      .Num("score_decay", c.score_decay)
      .Int("sink_tokens", c.sink_tokens)
      .Int("window_tokens", c.window_tokens)
      .Int("page_size", c.page_size)
      .Str("backend", BackendName(c.backend))
      .Bool("backend_auto", c.backend_auto)
      .Int("device_id", c.device_id)
      .Raw("seed", absl::StrCat(c.seed))
      .Int("accuracy_samples", c.accuracy_samples)
      .Int("accuracy_steps", c.accuracy_steps)
      .Bool("phase_timings", c.phase_timings);
  config.Close();

  top.Raw("options", "");
  JsonObject options(out, 2);
  options.Int("host_memory_bytes", o.host_memory_bytes)
      .Int("gpu_memory_bytes", o.gpu_memory_bytes)
      .Int("max_sequences", o.max_sequences)
      .Int("max_batch_size", o.max_batch_size)
      .Int("max_sequence_tokens", o.max_sequence_tokens)
      .Int("max_prefill_chunk_tokens", o.max_prefill_chunk_tokens)
      .Str("cache_policy", CachePolicyName(o.cache_policy))
      .Num("hbm_bytes_per_second", o.hbm_bytes_per_second)
      .Num("pcie_bytes_per_second", o.pcie_bytes_per_second)
      .Str("hbm_rate_source", c.hbm_rate_source)
      .Str("pcie_rate_source", c.pcie_rate_source);
  options.Close();

  top.Str("device", r.device);

  top.Raw("setup", "");
  JsonObject setup(out, 2);
  setup.Num("create_seconds", r.create_seconds)
      .Num("prefill_seconds", r.prefill_seconds)
      .Int("prefill_tokens", r.prefill_tokens)
      .Int("prefill_bytes_stored", r.prefill_bytes_stored)
      .Int("gpu_bytes_reserved", r.gpu_bytes_reserved)
      .Int("host_pages_used", r.host_pages_used)
      .Int("host_pages_capacity", r.host_pages_capacity);
  setup.Close();

  top.Raw("decode", "");
  JsonObject decode(out, 2);
  std::string step_ms = "[";
  for (size_t i = 0; i < r.step_ms.size(); ++i) {
    absl::StrAppend(&step_ms, i == 0 ? "" : ", ", JsonNumber(r.step_ms[i]));
  }
  step_ms += "]";
  decode.Int("steps", s.steps)
      .Num("decode_seconds", s.decode_seconds)
      .Num("tokens_per_second", s.tokens_per_second)
      .Num("mean_step_ms", s.mean_step_ms)
      .Num("median_step_ms", s.median_step_ms)
      .Num("min_step_ms", s.min_step_ms)
      .Num("max_step_ms", s.max_step_ms)
      .Num("bound_step_ms", s.bound_step_ms)
      .Num("hit_rate", s.hit_rate)
      .Num("pages_selected_per_step", s.pages_selected_per_step)
      .Num("page_hits_per_step", s.page_hits_per_step)
      .Num("page_misses_per_step", s.page_misses_per_step)
      .Num("pcie_bytes_per_step", s.pcie_bytes_per_step)
      .Num("bytes_loaded_per_step", s.bytes_loaded_per_step)
      .Num("bytes_written_back_per_step", s.bytes_written_back_per_step)
      .Num("hbm_bytes_per_step", s.hbm_bytes_per_step);
  if (c.phase_timings) {
    decode.Num("plan_ms_per_step", s.plan_ms)
        .Num("select_ms_per_step", s.select_ms)
        .Num("resolve_ms_per_step", s.resolve_ms)
        .Num("load_ms_per_step", s.load_ms)
        .Num("attend_ms_per_step", s.attend_ms)
        .Num("decode_call_ms_per_step", s.phase_step_ms);
  }
  decode.Raw("step_ms", step_ms);
  decode.Close();

  top.Raw("accuracy", "");
  JsonObject accuracy(out, 2);
  accuracy.Int("num_samples", s.accuracy_samples)
      .Num("mean_mass_captured", s.mean_mass_captured)
      .Num("mean_oracle_mass_captured", s.mean_oracle_mass_captured)
      .Num("min_mass_captured", s.min_mass_captured)
      .Num("mean_output_error", s.mean_output_error)
      .Num("max_output_error", s.max_output_error)
      .Num("max_restricted_error", s.max_restricted_error)
      .Num("mean_estimated_tokens", s.mean_estimated_tokens);
  std::string samples = "[";
  for (size_t i = 0; i < r.samples.size(); ++i) {
    const AccuracySample& a = r.samples[i];
    absl::StrAppend(&samples, i == 0 ? "\n" : ",\n", "    {\"step\": ", a.step,
                    ", \"sequence\": ", a.sequence, ", \"layer\": ", a.layer,
                    ", \"kv_head\": ", a.kv_head, ", \"tokens\": ", a.tokens,
                    ", \"captured_tokens\": ", a.captured_tokens,
                    ", \"selected_pages\": ", a.selected_pages, ", \"hits\": ", a.hits,
                    ", \"misses\": ", a.misses, ", \"estimated_tokens\": ", a.estimated_tokens,
                    ", \"mass_captured\": ", JsonNumber(a.mass_captured),
                    ", \"oracle_mass_captured\": ", JsonNumber(a.oracle_mass_captured),
                    ", \"min_mass_captured\": ", JsonNumber(a.min_mass_captured),
                    ", \"output_error\": ", JsonNumber(a.output_error),
                    ", \"restricted_error\": ", JsonNumber(a.restricted_error), "}");
  }
  samples += r.samples.empty() ? "]" : "\n  ]";
  accuracy.Raw("samples", samples);
  accuracy.Close();

  std::string notes = "[";
  for (size_t i = 0; i < r.notes.size(); ++i) {
    absl::StrAppend(&notes, i == 0 ? "" : ", ", JsonString(r.notes[i]));
  }
  top.Raw("notes", notes + "]");
  top.Close();
  out << "\n";
}

std::string FormatEta(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(seconds, 0.0)));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
}

std::string FormatProgress(absl::string_view phase, int64_t done, int64_t total, int width,
                           double elapsed_seconds) {
  std::string count = absl::StrCat(done, "/", total);
  if (elapsed_seconds >= 0 && done > 0 && done < total) {
    absl::StrAppend(&count, "  ETA ",
                    FormatEta(elapsed_seconds * static_cast<double>(total - done) / done));
  }
  const int label = 8;
  const int bar = std::max(10, width - label - 4 - static_cast<int>(count.size()) - 2);
  const int filled =
      total > 0 ? static_cast<int>(std::clamp<int64_t>(done, 0, total) * bar / total) : 0;
  std::string line = absl::StrFormat("%-*s[%s%s]  %s", label, phase, std::string(filled, '#'),
                                     std::string(bar - filled, '.'), count);
  if (static_cast<int>(line.size()) < width) line.append(width - line.size(), ' ');
  return line;
}

}  // namespace kvtier::replay
