// Block scoring plus selection (LaunchBlockSelect) for a whole batch, timed with CUDA events.
// Reports the time, the summary bytes read per call and "vs_read": the time divided by the
// time to read those summaries once from HBM at the device-to-device copy rate measured in the
// same process (bytes read + bytes written per second of a 1 GiB cudaMemcpyAsync). The issue's
// target: page bounds, batch 32 x 8 KV heads x 8K blocks, D 128, G 4, bf16: vs_read <= 1.5.
//
//   kvtier_bench_block_select [--benchmark_filter=...] [--benchmark_format=json]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_util.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/dtype.h"
#include "kernels/base/status.h"
#include "kernels/block_select.h"

namespace kvtier {
namespace {

constexpr size_t kPoolBytes = size_t{1} << 30;  // the largest configuration's summaries
constexpr size_t kPatternBytes = size_t{16} << 20;
constexpr int kMaxItems = 256;
constexpr int kHeadDim = 128;
constexpr int kGroup = 4;

struct DeviceState {
  DeviceBuffer pool;      // summaries: bounds or key_mean rows, random bf16
  DeviceBuffer copy_dst;  // destination of the HBM reference copy
  DeviceBuffer counts;    // 16 tokens per block
  DeviceBuffer q;         // [kMaxItems, G, D] bf16
  DeviceBuffer ranges;    // block_begin then block_end, [2, kMaxItems]
  DeviceBuffer pointers;  // summary and count pointers per item
  DeviceBuffer selected;  // [kMaxItems, kMaxSelectK]
  DeviceBuffer num_selected;
  DeviceBuffer zone;  // [kMaxItems, kMaxSelectK], then its counts
  DeviceBuffer logits;
  DeviceBuffer workspace;
  CudaStream stream;
  CudaEvent start, stop;
  double hbm_copy_gbps = 0;  // (read + written) bytes per second, median (MeasureHbmCopyGbps)
};

absl::StatusOr<std::unique_ptr<DeviceState>> CreateDeviceState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<DeviceState>();
  KVTIER_ASSIGN_OR_RETURN(s->pool, DeviceBuffer::Allocate(kPoolBytes));
  KVTIER_ASSIGN_OR_RETURN(s->copy_dst, DeviceBuffer::Allocate(kPoolBytes));
  KVTIER_ASSIGN_OR_RETURN(s->counts, DeviceBuffer::Allocate(size_t{kMaxItems} * 65536 * 4));
  KVTIER_ASSIGN_OR_RETURN(s->q, DeviceBuffer::Allocate(size_t{kMaxItems} * kGroup * kHeadDim * 2));
  KVTIER_ASSIGN_OR_RETURN(s->ranges, DeviceBuffer::Allocate(2 * kMaxItems * 4));
  KVTIER_ASSIGN_OR_RETURN(s->pointers, DeviceBuffer::Allocate(2 * kMaxItems * 8));
  KVTIER_ASSIGN_OR_RETURN(s->selected, DeviceBuffer::Allocate(size_t{kMaxItems} * kMaxSelectK * 4));
  KVTIER_ASSIGN_OR_RETURN(s->num_selected, DeviceBuffer::Allocate(kMaxItems * 4));
  KVTIER_ASSIGN_OR_RETURN(s->zone,
                          DeviceBuffer::Allocate(size_t{kMaxItems} * (kMaxSelectK + 1) * 4));
  KVTIER_ASSIGN_OR_RETURN(s->logits, DeviceBuffer::Allocate(size_t{64} << 20));
  KVTIER_ASSIGN_OR_RETURN(s->workspace, DeviceBuffer::Allocate(size_t{64} << 20));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());

  // Random summaries: bounds rows max = c + w, min = c - w per channel (as key_mean rows the
  // same numbers are just random keys); a 16 MiB pattern repeated over the pool.
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> pattern(kPatternBytes / 2);
  for (size_t b = 0; b < pattern.size(); b += 2 * kHeadDim) {
    for (int d = 0; d < kHeadDim; ++d) {
      const float c = 0.3f * normal(rng), w = 0.3f + 0.2f * std::abs(normal(rng));
      pattern[b + d] = FloatToBF16(c + w);
      pattern[b + kHeadDim + d] = FloatToBF16(c - w);
    }
  }
  for (size_t at = 0; at < kPoolBytes; at += kPatternBytes) {
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(s->pool.data() + at, pattern.data(), kPatternBytes, cudaMemcpyHostToDevice));
  }
  const std::vector<int32_t> counts(s->counts.size() / 4, 16);
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s->counts.data(), counts.data(), s->counts.size(), cudaMemcpyHostToDevice));
  std::vector<uint16_t> q(s->q.size() / 2);
  for (auto& x : q) x = FloatToBF16(0.1f + normal(rng));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s->q.data(), q.data(), s->q.size(), cudaMemcpyHostToDevice));

  KVTIER_ASSIGN_OR_RETURN(s->hbm_copy_gbps,
                          MeasureHbmCopyGbps(s->copy_dst.data(), s->pool.data(), kPoolBytes,
                                             s->stream.get(), s->start, s->stop));
  return s;
}

// Args: kind (0 page bounds, 1 centroid, 2 two-part centroids), items, blocks per item, k,
// mass target in percent (0: top k), zone_k (0: none; with centroids the logits are kept, as
// the wave index keeps them for its estimation).
void BM_BlockSelect(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const auto kind = state.range(0) == 0 ? BlockScoreKind::kPageBounds : BlockScoreKind::kCentroid;
  const int parts = state.range(0) == 2 ? 2 : 1;
  const int items = static_cast<int>(state.range(1));
  const int blocks = static_cast<int>(state.range(2));
  const size_t block_bytes =
      kind == BlockScoreKind::kPageBounds ? 2 * kHeadDim * 2 : parts * kHeadDim * 2;
  const size_t item_bytes = block_bytes * blocks;
  const double summary_bytes =
      static_cast<double>(items) * blocks *
      (block_bytes + (kind == BlockScoreKind::kCentroid ? parts * sizeof(int32_t) : 0));

  BlockSelectParams p;
  p.kind = kind;
  p.mode = state.range(4) > 0 ? BlockSelectMode::kMassTarget : BlockSelectMode::kTopK;
  p.dtype = DType::kBF16;
  p.head_dim = kHeadDim;
  p.group_size = kGroup;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  p.num_items = items;
  p.max_blocks = blocks;
  p.k = static_cast<int>(state.range(3));
  p.mass_target = static_cast<float>(state.range(4)) / 100.0f;
  p.centroid_parts = parts;
  p.zone_k = static_cast<int>(state.range(5));
  if (p.zone_k > 0) {
    p.zone_selected = s.zone.as<int32_t>();
    p.zone_count = s.zone.as<int32_t>() + size_t{kMaxItems} * kMaxSelectK;
    if (kind == BlockScoreKind::kCentroid) p.logits = s.logits.as<float>();
  }
  const size_t logit_bytes =
      p.logits != nullptr ? sizeof(float) * items * kGroup * parts * size_t(blocks) : 0;
  if (item_bytes * items > kPoolBytes || BlockSelectWorkspaceBytes(p) > s.workspace.size() ||
      logit_bytes > s.logits.size() ||
      static_cast<size_t>(blocks) * parts * items * 4 > s.counts.size()) {
    state.SkipWithError("configuration larger than the benchmark's buffers");
    return;
  }
  std::vector<int32_t> ranges(2 * kMaxItems, 0);
  std::vector<const void*> pointers(2 * kMaxItems);
  for (int i = 0; i < items; ++i) {
    ranges[kMaxItems + i] = blocks;
    pointers[i] = s.pool.data() + i * item_bytes;
    pointers[kMaxItems + i] = s.counts.as<int32_t>() + static_cast<size_t>(i) * blocks * parts;
  }
  absl::Status status = [&]() -> absl::Status {
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(s.ranges.data(), ranges.data(), s.ranges.size(), cudaMemcpyHostToDevice));
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(s.pointers.data(), pointers.data(), s.pointers.size(), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }();
  if (!status.ok()) return SkipWithError(state, status);
  p.q = s.q.data();
  p.block_begin = s.ranges.as<int32_t>();
  p.block_end = s.ranges.as<int32_t>() + kMaxItems;
  p.bounds = s.pointers.as<const void*>();
  p.key_mean = s.pointers.as<const void*>();
  p.count = reinterpret_cast<const int32_t* const*>(s.pointers.as<const void*>() + kMaxItems);
  p.selected = s.selected.as<int32_t>();
  p.num_selected = s.num_selected.as<int32_t>();
  p.workspace = s.workspace.data();
  p.workspace_bytes = s.workspace.size();

  const std::optional<double> total_seconds =
      TimeIterations(state, s.stream.get(), s.start, s.stop, /*per_interval=*/1,
                     [&] { return LaunchBlockSelect(p, s.stream.get()); });
  if (!total_seconds) return;
  const double mean_s = *total_seconds / std::max<int64_t>(1, state.iterations());
  const double read_s = summary_bytes / (s.hbm_copy_gbps * 1e9);
  state.counters["summary_MB"] = summary_bytes * 1e-6;
  state.counters["GB/s"] = summary_bytes / mean_s * 1e-9;
  state.counters["hbm_copy_GB/s"] = s.hbm_copy_gbps;
  state.counters["read_us"] = read_s * 1e6;
  state.counters["vs_read"] = mean_s / read_s;
}

BENCHMARK(BM_BlockSelect)
    ->ArgNames({"centroid", "items", "blocks", "k", "mass_pct", "zone"})
    // The target shape: batch 32 x 8 KV heads x 8K page bounds, D 128, G 4, bf16.
    ->Args({0, 256, 8192, 128, 0, 0})
    ->Args({0, 256, 8192, 1024, 0, 0})
    // Centroids of the same shape, top k and a mass target.
    ->Args({1, 256, 8192, 1024, 0, 0})
    ->Args({1, 256, 8192, 4096, 90, 0})
    // The largest items: batch 1 x 8 KV heads x 64K blocks, k 4096; and a small batch.
    ->Args({0, 8, 65536, 4096, 0, 0})
    ->Args({0, 8, 8192, 128, 0, 0})
    // kvtier-replay's defaults (budget 64, sink 64 + window 1024, 16-token pages): page bounds
    // and the wave index (two-part centroids, a zone of half the candidates) at 32K x 24 and
    // 120K x 6, 8 KV heads a sequence.
    ->Args({0, 192, 1980, 64, 0, 0})
    ->Args({2, 192, 1980, 64, 0, 0})
    ->Args({2, 192, 1980, 64, 0, 1054})
    ->Args({0, 48, 7612, 64, 0, 0})
    ->Args({2, 48, 7612, 64, 0, 3870})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
