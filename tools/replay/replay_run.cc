#include "tools/replay/replay_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/status.h"
#include "runtime/kv_cache.h"
#include "tbb/parallel_for.h"
#include "tbb/task_arena.h"
#include "tools/common/attention_accuracy.h"
#include "tools/replay/step_buffers.h"
#include "tools/workload/synthetic_kv.h"

namespace kvtier::replay {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A sampled (sequence, layer, KV head).
struct Triple {
  int sequence;
  int layer;
  int kv_head;
};

// The `count` triples checked for accuracy, distinct, drawn from the seed, in (sequence,
// layer, KV head) order.
std::vector<Triple> DrawTriples(const ReplayConfig& c) {
  const int heads = c.shape.num_kv_heads;
  const int64_t total = int64_t{c.batch} * c.shape.num_layers * heads;
  std::vector<int64_t> ids(static_cast<size_t>(total));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937_64 rng(c.seed * 0x9E3779B97F4A7C15ull + 0x5EEDull);
  const int count = static_cast<int>(std::min<int64_t>(c.accuracy_samples, total));
  for (int i = 0; i < count; ++i) {
    std::uniform_int_distribution<int64_t> pick(i, total - 1);
    std::swap(ids[i], ids[pick(rng)]);
  }
  ids.resize(count);
  std::sort(ids.begin(), ids.end());
  std::vector<Triple> triples;
  for (int64_t id : ids) {
    triples.push_back({static_cast<int>(id / (int64_t{c.shape.num_layers} * heads)),
                       static_cast<int>(id / heads % c.shape.num_layers),
                       static_cast<int>(id % heads)});
  }
  return triples;
}

// Host copies of every token's K and V of the sampled (sequence, layer) pairs, kept as they
// are generated (prefill and decode) so exact attention needs no regeneration.
class Shadows {
 public:
  Shadows(const ReplayConfig& c, const std::vector<Triple>& triples)
      : row_elems_(int64_t{c.shape.num_kv_heads} * c.shape.head_dim),
        layers_(c.shape.num_layers),
        index_(static_cast<size_t>(c.batch) * c.shape.num_layers, -1) {
    for (const Triple& t : triples) {
      int& slot = index_[static_cast<size_t>(t.sequence) * layers_ + t.layer];
      if (slot >= 0) continue;
      slot = static_cast<int>(k_.size());
      k_.emplace_back(static_cast<size_t>(c.final_tokens() * row_elems_));
      v_.emplace_back(static_cast<size_t>(c.final_tokens() * row_elems_));
    }
  }

  // Copies tokens [first, first + count) of (sequence, layer) if that pair is sampled.
  void Keep(int sequence, int layer, int64_t first, int64_t count, const uint16_t* k,
            const uint16_t* v) {
    const int slot = index_[static_cast<size_t>(sequence) * layers_ + layer];
    if (slot < 0) return;
    std::copy_n(k, count * row_elems_, k_[slot].data() + first * row_elems_);
    std::copy_n(v, count * row_elems_, v_[slot].data() + first * row_elems_);
  }
  const uint16_t* K(int sequence, int layer) const { return k_[Slot(sequence, layer)].data(); }
  const uint16_t* V(int sequence, int layer) const { return v_[Slot(sequence, layer)].data(); }

 private:
  int Slot(int sequence, int layer) const {
    return index_[static_cast<size_t>(sequence) * layers_ + layer];
  }
  int64_t row_elems_;
  int layers_;
  std::vector<int> index_;  // [sequence * layers + layer] -> slot, -1 when not sampled
  std::vector<std::vector<uint16_t>> k_, v_;
};

std::string DescribeDevice(const ReplayConfig& c) {
  if (c.backend == Backend::kCuda) {
    if (absl::StatusOr<GpuInfo> gpu = QueryGpu(c.device_id); gpu.ok()) return gpu->name;
    return absl::StrCat("CUDA device ", c.device_id);
  }
  return absl::StrCat("host (", tbb::this_task_arena::max_concurrency(), " threads)");
}

absl::Status Prefill(const ReplayConfig& c, const workload::SyntheticWorkload& workload,
                     KvCache& cache, const std::vector<SeqId>& seqs, cudaStream_t stream,
                     Shadows& shadows, const ProgressFn& progress) {
  const int layers = c.shape.num_layers;
  const int64_t chunk = PrefillChunkTokens(c);
  const int64_t row = int64_t{c.shape.num_kv_heads} * c.shape.head_dim;
  const int64_t chunks = (c.context_tokens + chunk - 1) / chunk;
  std::vector<std::vector<uint16_t>> k(layers), v(layers);
  for (int l = 0; l < layers; ++l) {
    k[l].resize(static_cast<size_t>(chunk * row));
    v[l].resize(static_cast<size_t>(chunk * row));
  }
  for (int s = 0; s < c.batch; ++s) {
    for (int64_t i = 0; i < chunks; ++i) {
      const int64_t first = i * chunk;
      const int64_t count = std::min(chunk, c.context_tokens - first);
      KVTIER_RETURN_IF_ERROR(ParallelFor(layers, [&](int l) -> absl::Status {
        KVTIER_RETURN_IF_ERROR(workload.Kv(seqs[s], l, first, count, k[l].data(), v[l].data()));
        shadows.Keep(s, l, first, count, k[l].data(), v[l].data());
        return absl::OkStatus();
      }));
      for (int l = 0; l < layers; ++l) {
        const ConstTensor kt = MakeConstTensor(k[l].data(), c.shape.dtype,
                                               {count, c.shape.num_kv_heads, c.shape.head_dim});
        const ConstTensor vt = MakeConstTensor(v[l].data(), c.shape.dtype,
                                               {count, c.shape.num_kv_heads, c.shape.head_dim});
        KVTIER_RETURN_IF_ERROR(cache.Prefill(seqs[s], l, kt, vt, ConstTensor{}, stream));
      }
      if (progress) progress("prefill", s * chunks + i + 1, c.batch * chunks);
    }
  }
  return absl::OkStatus();
}

// A sample's figures from the shared measure: means and extremes over the G query heads.
void FillSample(const tools::GroupAccuracy& group, AccuracySample* sample) {
  const double g = static_cast<double>(group.heads.size());
  sample->tokens = group.tokens;
  sample->captured_tokens = group.captured_tokens;
  sample->mass_captured = 0;
  sample->min_mass_captured = 1;
  sample->oracle_mass_captured = 0;
  sample->output_error = 0;
  sample->restricted_error = 0;
  // std::max drops a NaN second argument: keep NaN visible.
  const auto max_nan = [](double a, double b) {
    return std::isnan(a) || std::isnan(b) ? std::numeric_limits<double>::quiet_NaN()
                                          : std::max(a, b);
  };
  for (const tools::HeadAccuracy& h : group.heads) {
    sample->mass_captured += h.mass_captured / g;
    sample->min_mass_captured = std::min(sample->min_mass_captured, h.mass_captured);
    sample->oracle_mass_captured += h.oracle_mass / g;
    sample->output_error = max_nan(sample->output_error, h.output_error);
    sample->restricted_error = max_nan(sample->restricted_error, h.restricted_error);
  }
}

}  // namespace

absl::StatusOr<AccuracySample> MeasureSample(const KvCache& cache, const Options& o,
                                             const SampleInputs& in, bool* derived) {
  KVTIER_ASSIGN_OR_RETURN(KvCache::CacheInspection inspection,
                          cache.Inspect(in.seq, in.layer, in.kv_head));
  tools::ExactTokens exact;
  KVTIER_RETURN_IF_ERROR(tools::ExactTokensOf(inspection, o, in.tokens, &exact));
  *derived = exact.derived;
  AccuracySample sample;
  sample.layer = in.layer;
  sample.kv_head = in.kv_head;
  sample.selected_pages = static_cast<int>(inspection.selected_pages.size());
  sample.hits = inspection.hits;
  sample.misses = inspection.misses;
  sample.estimated_tokens = inspection.estimated_tokens;
  tools::GroupAttention group;
  group.dtype = o.shape.dtype;
  group.group_size = o.shape.group_size();
  group.head_dim = o.shape.head_dim;
  group.softmax_scale = o.EffectiveSoftmaxScale();
  group.q = in.q;
  group.k = in.k;
  group.v = in.v;
  group.tokens = in.tokens;
  group.kv_row_stride = in.kv_row_stride;
  group.out = in.out;
  group.captured = exact.captured;
  group.hot = exact.hot;
  group.page_size = o.page_size;
  group.oracle_pages = sample.selected_pages;
  FillSample(tools::MeasureGroupAccuracy(group), &sample);
  return sample;
}

absl::StatusOr<ReplayResult> RunReplay(const ReplayConfig& c, const ProgressFn& progress) {
  ReplayResult result;
  result.config = c;
  KVTIER_ASSIGN_OR_RETURN(result.options, MakeOptions(c));
  const Options& o = result.options;
  result.device = DescribeDevice(c);
  if (c.backend_auto && c.backend == Backend::kHost) {
    result.notes.push_back("--backend=auto: no CUDA device, so the host backend ran");
  }
  if (c.backend == Backend::kHost) {
    result.notes.push_back(
        "host backend: step times are the kernels' host twins on the CPU; the bound is what the "
        "GPU rates give (rates from: above) and says nothing about this CPU");
  }

  workload::SyntheticOptions wo;
  wo.shape = c.shape;
  wo.seed = c.seed;
  wo.softmax_scale = o.softmax_scale;
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<workload::SyntheticWorkload> workload,
                          workload::SyntheticWorkload::Create(wo));

  // Device buffers and the stream come before the cache so the cache's device is current.
  KVTIER_ASSIGN_OR_RETURN(
      StepBuffers buffers,
      StepBuffers::Create(c.shape, c.batch, c.backend == Backend::kCuda, c.device_id));
  const cudaStream_t stream = buffers.stream();

  Clock::time_point start = Clock::now();
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, KvCache::Create(o));
  result.create_seconds = SecondsSince(start);

  std::vector<SeqId> seqs;
  for (int s = 0; s < c.batch; ++s) {
    seqs.push_back(SeqId{1000} + s);
    KVTIER_RETURN_IF_ERROR(cache->AddSequence(seqs.back()));
  }
  const std::vector<Triple> triples = DrawTriples(c);
  Shadows shadows(c, triples);

  start = Clock::now();
  KVTIER_RETURN_IF_ERROR(Prefill(c, *workload, *cache, seqs, stream, shadows, progress));
  KVTIER_RETURN_IF_ERROR(buffers.Synchronize());
  const Stats prefill_stats = cache->GetStats();  // waits for the device
  result.prefill_seconds = SecondsSince(start);
  const LayerStats prefill_total = prefill_stats.Total();
  result.prefill_tokens = prefill_total.prefill_tokens;
  result.prefill_bytes_stored = prefill_total.prefill_bytes_stored;

  const std::vector<int> accuracy_steps = AccuracySteps(c);
  const int total_steps = c.warmup_steps + c.steps;
  const int layers = c.shape.num_layers;
  const int g = c.shape.group_size();
  const int64_t d = c.shape.head_dim;
  const int64_t kv_row = int64_t{c.shape.num_kv_heads} * d;
  bool derived_noted = false;
  for (int step = 0; step < total_steps; ++step) {
    if (step == c.warmup_steps) cache->ResetStats();
    const int timed_step = step - c.warmup_steps;
    const int64_t position = c.context_tokens + step;
    // This step's queries and new K/V, generated off the clock.
    KVTIER_RETURN_IF_ERROR(ParallelFor(layers * c.batch, [&](int i) -> absl::Status {
      const int l = i / c.batch, s = i % c.batch;
      uint16_t* k = buffers.k(l) + s * kv_row;
      uint16_t* v = buffers.v(l) + s * kv_row;
      KVTIER_RETURN_IF_ERROR(
          workload->Query(seqs[s], l, position, buffers.q(l) + s * c.shape.num_query_heads * d));
      KVTIER_RETURN_IF_ERROR(workload->DecodeKv(seqs[s], l, position, k, v));
      shadows.Keep(s, l, position, 1, k, v);
      return absl::OkStatus();
    }));
    KVTIER_RETURN_IF_ERROR(buffers.Stage());

    if (timed_step >= 0) KVTIER_RETURN_IF_ERROR(MarkProfiledRange(buffers.on_device(), true));
    start = Clock::now();
    for (int l = 0; l < layers; ++l) {
      KVTIER_RETURN_IF_ERROR(cache->Decode(l, seqs, buffers.QTensor(l), buffers.KTensor(l),
                                           buffers.VTensor(l), buffers.OutTensor(l), stream));
    }
    KVTIER_RETURN_IF_ERROR(buffers.Synchronize());
    const double ms = SecondsSince(start) * 1e3;
    if (timed_step >= 0) KVTIER_RETURN_IF_ERROR(MarkProfiledRange(buffers.on_device(), false));
    if (timed_step >= 0) result.step_ms.push_back(ms);

    if (timed_step >= 0 &&
        std::binary_search(accuracy_steps.begin(), accuracy_steps.end(), timed_step)) {
      KVTIER_RETURN_IF_ERROR(buffers.FetchOut());
      const int64_t tokens = position + 1;
      for (const Triple& t : triples) {
        const int64_t q_offset =
            (int64_t{t.sequence} * c.shape.num_query_heads + t.kv_head * g) * d;
        SampleInputs in;
        in.seq = seqs[t.sequence];
        in.layer = t.layer;
        in.kv_head = t.kv_head;
        in.tokens = tokens;
        in.q = buffers.q(t.layer) + q_offset;
        in.out = buffers.out(t.layer) + q_offset;
        in.k = shadows.K(t.sequence, t.layer) + t.kv_head * d;
        in.v = shadows.V(t.sequence, t.layer) + t.kv_head * d;
        in.kv_row_stride = kv_row;
        bool derived = false;
        KVTIER_ASSIGN_OR_RETURN(AccuracySample sample, MeasureSample(*cache, o, in, &derived));
        if (derived && !derived_noted) {
          result.notes.push_back(
              "KvCache::Inspect reported no token positions: the accuracy samples take page j "
              "as tokens [j P, (j + 1) P)");
          derived_noted = true;
        }
        sample.step = timed_step;
        sample.sequence = t.sequence;
        result.samples.push_back(sample);
      }
    }
    if (progress) progress("decode", step + 1, total_steps);
  }

  const Stats stats = cache->GetStats();
  result.decode = stats.Total();
  result.decode_bound_ms = stats.DecodeBoundMs();
  result.gpu_bytes_reserved = stats.gpu_bytes_reserved;
  result.host_pages_used = stats.host_pages_used;
  result.host_pages_capacity = stats.host_pages_capacity;
  for (SeqId seq : seqs) KVTIER_RETURN_IF_ERROR(cache->RemoveSequence(seq));
  return result;
}

}  // namespace kvtier::replay
