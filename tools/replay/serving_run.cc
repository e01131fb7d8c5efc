#include "tools/replay/serving_run.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "runtime/kv_cache.h"
#include "tbb/task_arena.h"
#include "tools/replay/machine_rates.h"
#include "tools/replay/step_buffers.h"
#include "tools/workload/synthetic_kv.h"

namespace kvtier::replay {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

SeqId SequenceOf(int request) { return SeqId{1} + static_cast<SeqId>(request); }

// One prompt piece's K and V for every layer, generated before the iteration's clock starts.
struct PieceKv {
  Iteration::Chunk chunk;
  std::vector<std::vector<uint16_t>> k, v;  // [layer] -> [tokens, Hk, D]
};

// The requests whose accuracy is measured, each with its (layer, KV head), and the host
// copy of that layer's K and V (every KV head) as they are generated.
class SampledRequests {
 public:
  SampledRequests(const Trace& trace, const ModelShape& shape, int count)
      : row_(int64_t{shape.num_kv_heads} * shape.head_dim) {
    std::vector<int> eligible;
    for (size_t i = 0; i < trace.requests.size(); ++i) {
      if (trace.requests[i].output_tokens > 1) eligible.push_back(static_cast<int>(i));
    }
    const int n = std::min<int>(count, static_cast<int>(eligible.size()));
    for (int j = 0; j < n; ++j) {  // spread evenly over the eligible ones
      const int i = eligible[static_cast<size_t>(int64_t{j} * eligible.size() / n)];
      const TraceRequest& r = trace.requests[i];
      Entry e;
      e.layer = i % shape.num_layers;
      e.kv_head = (i / shape.num_layers) % shape.num_kv_heads;
      e.k.resize(static_cast<size_t>((r.input_tokens + r.output_tokens) * row_));
      e.v.resize(e.k.size());
      entries_.emplace(i, std::move(e));
    }
  }
  struct Entry {
    int layer = 0, kv_head = 0;
    std::vector<uint16_t> k, v;  // [tokens, Hk, D]
  };
  Entry* Find(int request) {
    auto it = entries_.find(request);
    return it == entries_.end() ? nullptr : &it->second;
  }
  // Keeps tokens [first, first + count) of `request`'s sampled layer `layer`, if sampled.
  void Keep(int request, int layer, int64_t first, int64_t count, const uint16_t* k,
            const uint16_t* v) {
    Entry* e = Find(request);
    if (e == nullptr || e->layer != layer) return;
    std::copy_n(k, count * row_, e->k.data() + first * row_);
    std::copy_n(v, count * row_, e->v.data() + first * row_);
  }
  int64_t row() const { return row_; }

 private:
  int64_t row_;
  std::map<int, Entry> entries_;
};

// After an iteration's decode: measures each sampled request whose last decode step it was.
absl::Status MeasureLastSteps(const KvCache& cache, const Options& o, const Trace& trace,
                              const Iteration& it, const std::vector<int64_t>& decoded,
                              StepBuffers& buffers, SampledRequests& sampled,
                              ServingResult* result) {
  const ModelShape& shape = o.shape;
  bool fetched = false;
  for (size_t s = 0; s < it.decode.size(); ++s) {
    const int i = it.decode[s];
    SampledRequests::Entry* e = sampled.Find(i);
    const TraceRequest& r = trace.requests[i];
    if (e == nullptr || decoded[i] != r.output_tokens - 1) continue;
    if (!fetched) KVTIER_RETURN_IF_ERROR(buffers.FetchOut());
    fetched = true;
    const int64_t q_offset =
        (int64_t(s) * shape.num_query_heads + int64_t{e->kv_head} * shape.group_size()) *
        shape.head_dim;
    SampleInputs in;
    in.seq = SequenceOf(i);
    in.layer = e->layer;
    in.kv_head = e->kv_head;
    in.tokens = r.input_tokens + decoded[i];
    in.q = buffers.q(e->layer) + q_offset;
    in.out = buffers.out(e->layer) + q_offset;
    in.k = e->k.data() + int64_t{e->kv_head} * shape.head_dim;
    in.v = e->v.data() + int64_t{e->kv_head} * shape.head_dim;
    in.kv_row_stride = sampled.row();
    bool derived = false;
    KVTIER_ASSIGN_OR_RETURN(AccuracySample sample, MeasureSample(cache, o, in, &derived));
    sample.sequence = i;
    sample.step = static_cast<int>(decoded[i] - 1);
    result->samples.push_back(sample);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ServingConfig> MakeServingConfig(const ReplayConfig& replay,
                                                const ServingFlags& flags, const Trace& trace) {
  std::string bad;
  auto check = [&](bool ok, absl::string_view flag, double value, absl::string_view allowed) {
    if (!ok) absl::StrAppend(&bad, bad.empty() ? "" : "; ", "--", flag, "=", value, ": ", allowed);
  };
  check(flags.max_sequences == 0 || flags.max_sequences >= replay.batch, "max_sequences",
        flags.max_sequences,
        absl::StrCat("must be 0 (twice --batch) or >= --batch (", replay.batch, ")"));
  check(flags.prefill_chunk >= replay.page_size, "prefill_chunk",
        static_cast<double>(flags.prefill_chunk),
        absl::StrCat("must be >= --page_size (", replay.page_size, ")"));
  check(flags.max_sequence_tokens >= 0, "max_sequence_tokens",
        static_cast<double>(flags.max_sequence_tokens), "must be >= 0 (0: the longest request)");
  check(flags.host_memory_gib >= 0, "host_memory_gib", flags.host_memory_gib,
        "must be >= 0 (0: room for every admitted request)");
  if (!bad.empty()) return absl::InvalidArgumentError(bad);
  ServingConfig c;
  c.replay = replay;
  c.max_sequences = flags.max_sequences > 0 ? flags.max_sequences : 2 * replay.batch;
  c.prefill_chunk = flags.prefill_chunk;
  c.max_sequence_tokens = flags.max_sequence_tokens;
  if (c.max_sequence_tokens == 0) {
    for (const TraceRequest& r : trace.requests) {
      c.max_sequence_tokens = std::max(c.max_sequence_tokens, r.input_tokens + r.output_tokens);
    }
    c.max_sequence_tokens = std::max<int64_t>(c.max_sequence_tokens, replay.page_size);
  }
  if (flags.host_memory_gib > 0) {
    c.host_memory_bytes = static_cast<int64_t>(flags.host_memory_gib * (int64_t{1} << 30));
  } else {  // the fixed-batch replay's store for max_sequences sequences of the longest size
    ReplayConfig sizing = replay;
    sizing.batch = c.max_sequences;
    sizing.context_tokens = c.max_sequence_tokens;
    sizing.steps = 0;
    sizing.warmup_steps = 0;
    c.host_memory_bytes = HostStoreBytes(sizing);
  }
  return c;
}

absl::StatusOr<Options> MakeServingOptions(const ServingConfig& c) {
  KVTIER_ASSIGN_OR_RETURN(Options o, MakeOptions(c.replay));
  const int p = c.replay.page_size;
  o.max_batch_size = c.replay.batch;
  o.max_sequences = c.max_sequences;
  o.max_sequence_tokens = (c.max_sequence_tokens + p - 1) / p * p;
  o.max_prefill_chunk_tokens = (c.prefill_chunk + p - 1) / p * p;
  o.host_memory_bytes = c.host_memory_bytes;
  if (absl::Status s = ValidateOptions(o); !s.ok()) return s;
  return o;
}

absl::StatusOr<ServingResult> RunServing(const ServingConfig& c, const Trace& trace,
                                         const ProgressFn& progress) {
  const Clock::time_point wall_start = Clock::now();
  ServingResult result;
  KVTIER_ASSIGN_OR_RETURN(result.options, MakeServingOptions(c));
  result.rates_source =
      tools::DescribeRateSources(c.replay.hbm_rate_source, c.replay.pcie_rate_source);
  const Options& o = result.options;
  const ModelShape& shape = c.replay.shape;
  const int layers = shape.num_layers;
  result.device =
      c.replay.backend == Backend::kCuda
          ? absl::StrCat("CUDA device ", c.replay.device_id)
          : absl::StrCat("host (", tbb::this_task_arena::max_concurrency(), " threads)");

  workload::SyntheticOptions wo;
  wo.shape = shape;
  wo.seed = c.replay.seed;
  wo.softmax_scale = o.softmax_scale;
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<workload::SyntheticWorkload> workload,
                          workload::SyntheticWorkload::Create(wo));
  KVTIER_ASSIGN_OR_RETURN(
      StepBuffers buffers,
      StepBuffers::Create(shape, c.replay.batch, c.replay.backend == Backend::kCuda,
                          c.replay.device_id));
  const cudaStream_t stream = buffers.stream();
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, KvCache::Create(o));
  const Stats created = cache->GetStats();
  result.host_pages_capacity = created.host_pages_capacity;
  result.gpu_bytes_reserved = created.gpu_bytes_reserved;

  // The scheduler counts a request's pages once; the store holds a frame per layer and KV
  // head of each.
  result.limits.max_batch = c.replay.batch;
  result.limits.max_sequences = c.max_sequences;
  result.limits.max_sequence_tokens = o.max_sequence_tokens;
  result.limits.store_pages = created.host_pages_capacity / (int64_t{layers} * shape.num_kv_heads);
  result.limits.page_size = c.replay.page_size;
  result.limits.prefill_chunk = c.prefill_chunk;
  KVTIER_ASSIGN_OR_RETURN(ServingScheduler scheduler,
                          ServingScheduler::Create(result.limits, trace.requests));
  SampledRequests sampled(trace, shape, c.replay.accuracy_samples);

  const int64_t kv_row = int64_t{shape.num_kv_heads} * shape.head_dim;
  const int64_t q_row = int64_t{shape.num_query_heads} * shape.head_dim;
  std::vector<int64_t> decoded(trace.requests.size(), 0);  // decode steps run, per request
  std::vector<int> finished;
  std::vector<SeqId> batch;
  while (!scheduler.done()) {
    const Iteration it = scheduler.Next();
    if (it.empty()) break;  // the last requests were rejected on arrival
    for (int i : it.admitted) KVTIER_RETURN_IF_ERROR(cache->AddSequence(SequenceOf(i)));

    // Off the clock: the prompt pieces' K/V and the decode batch's q, k, v.
    std::vector<PieceKv> pieces(it.prefill.size());
    for (size_t j = 0; j < it.prefill.size(); ++j) {
      PieceKv& piece = pieces[j];
      piece.chunk = it.prefill[j];
      piece.k.resize(layers);
      piece.v.resize(layers);
      KVTIER_RETURN_IF_ERROR(ParallelFor(layers, [&](int l) -> absl::Status {
        piece.k[l].resize(static_cast<size_t>(piece.chunk.tokens * kv_row));
        piece.v[l].resize(static_cast<size_t>(piece.chunk.tokens * kv_row));
        KVTIER_RETURN_IF_ERROR(workload->Kv(SequenceOf(piece.chunk.request), l,
                                            piece.chunk.first_token, piece.chunk.tokens,
                                            piece.k[l].data(), piece.v[l].data()));
        sampled.Keep(piece.chunk.request, l, piece.chunk.first_token, piece.chunk.tokens,
                     piece.k[l].data(), piece.v[l].data());
        return absl::OkStatus();
      }));
    }
    const int n = static_cast<int>(it.decode.size());
    batch.clear();
    for (int i : it.decode) batch.push_back(SequenceOf(i));
    if (n > 0) {
      buffers.set_batch(n);
      KVTIER_RETURN_IF_ERROR(ParallelFor(layers * n, [&](int x) -> absl::Status {
        const int l = x / n, s = x % n;
        const int i = it.decode[s];
        const int64_t position = trace.requests[i].input_tokens + decoded[i];
        KVTIER_RETURN_IF_ERROR(workload->Query(batch[s], l, position, buffers.q(l) + s * q_row));
        KVTIER_RETURN_IF_ERROR(workload->DecodeKv(batch[s], l, position, buffers.k(l) + s * kv_row,
                                                  buffers.v(l) + s * kv_row));
        sampled.Keep(i, l, position, 1, buffers.k(l) + s * kv_row, buffers.v(l) + s * kv_row);
        return absl::OkStatus();
      }));
      KVTIER_RETURN_IF_ERROR(buffers.Stage());
    }

    // On the clock: kvtier's calls until the stream has finished them.
    const Clock::time_point start = Clock::now();
    for (const PieceKv& piece : pieces) {
      for (int l = 0; l < layers; ++l) {
        const ConstTensor k =
            MakeConstTensor(piece.k[l].data(), shape.dtype,
                            {piece.chunk.tokens, shape.num_kv_heads, shape.head_dim});
        const ConstTensor v =
            MakeConstTensor(piece.v[l].data(), shape.dtype,
                            {piece.chunk.tokens, shape.num_kv_heads, shape.head_dim});
        KVTIER_RETURN_IF_ERROR(
            cache->Prefill(SequenceOf(piece.chunk.request), l, k, v, ConstTensor{}, stream));
      }
    }
    if (n > 0) {
      for (int l = 0; l < layers; ++l) {
        KVTIER_RETURN_IF_ERROR(cache->Decode(l, batch, buffers.QTensor(l), buffers.KTensor(l),
                                             buffers.VTensor(l), buffers.OutTensor(l), stream));
      }
    }
    KVTIER_RETURN_IF_ERROR(buffers.Synchronize());
    const double seconds = SecondsSince(start);
    result.kvtier_seconds += seconds;
    ++result.iterations;
    for (int i : it.decode) ++decoded[i];
    KVTIER_RETURN_IF_ERROR(
        MeasureLastSteps(*cache, o, trace, it, decoded, buffers, sampled, &result));

    finished.clear();
    scheduler.Complete(it, seconds, &finished);
    for (int i : finished) KVTIER_RETURN_IF_ERROR(cache->RemoveSequence(SequenceOf(i)));
    if (!it.prefill.empty()) {  // the store's use grows with the prompts
      result.peak_host_pages = std::max(result.peak_host_pages, cache->GetStats().host_pages_used);
    }
    if (progress) {
      progress("serve", scheduler.completed() + scheduler.rejected(),
               static_cast<int64_t>(trace.requests.size()));
    }
  }
  const Stats stats = cache->GetStats();
  result.stats = stats.Total();
  result.decode_bound_ms = stats.DecodeBoundMs();
  result.summary = Summarize(scheduler);
  result.times = scheduler.times();
  result.batch_sizes = scheduler.batch_sizes();
  result.iteration_ends = scheduler.iteration_ends();
  if (c.replay.backend == Backend::kHost) {
    result.notes.push_back(
        "host backend: iteration times are the kernels' host twins on the CPU, so tokens/s, "
        "TTFT and TPOT say nothing about a GPU");
  }
  result.wall_seconds = SecondsSince(wall_start);
  return result;
}

}  // namespace kvtier::replay
