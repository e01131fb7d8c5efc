// The estimation zone (LaunchEstimation) for a whole batch at the wave index's shapes, timed
// with CUDA events. Reports the time, the summary bytes a call reads (per estimated centroid:
// its mean value, count and spread, and either its G logits, as the wave index passes them, or
// its mean key) and "vs_read": the time divided by the time to read those bytes once from HBM
// at the device-to-device copy rate measured in the same process.
//
//   kvtier_bench_estimation [--benchmark_filter=...] [--benchmark_format=json]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_util.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status.h"
#include "kernels/estimation.h"

namespace kvtier {
namespace {

constexpr int kMaxItems = 192;
constexpr int kMaxClusters = 7680;
constexpr int kParts = 2;
constexpr int kHeadDim = 128;
constexpr int kGroup = 4;
constexpr int kMaxList = 4096;
constexpr int kMaxExclude = 256;
constexpr size_t kCentroids = size_t{kMaxItems} * kMaxClusters * kParts;

// Every item's arrays at its fixed offset in shared pools sized for the largest shape.
struct DeviceState {
  DeviceBuffer keys, means, counts, spreads, logits, q;
  DeviceBuffer ids, list_count, exclude, exclude_count;
  DeviceBuffer pointers;  // key, mean value, count, spread pointers per item
  DeviceBuffer out, lse, workspace;
  DeviceBuffer copy_src, copy_dst;
  CudaStream stream;
  CudaEvent start, stop;
  double hbm_copy_gbps = 0;
};

template <typename T>
absl::Status UploadTo(DeviceBuffer& buffer, const std::vector<T>& host) {
  KVTIER_ASSIGN_OR_RETURN(buffer, DeviceBuffer::Allocate(host.size() * sizeof(T)));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(buffer.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceState>> CreateDeviceState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<DeviceState>();
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  // Summaries: a 64K-centroid pattern repeated (random mean keys and mean values).
  constexpr size_t kPattern = size_t{1} << 16;
  std::vector<uint16_t> key_pattern(kPattern * kHeadDim), mean_pattern(kPattern * kHeadDim);
  for (auto& x : key_pattern) x = FloatToBF16(0.3f * normal(rng));
  for (auto& x : mean_pattern) x = FloatToBF16(normal(rng));
  std::vector<uint16_t> keys(kCentroids * kHeadDim), means(kCentroids * kHeadDim);
  for (size_t c = 0; c < kCentroids; c += kPattern) {
    const size_t n = std::min(kPattern, kCentroids - c);
    std::copy_n(key_pattern.begin(), n * kHeadDim, keys.begin() + c * kHeadDim);
    std::copy_n(mean_pattern.begin(), n * kHeadDim, means.begin() + c * kHeadDim);
  }
  KVTIER_RETURN_IF_ERROR(UploadTo(s->keys, keys));
  KVTIER_RETURN_IF_ERROR(UploadTo(s->means, means));
  KVTIER_RETURN_IF_ERROR(UploadTo(s->counts, std::vector<int32_t>(kCentroids, 8)));
  std::vector<float> spreads(kCentroids);
  for (auto& x : spreads) x = 0.05f + 0.05f * std::abs(normal(rng));
  KVTIER_RETURN_IF_ERROR(UploadTo(s->spreads, spreads));
  std::vector<float> logits(kCentroids * kGroup);
  for (auto& x : logits) x = 2.0f * normal(rng);
  KVTIER_RETURN_IF_ERROR(UploadTo(s->logits, logits));
  std::vector<uint16_t> q(size_t{kMaxItems} * kGroup * kHeadDim);
  for (auto& x : q) x = FloatToBF16(normal(rng));
  KVTIER_RETURN_IF_ERROR(UploadTo(s->q, q));
  std::vector<const void*> pointers(4 * kMaxItems);
  const size_t item_centroids = size_t{kMaxClusters} * kParts;
  for (int i = 0; i < kMaxItems; ++i) {
    pointers[i] = s->keys.as<uint16_t>() + i * item_centroids * kHeadDim;
    pointers[kMaxItems + i] = s->means.as<uint16_t>() + i * item_centroids * kHeadDim;
    pointers[2 * kMaxItems + i] = s->counts.as<int32_t>() + i * item_centroids;
    pointers[3 * kMaxItems + i] = s->spreads.as<float>() + i * item_centroids;
  }
  KVTIER_RETURN_IF_ERROR(UploadTo(s->pointers, pointers));
  KVTIER_ASSIGN_OR_RETURN(s->out,
                          DeviceBuffer::Allocate(size_t{kMaxItems} * kGroup * kHeadDim * 4));
  KVTIER_ASSIGN_OR_RETURN(s->lse, DeviceBuffer::Allocate(size_t{kMaxItems} * kGroup * 4));
  KVTIER_ASSIGN_OR_RETURN(
      s->workspace, DeviceBuffer::Allocate(EstimationWorkspaceBytes(kMaxItems, kGroup, kHeadDim)));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
  constexpr size_t kCopyBytes = size_t{1} << 30;
  KVTIER_ASSIGN_OR_RETURN(s->copy_src, DeviceBuffer::Allocate(kCopyBytes));
  KVTIER_ASSIGN_OR_RETURN(s->copy_dst, DeviceBuffer::Allocate(kCopyBytes));
  KVTIER_ASSIGN_OR_RETURN(s->hbm_copy_gbps,
                          MeasureHbmCopyGbps(s->copy_dst.data(), s->copy_src.data(), kCopyBytes,
                                             s->stream.get(), s->start, s->stop));
  return s;
}

// Args: items, clusters per item, zone list length (ascending random ids), excluded (the
// list's entries excluded, as the retrieved top k are), logits (1: the wave index's
// precomputed logits; 0: the mean keys).
void BM_Estimation(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const int items = static_cast<int>(state.range(0));
  const int clusters = static_cast<int>(state.range(1));
  const int listed = static_cast<int>(state.range(2));
  const int excluded = static_cast<int>(state.range(3));
  const bool logits = state.range(4) != 0;
  if (items > kMaxItems || clusters > kMaxClusters || listed > std::min(kMaxList, clusters) ||
      excluded > std::min(kMaxExclude, listed)) {
    state.SkipWithError("configuration larger than the benchmark's buffers");
    return;
  }
  // Each item's zone: `listed` distinct ids ascending; its exclusion: every listed/excluded-th.
  std::mt19937 rng(static_cast<uint32_t>(items * 7 + listed));
  std::vector<int32_t> ids(static_cast<size_t>(items) * listed),
      exclude(static_cast<size_t>(items) * std::max(excluded, 1));
  std::vector<int32_t> all(clusters);
  std::iota(all.begin(), all.end(), 0);
  for (int i = 0; i < items; ++i) {
    std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + listed);
    std::copy_n(all.begin(), listed, ids.begin() + static_cast<size_t>(i) * listed);
    for (int e = 0; e < excluded; ++e) {
      exclude[static_cast<size_t>(i) * excluded + e] =
          all[static_cast<size_t>(e) * listed / excluded];
    }
  }
  absl::Status uploaded = UploadTo(s.ids, ids);
  if (uploaded.ok()) uploaded = UploadTo(s.list_count, std::vector<int32_t>(items, listed));
  if (uploaded.ok()) uploaded = UploadTo(s.exclude, exclude);
  if (uploaded.ok()) uploaded = UploadTo(s.exclude_count, std::vector<int32_t>(items, excluded));
  if (!uploaded.ok()) return SkipWithError(state, uploaded);

  EstimationParams p;
  p.dtype = DType::kBF16;
  p.head_dim = kHeadDim;
  p.group_size = kGroup;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  p.num_items = items;
  p.centroid_parts = kParts;
  p.q = s.q.data();
  p.cluster_ids = s.ids.as<int32_t>();
  p.list_count = s.list_count.as<int32_t>();
  p.list_stride = listed;
  if (excluded > 0) {
    p.exclude_ids = s.exclude.as<int32_t>();
    p.exclude_count = s.exclude_count.as<int32_t>();
    p.exclude_stride = excluded;
  }
  const void* const* pointers = s.pointers.as<const void*>();
  if (logits) {
    p.logits = s.logits.as<float>();
    p.logit_stride = int64_t{kMaxClusters} * kParts;
  } else {
    p.key_mean = pointers;
  }
  p.value_mean = pointers + kMaxItems;
  p.count = reinterpret_cast<const int32_t* const*>(pointers + 2 * kMaxItems);
  p.key_spread = reinterpret_cast<const float* const*>(pointers + 3 * kMaxItems);
  p.out = s.out.as<float>();
  p.lse = s.lse.as<float>();
  p.workspace = s.workspace.data();
  p.workspace_bytes = s.workspace.size();

  const std::optional<double> total_seconds =
      TimeIterations(state, s.stream.get(), s.start, s.stop, /*per_interval=*/1,
                     [&] { return LaunchEstimation(p, s.stream.get()); });
  if (!total_seconds) return;
  const double mean_s = *total_seconds / std::max<int64_t>(1, state.iterations());
  const double per_centroid = kHeadDim * 2.0 + 4 + 4 + (logits ? kGroup * 4.0 : kHeadDim * 2.0);
  const double bytes = double{1} * items * (listed - excluded) * kParts * per_centroid;
  const double read_s = bytes / (s.hbm_copy_gbps * 1e9);
  state.counters["summary_MB"] = bytes * 1e-6;
  state.counters["GB/s"] = bytes / mean_s * 1e-9;
  state.counters["hbm_copy_GB/s"] = s.hbm_copy_gbps;
  state.counters["read_us"] = read_s * 1e6;
  state.counters["vs_read"] = mean_s / read_s;
}

BENCHMARK(BM_Estimation)
    ->ArgNames({"items", "clusters", "listed", "excluded", "logits"})
    // kvtier-replay's defaults at 32K x 24 and 120K x 6 (8 KV heads a sequence): a zone of
    // budget 64 + half of the candidates, the 64 retrieved excluded.
    ->Args({192, 1980, 1054, 64, 1})
    ->Args({192, 1980, 1054, 64, 0})
    ->Args({48, 7612, 3870, 64, 1})
    ->Args({48, 7612, 3870, 64, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
