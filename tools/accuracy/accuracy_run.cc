#include "tools/accuracy/accuracy_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "runtime/kv_cache.h"
#include "tbb/parallel_for.h"
#include "tools/workload/attention_dump.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_handles.h"
#endif

namespace kvtier::accuracy {
namespace {

using Clock = std::chrono::steady_clock;

constexpr SeqId kSeq = 1;
constexpr int64_t kMiB = int64_t{1} << 20;
// A share of the cold tokens rounds up to pages; this keeps 0.05 * 6400 / 16 at 20 pages.
constexpr double kRoundingSlack = 1e-9;
// The synthetic input's shape: llama-3-8b's attention, one layer.
constexpr int kSyntheticQueryHeads = 32;
constexpr int kSyntheticKvHeads = 8;
constexpr int kSyntheticHeadDim = 128;
constexpr int64_t kSyntheticChunkTokens = 1024;

int PagesOf(double fraction, int64_t cold_tokens, int page_size) {
  return static_cast<int>(
      std::ceil(fraction * static_cast<double>(cold_tokens) / page_size - kRoundingSlack));
}

// Runs fn(i) for i in [0, n) on oneTBB and returns the first error, if any.
template <typename Fn>
absl::Status ParallelFor(int64_t n, Fn fn) {
  std::vector<absl::Status> status(static_cast<size_t>(n));
  tbb::parallel_for(int64_t{0}, n, [&](int64_t i) { status[i] = fn(i); });
  for (absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// A status with `prefix` before its message, same code.
absl::Status WithPrefix(const absl::Status& status, absl::string_view prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

}  // namespace

std::vector<int> EvenlySpaced(int count, int wanted) {
  std::vector<int> indices;
  if (wanted >= count) {
    indices.resize(std::max(count, 0));
    std::iota(indices.begin(), indices.end(), 0);
    return indices;
  }
  for (int i = 0; i < wanted; ++i) {
    indices.push_back(static_cast<int>(int64_t{i} * count / wanted));
  }
  return indices;
}

absl::StatusOr<AccuracyInput> LoadDumpInput(const std::string& path, int queries) {
  absl::StatusOr<workload::AttentionDump> dump = workload::AttentionDump::Load(path);
  if (!dump.ok()) return WithPrefix(dump.status(), absl::StrCat("cannot read dump ", path, ": "));
  const int hq = dump->q_heads(), hk = dump->kv_heads(), d = dump->head_dim();
  const int64_t tokens = dump->tokens();
  AccuracyInput in;
  in.name = path;
  in.shape.num_layers = 1;
  in.shape.num_query_heads = hq;
  in.shape.num_kv_heads = hk;
  in.shape.head_dim = d;
  in.shape.dtype = DType::kFP16;
  in.softmax_scale = dump->softmax_scale();
  in.tokens = tokens;
  // The dump stores [Hk, tokens, D] and [Hq, queries, D]; the API takes rows of all heads.
  in.keys.resize(static_cast<size_t>(tokens * hk * d));
  in.values.resize(in.keys.size());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int h = 0; h < hk; ++h) {
      std::copy_n(dump->key(h, static_cast<int>(t)), d, in.keys.begin() + (t * hk + h) * d);
      std::copy_n(dump->value(h, static_cast<int>(t)), d, in.values.begin() + (t * hk + h) * d);
    }
  }
  const int n = dump->num_queries();
  in.queries.resize(static_cast<size_t>(int64_t{n} * hq * d));
  for (int i = 0; i < n; ++i) {
    const int64_t pos = dump->query_positions()[i];
    if (!in.query_positions.empty() && pos <= in.query_positions.back()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "dump ", path, ": query positions must increase (q_pos[", i, "] = ", pos, ")"));
    }
    in.query_positions.push_back(pos);
    for (int h = 0; h < hq; ++h) {
      std::copy_n(dump->query(h, i), d, in.queries.begin() + (int64_t{i} * hq + h) * d);
    }
  }
  if (in.query_positions.empty() || in.query_positions.front() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("dump ", path,
                     ": needs queries after position 0 (the tokens before the "
                     "first query are prefilled)"));
  }
  in.evaluated = EvenlySpaced(n, queries);
  if (queries > n) {
    in.notes.push_back(absl::StrCat(path, " has ", n, " queries: all of them are evaluated"));
  }
  return in;
}

absl::StatusOr<AccuracyInput> MakeSyntheticInput(const AccuracyConfig& c) {
  AccuracyInput in;
  in.name = "synthetic";
  in.shape.num_layers = 1;
  in.shape.num_query_heads = kSyntheticQueryHeads;
  in.shape.num_kv_heads = kSyntheticKvHeads;
  in.shape.head_dim = kSyntheticHeadDim;
  in.shape.dtype = DType::kBF16;
  in.tokens = c.synthetic_context;
  const int span = static_cast<int>(std::min<int64_t>(kSyntheticQuerySpan, in.tokens - 1));
  for (int i = 0; i < span; ++i) in.query_positions.push_back(in.tokens - span + i);
  in.evaluated = EvenlySpaced(span, c.queries);
  in.prefill_tokens = in.query_positions.front() - c.generated;
  if (c.generated > 0) {
    in.notes.push_back(absl::StrCat("synthetic: ", in.prefill_tokens, " tokens prefilled, ",
                                    c.generated, " generated before the first query"));
  }

  workload::SyntheticOptions wo;
  wo.shape = in.shape;
  wo.seed = c.seed;
  // Needles: (KV head, evaluated query) pairs, distinct while K <= Q * Hk; keys at seeded
  // cold positions of their query's context, distinct per KV head.
  const int k = c.needles;
  const int q = static_cast<int>(in.evaluated.size());
  const int64_t first_key = wo.sinks.enabled ? wo.sinks.num_tokens : 0;
  std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + 0x4EED1E5ull);
  for (int i = 0; i < k; ++i) {
    workload::Needle needle;
    needle.layer = 0;
    needle.kv_head = i % kSyntheticKvHeads;
    needle.query_position = in.query_positions[in.evaluated[int64_t{i} * q / k]];
    const tools::HotSetGeometry geo =
        tools::HotSet(needle.query_position + 1, c.page_size, c.sink_tokens, c.window_tokens);
    const int64_t lo = std::max(geo.sink_end, first_key), hi = geo.window_begin;
    if (hi <= lo) {
      return absl::InvalidArgumentError(
          absl::StrCat("--needles=", k, ": the query at position ", needle.query_position,
                       " has no cold tokens to hide a needle in; use a longer --context"));
    }
    std::uniform_int_distribution<int64_t> pick(lo, hi - 1);
    const auto taken = [&](int64_t position) {
      return std::any_of(wo.needles.begin(), wo.needles.end(), [&](const workload::Needle& n) {
        return n.kv_head == needle.kv_head && n.key_position == position;
      });
    };
    needle.key_position = pick(rng);
    for (int tries = 0; tries < 64 && taken(needle.key_position); ++tries) {
      needle.key_position = pick(rng);
    }
    if (taken(needle.key_position)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--needles=", k, ": too many needles for the cold tokens [", lo, ", ", hi, ")"));
    }
    wo.needles.push_back(needle);
  }
  absl::StatusOr<std::unique_ptr<workload::SyntheticWorkload>> workload =
      workload::SyntheticWorkload::Create(wo);
  if (!workload.ok()) return WithPrefix(workload.status(), "synthetic workload: ");
  const workload::SyntheticWorkload& w = **workload;
  in.softmax_scale = w.softmax_scale();
  in.needles = wo.needles;

  const int64_t row = int64_t{kSyntheticKvHeads} * kSyntheticHeadDim;
  in.keys.resize(static_cast<size_t>(in.tokens * row));
  in.values.resize(in.keys.size());
  const int64_t chunks = (in.tokens + kSyntheticChunkTokens - 1) / kSyntheticChunkTokens;
  KVTIER_RETURN_IF_ERROR(ParallelFor(chunks, [&](int64_t i) {
    const int64_t first = i * kSyntheticChunkTokens;
    const int64_t count = std::min(kSyntheticChunkTokens, in.tokens - first);
    return w.Kv(kSeq, 0, first, count, in.keys.data() + first * row,
                in.values.data() + first * row);
  }));
  const int64_t q_row = int64_t{kSyntheticQueryHeads} * kSyntheticHeadDim;
  in.queries.resize(static_cast<size_t>(span * q_row));
  KVTIER_RETURN_IF_ERROR(ParallelFor(span, [&](int64_t i) {
    return w.Query(kSeq, 0, in.query_positions[i], in.queries.data() + i * q_row);
  }));
  return in;
}

std::vector<RunSpec> RunSpecs(const AccuracyConfig& c) {
  std::vector<RunSpec> specs;
  for (const IndexKind index : c.indexes) {
    for (const double fraction : c.budget_fractions) {
      RunSpec s;
      s.index = index;
      s.budget_fraction = fraction;
      const bool estimating = AccuracyConfig::HasEstimation(index);
      s.estimate_fraction = estimating ? c.estimate_fraction : 0;
      s.mass_target = estimating ? c.mass_target : 0;
      s.value_shift = c.value_shift;
      s.page_size = c.page_size;
      s.sink_tokens = c.sink_tokens;
      s.window_tokens = c.window_tokens;
      s.backend = c.backend;
      s.device_id = c.device_id;
      specs.push_back(s);
    }
  }
  return specs;
}

absl::StatusOr<Options> MakeRunOptions(const AccuracyInput& input, const RunSpec& spec) {
  Options o;
  o.shape = input.shape;
  o.page_size = spec.page_size;
  o.sink_tokens = spec.sink_tokens;
  o.window_tokens = spec.window_tokens;
  o.index = spec.index;
  if (IsSupportedPageSize(spec.page_size) && !input.evaluated.empty()) {
    const int64_t cold = tools::ColdTokens(input.last_evaluated_position() + 1, spec.page_size,
                                           spec.sink_tokens, spec.window_tokens);
    o.budget.max_pages = std::max(1, PagesOf(spec.budget_fraction, cold, spec.page_size));
    // A share of 1 estimates every cold page that is not retrieved (the rest).
    o.budget.estimate_rest = spec.estimate_fraction >= 1;
    o.budget.estimate_pages = spec.estimate_fraction > 0 && !o.budget.estimate_rest
                                  ? PagesOf(spec.estimate_fraction, cold, spec.page_size)
                                  : 0;
  }
  o.budget.mass_target = spec.mass_target;
  o.budget.value_shift = spec.value_shift;
  // Every page of the sequence, K and V, plus two spare pages per KV head and some slack.
  const int64_t p = std::max(spec.page_size, 1);
  const int64_t pages = (input.tokens + p - 1) / p + 2;
  const int64_t bytes = int64_t{input.shape.num_kv_heads} * pages * 2 * PageBytes(o.shape, p);
  o.host_memory_bytes = (bytes + bytes / 16 + 16 * kMiB + kMiB - 1) / kMiB * kMiB;
  o.max_sequences = 1;
  o.max_batch_size = 1;
  o.max_sequence_tokens = (input.tokens + p - 1) / p * p;
  o.softmax_scale = input.softmax_scale;
  o.backend = spec.backend;
  o.device_id = spec.device_id;
  KVTIER_RETURN_IF_ERROR(ValidateOptions(o));
  return o;
}

RunResult RunInput(const AccuracyInput& input, const RunSpec& spec) {
  absl::StatusOr<Options> options = MakeRunOptions(input, spec);
  if (!options.ok()) {
    RunResult r;
    r.input = input.name;
    r.spec = spec;
    r.context = input.tokens;
    r.status = options.status();
    return r;
  }
  return RunInputWithOptions(input, spec, *options);
}

namespace {

// The decode loop and the measurements of one run; returns the first failure.
absl::Status Run(const AccuracyInput& in, const Options& o, RunResult& r) {
  const int hq = in.shape.num_query_heads, hk = in.shape.num_kv_heads;
  const int g = in.shape.group_size();
  const int64_t d = in.shape.head_dim;
  const int64_t row = hk * d, q_row = hq * d;
  cudaStream_t stream = nullptr;
#ifdef KVTIER_WITH_CUDA
  CudaStream owned_stream;
  if (o.backend == Backend::kCuda) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(o.device_id));
    KVTIER_ASSIGN_OR_RETURN(owned_stream, CudaStream::Create());
    stream = owned_stream.get();
  }
#endif
  absl::StatusOr<std::unique_ptr<KvCache>> created = KvCache::Create(o);
  if (!created.ok()) {
    return WithPrefix(created.status(),
                      absl::StrCat("KvCache::Create (index ", IndexKindName(o.index), "): "));
  }
  KvCache& cache = **created;
  KVTIER_RETURN_IF_ERROR(cache.AddSequence(kSeq));

  const int64_t prompt = in.prefill_tokens > 0 ? in.prefill_tokens : in.query_positions.front();
  KVTIER_RETURN_IF_ERROR(cache.Prefill(
      kSeq, 0, MakeConstTensor(in.keys.data(), in.shape.dtype, {prompt, hk, d}),
      MakeConstTensor(in.values.data(), in.shape.dtype, {prompt, hk, d}), ConstTensor{}, stream));

  std::vector<double> mass, oracle, error, restricted;
  double retrieved = 0, estimated = 0;
  int64_t items = 0;
  bool derived_noted = false;
  std::vector<float> out(static_cast<size_t>(q_row));
  std::vector<tools::ExactTokens> exact(hk);
  std::vector<KvCache::CacheInspection> inspections(hk);
  std::vector<tools::GroupAccuracy> groups(hk);
  size_t next_eval = 0;  // into in.evaluated
  size_t qi = 0;         // the query of the position decoded (the next one at a gap)
  const int64_t last = in.query_positions.back();
  for (int64_t pos = prompt; pos <= last; ++pos) {
    while (in.query_positions[qi] < pos) ++qi;
    std::fill(out.begin(), out.end(), std::numeric_limits<float>::quiet_NaN());
    const SeqId seqs[] = {kSeq};
    KVTIER_RETURN_IF_ERROR(cache.Decode(
        0, seqs, MakeConstTensor(in.queries.data() + qi * q_row, in.shape.dtype, {1, hq, d}),
        MakeConstTensor(in.keys.data() + pos * row, in.shape.dtype, {1, hk, d}),
        MakeConstTensor(in.values.data() + pos * row, in.shape.dtype, {1, hk, d}),
        MakeMutableTensor(out.data(), DType::kFP32, {1, hq, d}), stream));
    if (next_eval >= in.evaluated.size() || in.query_positions[in.evaluated[next_eval]] != pos) {
      continue;
    }
    ++next_eval;
    const int64_t tokens = pos + 1;
    for (int h = 0; h < hk; ++h) {
      KVTIER_ASSIGN_OR_RETURN(inspections[h], cache.Inspect(kSeq, 0, h));
      KVTIER_RETURN_IF_ERROR(tools::ExactTokensOf(inspections[h], o, tokens, &exact[h]));
      if (exact[h].derived && !derived_noted) {
        r.notes.push_back(
            "KvCache::Inspect reported no token positions: page j was taken as tokens "
            "[j P, (j + 1) P)");
        derived_noted = true;
      }
    }
    tbb::parallel_for(0, hk, [&](int h) {
      tools::GroupAttention a;
      a.dtype = in.shape.dtype;
      a.group_size = g;
      a.head_dim = in.shape.head_dim;
      a.softmax_scale = o.EffectiveSoftmaxScale();
      a.q = in.queries.data() + qi * q_row + h * g * d;
      a.k = in.keys.data() + h * d;
      a.v = in.values.data() + h * d;
      a.tokens = tokens;
      a.kv_row_stride = row;
      a.out = out.data() + h * g * d;
      a.captured = exact[h].captured;
      a.hot = exact[h].hot;
      a.page_size = o.page_size;
      a.oracle_pages = static_cast<int>(inspections[h].selected_pages.size());
      groups[h] = tools::MeasureGroupAccuracy(a);
    });
    for (int h = 0; h < hk; ++h) {
      for (const tools::HeadAccuracy& head : groups[h].heads) {
        mass.push_back(head.mass_captured);
        oracle.push_back(head.oracle_mass);
        error.push_back(head.output_error);
        restricted.push_back(head.restricted_error);
      }
      retrieved += static_cast<double>(exact[h].retrieved);
      estimated += static_cast<double>(inspections[h].estimated_tokens);
      ++items;
    }
    for (const workload::Needle& needle : in.needles) {
      if (needle.query_position != pos) continue;
      if (exact[needle.kv_head].captured[needle.key_position] != 0) {
        ++r.needles_found;
      } else {
        r.needles_missed.push_back(needle);
      }
    }
  }
  r.queries = static_cast<int>(next_eval);
  if (items > 0) {
    const tools::ValueSummary m = tools::Summarize(mass);
    r.mean_mass_captured = m.mean;
    r.min_mass_captured = m.min;
    r.mean_oracle_mass = tools::Summarize(oracle).mean;
    r.output_error = tools::Summarize(error);
    r.max_restricted_error = tools::Summarize(restricted).max;
    r.tokens_retrieved = retrieved / static_cast<double>(items);
    r.tokens_estimated = estimated / static_cast<double>(items);
  }
  if (r.output_error.non_finite > 0) {
    r.notes.push_back(absl::StrCat(r.output_error.non_finite, " of ", r.output_error.count,
                                   " query-head outputs are not finite (NaN): Decode left them "
                                   "unwritten or computed NaN"));
  }
  return cache.RemoveSequence(kSeq);
}

}  // namespace

RunResult RunInputWithOptions(const AccuracyInput& input, const RunSpec& spec,
                              const Options& options) {
  const Clock::time_point start = Clock::now();
  RunResult r;
  r.input = input.name;
  r.spec = spec;
  r.context = input.tokens;
  r.query_heads = input.shape.num_query_heads;
  r.budget_pages = options.budget.max_pages;
  r.estimate_pages = options.budget.estimate_pages;
  r.estimate_rest = options.budget.estimate_rest;
  r.needles_planted = static_cast<int>(input.needles.size());
  if (!input.evaluated.empty() && options.page_size > 0) {
    r.cold_tokens = tools::ColdTokens(input.last_evaluated_position() + 1, options.page_size,
                                      options.sink_tokens, options.window_tokens);
  }
  r.notes = input.notes;
  if (input.evaluated.empty()) {
    r.status = absl::InvalidArgumentError(absl::StrCat(input.name, ": no query to evaluate"));
  } else {
    r.status = Run(input, options, r);
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

}  // namespace kvtier::accuracy
