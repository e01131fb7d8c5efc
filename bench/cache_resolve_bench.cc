// Page-cache resolve, score update, append and write-back, timed with CUDA events (manual
// time, one launch per iteration).
//
// Resolve: batch 32 x 8 KV heads = 256 caches of 512 slots (4x the selection), 128 selected
// pages of 64K per step, selections drifting with ~80% overlap between steps, the cache in
// steady state (warmed by as many steps as it takes to fill). The target is under
// 20 us per step ("target_us"). Reported: us per step, the hit rate of the measured steps,
// and the directory bytes a step touches over that time (a resolve is latency-bound: it is
// far from the HBM rate by design).
//
// Append + write-back: batch 32 x 8 KV heads, D 128, bf16, pages of 16 tokens (4 KiB).
// Append alone; write-back of a fixed 256-entry list with `listed` entries set (256: every
// sequence completes a page in this step, the worst step; 16: a typical step, one sequence
// in 16); both back to back. Write-back reports GB/s next to the pinned device-to-host
// cudaMemcpyAsync rate measured in the same process ("vs_pinned_d2h").
//
//   kvtier_bench_cache_resolve [--benchmark_filter=...] [--benchmark_format=json]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_util.h"
#include "kernels/append.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/status.h"
#include "kernels/cache_resolve.h"
#include "offload/pinned_buffer.h"

namespace kvtier {
namespace {

constexpr int32_t kBatch = 32;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kItems = kBatch * kKvHeads;
constexpr int32_t kSelected = 128;
constexpr int32_t kSlots = 4 * kSelected;
constexpr int32_t kMaxPages = 65536;
constexpr int32_t kSteps = 1024;    // pre-generated selections, replayed cyclically
constexpr int32_t kWarmSteps = 64;  // fills the cache (4x the selection) and then some
constexpr double kKeep = 0.8;

// A CUDA graph of what `enqueue` launches on `stream`, instantiated. Owns both handles.
struct Graph {
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
  }
  absl::Status Launch(cudaStream_t stream) const {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, stream));
    return absl::OkStatus();
  }
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
};

template <typename Enqueue>
absl::Status CaptureGraph(cudaStream_t stream, Graph& g, Enqueue&& enqueue) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  const absl::Status enqueued = enqueue();
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamEndCapture(stream, &g.graph));
  KVTIER_RETURN_IF_ERROR(enqueued);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaGraphInstantiate(&g.exec, g.graph, 0));
  return absl::OkStatus();
}

struct ResolveState {
  DeviceBuffer slot_page, last_use, score, selections, num_selected, selected_slots, miss_pages,
      miss_slots, hit_count, miss_count, mass;
  CudaStream stream;
  CudaEvent start, stop;
  int32_t next_step = 0;
};

absl::StatusOr<std::unique_ptr<ResolveState>> CreateResolveState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<ResolveState>();
  const size_t slot_bytes = sizeof(int32_t) * kItems * kSlots;
  const size_t sel_bytes = sizeof(int32_t) * kItems * kSelected;
  KVTIER_ASSIGN_OR_RETURN(s->slot_page, DeviceBuffer::Allocate(slot_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->last_use, DeviceBuffer::Allocate(slot_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->score, DeviceBuffer::Allocate(slot_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->selections, DeviceBuffer::Allocate(sel_bytes * kSteps));
  KVTIER_ASSIGN_OR_RETURN(s->num_selected, DeviceBuffer::Allocate(sizeof(int32_t) * kItems));
  KVTIER_ASSIGN_OR_RETURN(s->selected_slots, DeviceBuffer::Allocate(sel_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->miss_pages, DeviceBuffer::Allocate(sel_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->miss_slots, DeviceBuffer::Allocate(sel_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->hit_count, DeviceBuffer::Allocate(sizeof(int32_t) * kItems));
  KVTIER_ASSIGN_OR_RETURN(s->miss_count, DeviceBuffer::Allocate(sizeof(int32_t) * kItems));
  KVTIER_ASSIGN_OR_RETURN(s->mass, DeviceBuffer::Allocate(sel_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());

  // Selections: per item 128 distinct pages; each step keeps ~80% and draws the rest near
  // kept pages or anywhere.
  std::mt19937_64 rng(42);
  std::vector<int32_t> all(static_cast<size_t>(kSteps) * kItems * kSelected);
  std::uniform_int_distribution<int32_t> any(0, kMaxPages - 1), near(-4, 4);
  std::bernoulli_distribution kept(kKeep);
  for (int32_t item = 0; item < kItems; ++item) {
    std::vector<int32_t> current;
    for (int32_t step = 0; step < kSteps; ++step) {
      std::set<int32_t> next;
      for (int32_t page : current) {
        if (kept(rng)) next.insert(page);
      }
      const std::vector<int32_t> base(next.begin(), next.end());
      while (static_cast<int32_t>(next.size()) < kSelected) {
        int32_t page = any(rng);
        if (!base.empty() && rng() % 2 == 0) {
          page = std::clamp(base[rng() % base.size()] + near(rng), 0, kMaxPages - 1);
        }
        next.insert(page);
      }
      current.assign(next.begin(), next.end());
      std::copy(current.begin(), current.end(),
                all.begin() + (static_cast<size_t>(step) * kItems + item) * kSelected);
    }
  }
  cudaStream_t stream = s->stream.get();
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      s->selections.data(), all.data(), s->selections.size(), cudaMemcpyHostToDevice, stream));
  std::vector<int32_t> counts(kItems, kSelected);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s->num_selected.data(), counts.data(),
                                              s->num_selected.size(), cudaMemcpyHostToDevice,
                                              stream));
  std::vector<float> mass(static_cast<size_t>(kItems) * kSelected);
  for (float& m : mass) m = std::uniform_real_distribution<float>(0.001f, 1.0f)(rng);
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(s->mass.data(), mass.data(), s->mass.size(), cudaMemcpyHostToDevice, stream));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return s;
}

CacheResolveParams ResolveParams(ResolveState& s, CachePolicy policy, int32_t step) {
  CacheResolveParams p;
  p.directory.slot_page = s.slot_page.as<int32_t>();
  p.directory.slot_last_use = s.last_use.as<int32_t>();
  p.directory.slot_score = s.score.as<float>();
  p.directory.num_items = kItems;
  p.directory.num_slots = kSlots;
  p.directory.max_pages = kMaxPages;
  p.selected_pages =
      s.selections.as<int32_t>() + static_cast<size_t>(step % kSteps) * kItems * kSelected;
  p.num_selected = s.num_selected.as<int32_t>();
  p.max_selected = kSelected;
  p.step = step;
  p.policy = policy;
  p.selected_slots = s.selected_slots.as<int32_t>();
  p.miss_pages = s.miss_pages.as<int32_t>();
  p.miss_slots = s.miss_slots.as<int32_t>();
  p.hit_count = s.hit_count.as<int32_t>();
  p.miss_count = s.miss_count.as<int32_t>();
  return p;
}

CacheScoreUpdateParams ScoreParams(ResolveState& s) {
  CacheScoreUpdateParams u;
  u.slot_score = s.score.as<float>();
  u.selected_slots = s.selected_slots.as<int32_t>();
  u.num_selected = s.num_selected.as<int32_t>();
  u.mass = s.mass.as<float>();
  u.num_items = kItems;
  u.num_slots = kSlots;
  u.max_selected = kSelected;
  u.decay = 0.99f;
  return u;
}

// Empties every cache and runs kWarmSteps untimed steps (resolve + score update).
absl::Status ResetAndWarm(ResolveState& s, CachePolicy policy) {
  cudaStream_t stream = s.stream.get();
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemsetAsync(s.slot_page.data(), 0xFF, s.slot_page.size(), stream));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.last_use.data(), 0, s.last_use.size(), stream));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.score.data(), 0, s.score.size(), stream));
  for (s.next_step = 0; s.next_step < kWarmSteps; ++s.next_step) {
    KVTIER_RETURN_IF_ERROR(LaunchCacheResolve(ResolveParams(s, policy, s.next_step), stream));
    KVTIER_RETURN_IF_ERROR(LaunchCacheScoreUpdate(ScoreParams(s), stream));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return absl::OkStatus();
}

// Sum of hit_count and miss_count over the batch (after the stream is idle).
absl::StatusOr<std::pair<int64_t, int64_t>> Counts(ResolveState& s) {
  std::vector<int32_t> hits(kItems), misses(kItems);
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(hits.data(), s.hit_count.data(), s.hit_count.size(), cudaMemcpyDeviceToHost));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(misses.data(), s.miss_count.data(), s.miss_count.size(), cudaMemcpyDeviceToHost));
  return std::make_pair(std::accumulate(hits.begin(), hits.end(), int64_t{0}),
                        std::accumulate(misses.begin(), misses.end(), int64_t{0}));
}

void BM_CacheResolve(benchmark::State& state) {
  const auto policy = static_cast<CachePolicy>(state.range(0));
  const int64_t launches = state.range(1);
  absl::StatusOr<ResolveState*> resolve = SharedState<CreateResolveState>();
  absl::Status warm = resolve.ok() ? ResetAndWarm(**resolve, policy) : resolve.status();
  if (!warm.ok()) return SkipWithError(state, warm);
  ResolveState& s = **resolve;
  int64_t hits = 0, misses = 0;
  double total_seconds = 0;
  for (auto _ : state) {
    absl::StatusOr<double> seconds =
        TimedSeconds(s.stream.get(), s.start, s.stop, [&]() -> absl::Status {
          for (int64_t k = 0; k < launches; ++k) {
            KVTIER_RETURN_IF_ERROR(
                LaunchCacheResolve(ResolveParams(s, policy, s.next_step++), s.stream.get()));
          }
          return absl::OkStatus();
        });
    if (!seconds.ok()) return SkipWithError(state, seconds.status());
    state.SetIterationTime(*seconds / launches);
    total_seconds += *seconds;
    // Counting and the score update stay outside the timed interval.
    state.PauseTiming();
    absl::StatusOr<std::pair<int64_t, int64_t>> counts = Counts(s);
    absl::Status scored = LaunchCacheScoreUpdate(ScoreParams(s), s.stream.get());
    state.ResumeTiming();
    if (!counts.ok() || !scored.ok()) {
      state.SkipWithError("counting hits or updating scores failed");
      return;
    }
    hits += counts->first;
    misses += counts->second;
  }
  const double steps = static_cast<double>(state.iterations()) * launches;
  state.counters["us_per_step"] = steps > 0 ? total_seconds / steps * 1e6 : 0;
  state.counters["target_us"] = 20;
  // Counted on the last step of each timed interval.
  state.counters["hit_rate"] = hits + misses > 0 ? static_cast<double>(hits) / (hits + misses) : 0;
  state.counters["misses_per_step"] =
      state.iterations() > 0 ? static_cast<double>(misses) / state.iterations() : 0;
  // Directory (slot page, last use, score: read, and written in part) and selection/outputs.
  const double bytes = kItems * (kSlots * 12.0 + kSelected * 4.0 * 4);
  state.counters["GB/s_touched"] = total_seconds > 0 ? bytes * steps / total_seconds * 1e-9 : 0;
  state.SetLabel(CachePolicyName(policy));
}
// launches 1: each step timed alone, so the interval includes the host's launch latency
// (the GPU idles while the launch is issued). launches 16: 16 steps queued back to back,
// the GPU time of a step as in a pipelined or graph-replayed decode loop.
BENCHMARK(BM_CacheResolve)
    ->ArgNames({"policy", "launches"})
    ->Args({static_cast<int>(CachePolicy::kLeastRecentlyUsed), 1})
    ->Args({static_cast<int>(CachePolicy::kLowestScore), 1})
    ->Args({static_cast<int>(CachePolicy::kLastSelection), 1})
    ->Iterations(800)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CacheResolve)
    ->ArgNames({"policy", "launches"})
    ->Args({static_cast<int>(CachePolicy::kLeastRecentlyUsed), 16})
    ->Args({static_cast<int>(CachePolicy::kLowestScore), 16})
    ->Args({static_cast<int>(CachePolicy::kLastSelection), 16})
    ->Iterations(50)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// 256 consecutive steps captured in one CUDA graph and replayed from the same warm cache
// state: the GPU time of a step with no host launch cost in the way.
void BM_CacheResolveGraph(benchmark::State& state) {
  constexpr int32_t kGraphSteps = 256;
  const auto policy = static_cast<CachePolicy>(state.range(0));
  absl::StatusOr<ResolveState*> resolve = SharedState<CreateResolveState>();
  if (!resolve.ok()) return SkipWithError(state, resolve.status());
  ResolveState& s = **resolve;
  Graph graph;
  absl::Status captured = CaptureGraph(s.stream.get(), graph, [&]() -> absl::Status {
    for (int32_t k = 0; k < kGraphSteps; ++k) {
      KVTIER_RETURN_IF_ERROR(
          LaunchCacheResolve(ResolveParams(s, policy, kWarmSteps + k), s.stream.get()));
    }
    return absl::OkStatus();
  });
  if (!captured.ok()) return SkipWithError(state, captured);
  const std::optional<double> timed = TimeIterations(
      state, s.stream.get(), s.start, s.stop, kGraphSteps, [&] { return ResetAndWarm(s, policy); },
      [&] { return graph.Launch(s.stream.get()); });
  if (!timed) return;
  const double total_seconds = *timed;
  absl::StatusOr<std::pair<int64_t, int64_t>> counts = Counts(s);
  if (counts.ok() && counts->first + counts->second > 0) {
    state.counters["hit_rate_last_step"] =
        static_cast<double>(counts->first) / (counts->first + counts->second);
  }
  const double steps = static_cast<double>(state.iterations()) * kGraphSteps;
  state.counters["us_per_step"] = steps > 0 ? total_seconds / steps * 1e6 : 0;
  state.counters["target_us"] = 20;
  state.SetLabel(CachePolicyName(policy));
}
BENCHMARK(BM_CacheResolveGraph)
    ->ArgName("policy")
    ->Arg(static_cast<int>(CachePolicy::kLeastRecentlyUsed))
    ->Arg(static_cast<int>(CachePolicy::kLowestScore))
    ->Arg(static_cast<int>(CachePolicy::kLastSelection))
    ->Iterations(5)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

void BM_CacheScoreUpdate(benchmark::State& state) {
  absl::StatusOr<ResolveState*> resolve = SharedState<CreateResolveState>();
  absl::Status warm =
      resolve.ok() ? ResetAndWarm(**resolve, CachePolicy::kLowestScore) : resolve.status();
  if (!warm.ok()) return SkipWithError(state, warm);
  ResolveState& s = **resolve;
  constexpr int kLaunches = 16;
  TimeIterations(state, s.stream.get(), s.start, s.stop, kLaunches, [&]() -> absl::Status {
    for (int k = 0; k < kLaunches; ++k) {
      KVTIER_RETURN_IF_ERROR(LaunchCacheScoreUpdate(ScoreParams(s), s.stream.get()));
    }
    return absl::OkStatus();
  });
}
BENCHMARK(BM_CacheScoreUpdate)->Iterations(2000)->UseManualTime()->Unit(benchmark::kMicrosecond);

// ---- Append and write-back ------------------------------------------------------------

constexpr int32_t kHeadDim = 128;
constexpr int32_t kPageSize = 16;
constexpr int64_t kPageBytes = int64_t{kPageSize} * kHeadDim * 2;  // bf16: 4 KiB

struct AppendState {
  DeviceBuffer window;  // K and V window page of every (sequence, head)
  DeviceBuffer tokens;  // k_new, v_new: [32, 8, 128] bf16 each
  DeviceBuffer rows;    // [32]
  DeviceBuffer lists;   // k_pages, v_pages; then write-back k_src, v_src, k_dst, v_dst
  DeviceBuffer copy_target;
  PinnedBuffer frames;  // host frames, K and V page each
  CudaStream stream;
  CudaEvent start, stop;
  std::vector<void*> k_dst;  // every entry's K destination (the device list is edited)
  double pinned_d2h_gbps = 0;
};

absl::StatusOr<std::unique_ptr<AppendState>> CreateAppendState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<AppendState>();
  KVTIER_ASSIGN_OR_RETURN(s->window, DeviceBuffer::Allocate(2 * kItems * kPageBytes));
  KVTIER_ASSIGN_OR_RETURN(s->tokens, DeviceBuffer::Allocate(2 * kItems * kHeadDim * 2));
  KVTIER_ASSIGN_OR_RETURN(s->rows, DeviceBuffer::Allocate(kBatch * sizeof(int32_t)));
  KVTIER_ASSIGN_OR_RETURN(s->lists, DeviceBuffer::Allocate(6 * kItems * sizeof(void*)));
  // Frames spread over 256 MiB so successive steps do not write the same host lines.
  constexpr size_t kFrameBytes = 2 * kPageBytes;
  constexpr size_t kArenaBytes = size_t{256} << 20;
  KVTIER_ASSIGN_OR_RETURN(s->frames,
                          PinnedBuffer::Allocate({.bytes = kArenaBytes, .device_id = 0}));
  if (!s->frames.pinned()) return absl::InternalError("the frame arena is not pinned");
  KVTIER_ASSIGN_OR_RETURN(s->copy_target, DeviceBuffer::Allocate(kArenaBytes));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
  cudaStream_t stream = s->stream.get();
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s->window.data(), 0x3C, s->window.size(), stream));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s->tokens.data(), 0x3D, s->tokens.size(), stream));
  std::mt19937_64 rng(7);
  std::vector<int32_t> rows(kBatch);
  for (int32_t& r : rows) r = static_cast<int32_t>(rng() % kPageSize);
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(s->rows.data(), rows.data(), s->rows.size(), cudaMemcpyHostToDevice, stream));
  std::vector<size_t> frame_of(kArenaBytes / kFrameBytes);
  std::iota(frame_of.begin(), frame_of.end(), 0);
  std::shuffle(frame_of.begin(), frame_of.end(), rng);
  std::vector<void*> lists(6 * kItems);
  for (int32_t e = 0; e < kItems; ++e) {
    std::byte* k_page = s->window.data() + (2 * e) * kPageBytes;
    lists[e] = k_page;                            // append k_pages
    lists[kItems + e] = k_page + kPageBytes;      // append v_pages
    lists[2 * kItems + e] = k_page;               // write-back k_src
    lists[3 * kItems + e] = k_page + kPageBytes;  // write-back v_src
    std::byte* frame = s->frames.device_data() + frame_of[e] * kFrameBytes;
    lists[4 * kItems + e] = frame;  // write-back k_dst
    s->k_dst.push_back(frame);
    lists[5 * kItems + e] = frame + kPageBytes;  // write-back v_dst
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s->lists.data(), lists.data(), s->lists.size(),
                                              cudaMemcpyHostToDevice, stream));
  // Reference: pinned device-to-host copy of the whole arena, median of 5.
  KVTIER_ASSIGN_OR_RETURN(s->pinned_d2h_gbps,
                          MeasureCopyGbps(s->frames.data(), s->copy_target.data(), kArenaBytes,
                                          cudaMemcpyDeviceToHost, stream, s->start, s->stop));
  return s;
}

AppendParams MakeAppend(AppendState& s) {
  AppendParams p;
  p.dtype = DType::kBF16;
  p.batch = kBatch;
  p.num_kv_heads = kKvHeads;
  p.head_dim = kHeadDim;
  p.page_size = kPageSize;
  p.k_new = s.tokens.data();
  p.v_new = s.tokens.data() + kItems * kHeadDim * 2;
  p.k_pages = s.lists.as<void*>();
  p.v_pages = s.lists.as<void*>() + kItems;
  p.rows = s.rows.as<int32_t>();
  return p;
}

// A write-back list of kItems entries whose first `listed` entries have a destination.
absl::StatusOr<WriteBackParams> MakeWriteBack(AppendState& s, int32_t listed) {
  void** lists = s.lists.as<void*>();
  std::vector<void*> k_dst(kItems);
  for (int32_t e = 0; e < kItems; ++e) k_dst[e] = e < listed ? s.k_dst[e] : nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(lists + 4 * kItems, k_dst.data(), kItems * sizeof(void*), cudaMemcpyHostToDevice));
  WriteBackParams w;
  w.num_pages = kItems;
  w.page_bytes = kPageBytes;
  w.k_src = lists + 2 * kItems;
  w.v_src = lists + 3 * kItems;
  w.k_dst = lists + 4 * kItems;
  w.v_dst = lists + 5 * kItems;
  return w;
}

// range(0): 0 append only, 1 write-back only, 2 append then write-back; range(1): listed.
void BM_AppendWriteBack(benchmark::State& state) {
  const int64_t what = state.range(0);
  const int32_t listed = static_cast<int32_t>(state.range(1));
  const int64_t launches = state.range(2);
  const bool use_graph = state.range(3) != 0;
  absl::StatusOr<AppendState*> append = SharedState<CreateAppendState>();
  if (!append.ok()) return SkipWithError(state, append.status());
  AppendState& s = **append;
  absl::StatusOr<WriteBackParams> write_back = MakeWriteBack(s, listed);
  if (!write_back.ok()) return SkipWithError(state, write_back.status());
  const AppendParams params = MakeAppend(s);
  auto enqueue = [&]() -> absl::Status {
    for (int64_t k = 0; k < launches; ++k) {
      if (what != 1) KVTIER_RETURN_IF_ERROR(LaunchAppend(params, s.stream.get()));
      if (what != 0) KVTIER_RETURN_IF_ERROR(LaunchWriteBack(*write_back, s.stream.get()));
    }
    return absl::OkStatus();
  };
  Graph graph;
  if (use_graph) {
    absl::Status captured = CaptureGraph(s.stream.get(), graph, enqueue);
    if (!captured.ok()) return SkipWithError(state, captured);
  }
  const std::optional<double> timed =
      TimeIterations(state, s.stream.get(), s.start, s.stop, launches,
                     [&] { return use_graph ? graph.Launch(s.stream.get()) : enqueue(); });
  if (!timed) return;
  const double total_seconds = *timed;
  const double iterations = static_cast<double>(state.iterations()) * launches;
  state.counters["us_per_step"] = iterations > 0 ? total_seconds / iterations * 1e6 : 0;
  if (what != 0) {
    const double bytes = iterations * listed * 2.0 * kPageBytes;
    const double gbps = total_seconds > 0 ? bytes / total_seconds * 1e-9 : 0;
    state.counters["write_back_GB/s"] = gbps;
    state.counters["vs_pinned_d2h"] = gbps / s.pinned_d2h_gbps;
    state.counters["pinned_d2h_GB/s"] = s.pinned_d2h_gbps;
  }
  state.SetLabel(what == 0 ? "append" : what == 1 ? "write-back" : "append+write-back");
}
// Args: what (0 append, 1 write-back, 2 both), listed entries, launches per timed interval,
// graph (0: launched from the host, 1: the launches replayed as one CUDA graph). With one
// host launch per interval the time includes launch latency; 16 in a graph is GPU time.
BENCHMARK(BM_AppendWriteBack)
    ->ArgNames({"what", "listed", "launches", "graph"})
    ->Args({0, 0, 1, 0})
    ->Args({0, 0, 16, 1})
    ->Args({1, 256, 1, 0})
    ->Args({1, 256, 16, 1})
    ->Args({1, 16, 16, 1})
    ->Args({2, 256, 1, 0})
    ->Args({2, 256, 16, 1})
    ->Args({2, 16, 16, 1})
    ->Iterations(2000)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
