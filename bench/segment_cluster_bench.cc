// Segment clustering (LaunchSegmentCluster) for one prefill piece, timed with CUDA events,
// launched directly or replayed from a captured CUDA graph. Keys are random bf16 rows
// [tokens, segments, D] (key_stride = segments * D) with a shared mean offset.
//
// Reports, per launch: us_per_segment; TFLOP/s of the tensor-core similarity matrices
// (assignment: 2 n k D a round; nearest centroids: 2 k^2 D in each repair round; the chain's
// matrix: 2 k^2 D once) and pct_of_dense_peak against the H200's nominal 989 TFLOP/s dense
// fp16 (mma.sync reaches part of what wgmma does; a host-compiled benchmark has no kernel of
// its own to measure the ceiling); s_120k_x256: the time to cluster a 120K-token sequence of
// 32 layers x 8 KV heads (256 heads, ceil(120000 / tokens) segments each) at this
// launch's time a segment. The target: 8 segments x 8192 tokens, D 128, 512
// clusters, 10 iterations in <= 2 ms, so that s_120k_x256 <= 1.
//
//   kvtier_bench_segment_cluster [--benchmark_filter=...] [--benchmark_format=json]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_util.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status.h"
#include "kernels/segment_cluster.h"

namespace kvtier {
namespace {

constexpr int kMaxSegments = 64;
constexpr int kMaxDim = 256;
constexpr double kDenseFp16Peak = 989e12;  // H200 SXM, dense, fp16 in, fp32 accumulate
constexpr size_t kKeyBytes = size_t{kMaxSegments} * kMaxSegmentTokens * kMaxDim * 2;
constexpr size_t kPatternElements = 1048573;  // prime: segments and tokens see different keys

struct DeviceState {
  DeviceBuffer keys;        // kKeyBytes of random bf16
  DeviceBuffer num_tokens;  // [kMaxSegments]
  DeviceBuffer pointers;    // key, order and cluster_of pointers per segment
  DeviceBuffer outputs;     // order and cluster_of, [2, kMaxSegments, kMaxSegmentTokens]
  DeviceBuffer num_clusters;
  DeviceBuffer workspace;
  CudaStream stream;
  CudaEvent start, stop;
};

absl::StatusOr<std::unique_ptr<DeviceState>> CreateDeviceState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<DeviceState>();
  SegmentClusterParams largest;
  largest.head_dim = kMaxDim;
  largest.num_segments = kMaxSegments;
  largest.max_tokens = kMaxSegmentTokens;
  largest.tokens_per_cluster = 16;
  largest.key_stride = kMaxDim;
  KVTIER_ASSIGN_OR_RETURN(s->keys, DeviceBuffer::Allocate(kKeyBytes));
  KVTIER_ASSIGN_OR_RETURN(s->num_tokens, DeviceBuffer::Allocate(kMaxSegments * 4));
  KVTIER_ASSIGN_OR_RETURN(s->pointers, DeviceBuffer::Allocate(3 * kMaxSegments * 8));
  KVTIER_ASSIGN_OR_RETURN(s->outputs,
                          DeviceBuffer::Allocate(size_t{2} * kMaxSegments * kMaxSegmentTokens * 4));
  KVTIER_ASSIGN_OR_RETURN(s->num_clusters, DeviceBuffer::Allocate(kMaxSegments * 4));
  KVTIER_ASSIGN_OR_RETURN(s->workspace,
                          DeviceBuffer::Allocate(SegmentClusterWorkspaceBytes(largest)));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(1.0f, 1.0f);  // mean offset 1 in every channel
  std::vector<uint16_t> pattern(kPatternElements);
  for (auto& x : pattern) x = FloatToBF16(normal(rng));
  const size_t pattern_bytes = pattern.size() * 2;
  for (size_t at = 0; at < kKeyBytes; at += pattern_bytes) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(s->keys.data() + at, pattern.data(),
                                           std::min(pattern_bytes, kKeyBytes - at),
                                           cudaMemcpyHostToDevice));
  }
  return s;
}

// Args: segments, tokens per segment, head_dim, iterations, graph (1: replay a captured graph).
void BM_SegmentCluster(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const int segments = static_cast<int>(state.range(0));
  const int tokens = static_cast<int>(state.range(1));
  const int dim = static_cast<int>(state.range(2));
  const int iterations = static_cast<int>(state.range(3));
  const bool graph = state.range(4) != 0;

  SegmentClusterParams p;
  p.dtype = DType::kBF16;
  p.head_dim = dim;
  p.num_segments = segments;
  p.max_tokens = tokens;
  p.tokens_per_cluster = 16;
  p.iterations = iterations;
  p.center = true;
  p.key_stride = static_cast<int64_t>(segments) * dim;
  const size_t workspace_bytes = SegmentClusterWorkspaceBytes(p);
  if (segments > kMaxSegments || dim > kMaxDim || workspace_bytes == 0 ||
      workspace_bytes > s.workspace.size()) {
    state.SkipWithError("configuration outside the benchmark's buffers");
    return;
  }
  const std::vector<int32_t> num_tokens(kMaxSegments, tokens);
  std::vector<const void*> pointers(3 * kMaxSegments);
  auto* order = s.outputs.as<int32_t>();
  auto* cluster_of = order + size_t{kMaxSegments} * kMaxSegmentTokens;
  for (int i = 0; i < segments; ++i) {
    pointers[i] = s.keys.as<uint16_t>() + static_cast<size_t>(i) * dim;
    pointers[kMaxSegments + i] = order + static_cast<size_t>(i) * kMaxSegmentTokens;
    pointers[2 * kMaxSegments + i] = cluster_of + static_cast<size_t>(i) * kMaxSegmentTokens;
  }
  const absl::Status copied = [&]() -> absl::Status {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(s.num_tokens.data(), num_tokens.data(),
                                           num_tokens.size() * 4, cudaMemcpyHostToDevice));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(s.pointers.data(), pointers.data(), pointers.size() * 8,
                                           cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }();
  if (!copied.ok()) return SkipWithError(state, copied);
  const auto* table = s.pointers.as<void*>();
  p.keys = s.pointers.as<const void*>();
  p.num_tokens = s.num_tokens.as<int32_t>();
  p.order = reinterpret_cast<int32_t* const*>(table + kMaxSegments);
  p.cluster_of = reinterpret_cast<int32_t* const*>(table + 2 * kMaxSegments);
  p.num_clusters = s.num_clusters.as<int32_t>();
  p.workspace = s.workspace.data();
  p.workspace_bytes = s.workspace.size();

  // Warm-up (and the kernels' one-time shared-memory attributes), then the graph if asked.
  absl::Status status = [&]() -> absl::Status {
    KVTIER_RETURN_IF_ERROR(LaunchSegmentCluster(p, s.stream.get()));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream.get()));
    return absl::OkStatus();
  }();
  if (!status.ok()) return SkipWithError(state, status);
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    status = [&]() -> absl::Status {
      cudaGraph_t captured = nullptr;
      KVTIER_CUDA_RETURN_IF_ERROR(
          cudaStreamBeginCapture(s.stream.get(), cudaStreamCaptureModeThreadLocal));
      const absl::Status launched = LaunchSegmentCluster(p, s.stream.get());
      KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamEndCapture(s.stream.get(), &captured));
      KVTIER_RETURN_IF_ERROR(launched);
      const cudaError_t made = cudaGraphInstantiate(&exec, captured, 0);
      cudaGraphDestroy(captured);
      KVTIER_CUDA_RETURN_IF_ERROR(made);
      return absl::OkStatus();
    }();
    if (!status.ok()) return SkipWithError(state, status);
  }
  const std::optional<double> total_seconds = TimeIterations(
      state, s.stream.get(), s.start, s.stop, /*per_interval=*/1, [&]() -> absl::Status {
        if (!graph) return LaunchSegmentCluster(p, s.stream.get());
        KVTIER_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, s.stream.get()));
        return absl::OkStatus();
      });
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (!total_seconds) return;

  const double mean_s = *total_seconds / std::max<int64_t>(1, state.iterations());
  const double k = internal::ClusterCount(tokens, p.tokens_per_cluster);
  const double repairs = std::max(0, iterations - 2);
  const double flops =
      segments * (2.0 * tokens * k * dim * iterations + 2.0 * k * k * dim * (repairs + 1));
  const double per_segment_s = mean_s / segments;
  const double segments_120k = std::ceil(120000.0 / tokens) * 256;
  state.counters["us_per_segment"] = per_segment_s * 1e6;
  state.counters["TFLOP/s"] = flops / mean_s * 1e-12;
  state.counters["pct_of_dense_peak"] = 100.0 * flops / mean_s / kDenseFp16Peak;
  state.counters["s_120k_x256"] = per_segment_s * segments_120k;
  state.counters["clusters"] = k;
}

BENCHMARK(BM_SegmentCluster)
    ->ArgNames({"segments", "tokens", "D", "iters", "graph"})
    // The target: one prefill piece of 8 KV heads x 8192 tokens, D 128, 10 rounds.
    ->Args({8, 8192, 128, 10, 0})
    ->Args({8, 8192, 128, 10, 1})
    // One round: the fixed cost (unit keys, seeds, chain, output) plus one assignment.
    ->Args({8, 8192, 128, 1, 1})
    // Larger batches (a piece of 4 or 8 layers at once), other head sizes, short segments.
    ->Args({32, 8192, 128, 10, 1})
    ->Args({64, 8192, 128, 10, 1})
    ->Args({8, 8192, 64, 10, 1})
    ->Args({8, 8192, 256, 10, 1})
    ->Args({8, 2048, 128, 10, 1})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
