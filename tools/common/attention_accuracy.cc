#include "tools/common/attention_accuracy.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvtier::tools {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// |got - want| / |want| over D elements; NaN in `got` stays NaN.
double RelativeError(const float* got, const double* want, int64_t d) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < d; ++i) {
    const double e = got[i] - want[i];
    diff += e * e;
    norm += want[i] * want[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// The loops, with the element type fixed so that the inner loops carry no dtype switch.
// Each token's key and value row is read once for all G heads.
template <typename Load>
GroupAccuracy Measure(const GroupAttention& in, Load load) {
  const int g_count = in.group_size;
  const int64_t d = in.head_dim;
  const int64_t n = in.tokens;
  const bool oracle = !in.hot.empty() && in.page_size > 0;

  std::vector<double> q(static_cast<size_t>(g_count * d));
  for (int64_t i = 0; i < g_count * d; ++i) q[i] = load(in.q, i);
  // logits[g * n + t]
  std::vector<double> logits(static_cast<size_t>(g_count * n));
  std::vector<double> max_logit(g_count, -std::numeric_limits<double>::infinity());
  std::vector<double> row(static_cast<size_t>(d));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < d; ++i) row[i] = load(in.k, t * in.kv_row_stride + i);
    for (int g = 0; g < g_count; ++g) {
      const double* qg = q.data() + g * d;
      double dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += qg[i] * row[i];
      const double logit = dot * in.softmax_scale;
      logits[g * n + t] = logit;
      max_logit[g] = std::max(max_logit[g], logit);
    }
  }
  // Weights in place of the logits; totals over every token and over the captured ones.
  std::vector<double> total(g_count, 0.0), kept(g_count, 0.0);
  for (int g = 0; g < g_count; ++g) {
    for (int64_t t = 0; t < n; ++t) {
      const double w = std::exp(logits[g * n + t] - max_logit[g]);
      logits[g * n + t] = w;
      total[g] += w;
      if (in.captured[t] != 0) kept[g] += w;
    }
  }
  std::vector<double> exact(static_cast<size_t>(g_count * d), 0.0);
  std::vector<double> restricted(static_cast<size_t>(g_count * d), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < d; ++i) row[i] = load(in.v, t * in.kv_row_stride + i);
    const bool captured = in.captured[t] != 0;
    for (int g = 0; g < g_count; ++g) {
      const double w = logits[g * n + t];
      double* e = exact.data() + g * d;
      for (int64_t i = 0; i < d; ++i) e[i] += w * row[i];
      if (captured) {
        double* r = restricted.data() + g * d;
        for (int64_t i = 0; i < d; ++i) r[i] += w * row[i];
      }
    }
  }

  GroupAccuracy result;
  result.tokens = n;
  result.captured_tokens = n - std::count(in.captured.begin(), in.captured.begin() + n, uint8_t{0});
  result.heads.resize(g_count);
  for (int g = 0; g < g_count; ++g) {
    double* e = exact.data() + g * d;
    double* r = restricted.data() + g * d;
    for (int64_t i = 0; i < d; ++i) {
      e[i] /= total[g];
      r[i] = kept[g] > 0 ? r[i] / kept[g] : 0.0;
    }
    HeadAccuracy& h = result.heads[g];
    h.mass_captured = kept[g] / total[g];
    h.output_error = RelativeError(in.out + g * d, e, d);
    h.restricted_error = RelativeError(in.out + g * d, r, d);
  }

  if (oracle) {
    // Per head: mass on the hot set and on each cold page; the pages ranked by the group's
    // summed mass, as an index ranks them for its group.
    const int64_t pages = (n + in.page_size - 1) / in.page_size;
    std::vector<double> page_mass(static_cast<size_t>(g_count * pages), 0.0);
    std::vector<double> hot_mass(g_count, 0.0);
    std::vector<char> cold_page(static_cast<size_t>(pages), 0);
    for (int g = 0; g < g_count; ++g) {
      for (int64_t t = 0; t < n; ++t) {
        const double share = logits[g * n + t] / total[g];
        if (in.hot[t] != 0) {
          hot_mass[g] += share;
        } else {
          page_mass[g * pages + t / in.page_size] += share;
          cold_page[t / in.page_size] = 1;
        }
      }
    }
    std::vector<int64_t> order;
    std::vector<double> group_mass(static_cast<size_t>(pages), 0.0);
    for (int64_t j = 0; j < pages; ++j) {
      if (!cold_page[j]) continue;
      order.push_back(j);
      for (int g = 0; g < g_count; ++g) group_mass[j] += page_mass[g * pages + j];
    }
    const size_t best = std::min(order.size(), static_cast<size_t>(std::max(in.oracle_pages, 0)));
    std::partial_sort(order.begin(), order.begin() + best, order.end(),
                      [&](int64_t a, int64_t b) { return group_mass[a] > group_mass[b]; });
    for (int g = 0; g < g_count; ++g) {
      double mass = hot_mass[g];
      for (size_t j = 0; j < best; ++j) mass += page_mass[g * pages + order[j]];
      result.heads[g].oracle_mass = mass;
    }
  }
  return result;
}

}  // namespace

GroupAccuracy MeasureGroupAccuracy(const GroupAttention& in) {
  assert(in.group_size >= 1 && in.head_dim >= 1 && in.tokens >= 1);
  assert(in.kv_row_stride >= in.head_dim);
  assert(static_cast<int64_t>(in.captured.size()) >= in.tokens);
  assert(in.hot.empty() || static_cast<int64_t>(in.hot.size()) >= in.tokens);
  switch (in.dtype) {
    case DType::kBF16:
      return Measure(in, [](const void* p, int64_t i) {
        return static_cast<double>(BF16ToFloat(static_cast<const uint16_t*>(p)[i]));
      });
    case DType::kFP16:
      return Measure(in, [](const void* p, int64_t i) {
        return static_cast<double>(FP16ToFloat(static_cast<const uint16_t*>(p)[i]));
      });
    case DType::kFP32:
      return Measure(in, [](const void* p, int64_t i) {
        return static_cast<double>(static_cast<const float*>(p)[i]);
      });
  }
  // An unknown dtype is a caller's bug; report it as unmeasurable rather than as accurate.
  GroupAccuracy unknown;
  unknown.tokens = in.tokens;
  unknown.heads.assign(in.group_size, HeadAccuracy{kNaN, kNaN, kNaN, kNaN});
  return unknown;
}

HotSetGeometry HotSet(int64_t tokens, int page_size, int sink_tokens, int window_tokens) {
  const int64_t p = page_size;
  const int64_t pages = (tokens + p - 1) / p;
  const int64_t sink_pages = sink_tokens / p;
  const int64_t cold_end = std::max(sink_pages, pages - window_tokens / p);
  HotSetGeometry g;
  g.sink_end = std::min(sink_pages * p, tokens);
  g.window_begin = std::min(cold_end * p, tokens);
  g.window_begin = std::max(g.window_begin, g.sink_end);
  return g;
}

int64_t ColdTokens(int64_t tokens, int page_size, int sink_tokens, int window_tokens) {
  return HotSet(tokens, page_size, sink_tokens, window_tokens).cold_tokens();
}

absl::Status ExactTokensOf(const KvCache::CacheInspection& inspection, const Options& options,
                           int64_t tokens, ExactTokens* out) {
  const int64_t p = options.page_size;
  int64_t window_begin = inspection.window_begin;
  std::vector<int64_t> derived_positions;
  const std::vector<int64_t>* positions = &inspection.selected_positions;
  out->derived = false;
  if (inspection.tokens == 0 && inspection.selected_positions.empty()) {
    // A runtime that does not report positions: the position-ordered page geometry, which
    // only page bounds has (a clustered index lays its segments out cluster by cluster).
    out->derived = !inspection.selected_pages.empty();
    if (out->derived && options.index != IndexKind::kPageBounds) {
      return absl::FailedPreconditionError(absl::StrCat(
          "KvCache::Inspect reported no selected_positions for the ", IndexKindName(options.index),
          " index, whose pages are not position-ordered: the tokens it attended are unknown"));
    }
    window_begin =
        HotSet(tokens, options.page_size, options.sink_tokens, options.window_tokens).window_begin;
    for (const int32_t page : inspection.selected_pages) {
      for (int64_t t = page * p; t < std::min<int64_t>((page + 1) * p, tokens); ++t) {
        derived_positions.push_back(t);
      }
    }
    positions = &derived_positions;
  } else if (inspection.tokens != tokens) {
    return absl::InternalError(absl::StrCat("KvCache::Inspect reports ", inspection.tokens,
                                            " tokens after the step; ", tokens, " were decoded"));
  }
  const int64_t sink_end = std::min<int64_t>(options.sink_tokens, tokens);
  if (window_begin < sink_end || window_begin > tokens) {
    return absl::InternalError(absl::StrCat("KvCache::Inspect reports window_begin ", window_begin,
                                            " outside [", sink_end, ", ", tokens, "]"));
  }
  out->hot.assign(static_cast<size_t>(tokens), 0);
  for (int64_t t = 0; t < sink_end; ++t) out->hot[t] = 1;
  for (int64_t t = window_begin; t < tokens; ++t) out->hot[t] = 1;
  out->captured = out->hot;
  for (const int64_t t : *positions) {
    if (t < 0 || t >= tokens || out->hot[t] != 0) {
      return absl::InternalError(absl::StrCat("KvCache::Inspect reports selected position ", t,
                                              ": outside the cold tokens [", sink_end, ", ",
                                              window_begin, ")"));
    }
    out->captured[t] = 1;
  }
  out->retrieved = static_cast<int64_t>(positions->size());
  return absl::OkStatus();
}

ValueSummary Summarize(absl::Span<const double> values) {
  ValueSummary s;
  s.count = static_cast<int64_t>(values.size());
  if (values.empty()) return s;
  std::vector<double> sorted;
  sorted.reserve(values.size());
  for (const double v : values) {
    if (std::isfinite(v)) {
      sorted.push_back(v);
    } else {
      ++s.non_finite;
    }
  }
  if (s.non_finite > 0) {
    s.mean = s.min = s.p95 = s.max = kNaN;
    return s;
  }
  std::sort(sorted.begin(), sorted.end());
  double sum = 0;
  for (const double v : sorted) sum += v;
  s.mean = sum / static_cast<double>(sorted.size());
  s.min = sorted.front();
  s.max = sorted.back();
  // Nearest rank: the smallest value with at least 95% of the values at or below it.
  const size_t rank = static_cast<size_t>(std::ceil(0.95 * static_cast<double>(sorted.size())));
  s.p95 = sorted[std::max<size_t>(rank, 1) - 1];
  return s;
}

}  // namespace kvtier::tools
