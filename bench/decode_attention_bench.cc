// Paged decode attention (LaunchPagedDecodeAttention) at the Llama-3-8B attention shape:
// 8 KV heads, G = 4, D = 128, bf16, page 16, every page resident in HBM; batch 32 x 32K and
// batch 8 x 128K tokens, with each item's pages contiguous in the pool or scattered over it at
// random. Timed with CUDA events. Reports the K/V bytes read per second ("TB/s") and their
// ratio to the device-to-device copy rate (bytes read + written) measured in the same process
// ("vs_hbm_copy"): decode attention reads every K/V byte once, so the copy rate is its
// ceiling. bench/sdpa_baseline.py measures PyTorch's SDPA on the same shapes.
// BM_PagedDecodeAttentionChunkLse runs the same shapes with the per-chunk log-sum-exps
// (PagedDecodeParams::chunk_lse) written as well, for the cost of that option.
//
//   kvtier_bench_decode_attention [--benchmark_filter=...] [--benchmark_format=json]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
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
#include "kernels/decode_attention.h"

namespace kvtier {
namespace {

constexpr int kKvHeads = 8;
constexpr int kGroup = 4;
constexpr int kHeadDim = 128;
constexpr int kPageSize = 16;
constexpr int64_t kPageBytes = int64_t{kPageSize} * kHeadDim * 2;
// Both shapes hold 8M tokens of K (and of V): 32 x 8 x 32K = 8 x 8 x 128K.
constexpr int64_t kPoolPages = int64_t{32} * kKvHeads * 32768 / kPageSize;
constexpr size_t kCopyBytes = size_t{1} << 30;
constexpr int kMaxItems = 64 * kKvHeads;  // the largest batch benchmarked, 64 sequences
constexpr int kMaxSplits = 64;

struct DeviceState {
  CudaStream stream;
  CudaEvent start, stop;
  DeviceBuffer k_pool, v_pool;    // kPoolPages pages each
  DeviceBuffer k_pages, v_pages;  // room for kPoolPages pointers each
  DeviceBuffer page_offsets, last_page_tokens, q, out, lse, workspace;
  DeviceBuffer chunk_lse;  // [kPoolPages * (kPageSize / 16), kGroup]
  size_t workspace_bytes = 0;
  DeviceBuffer copy_src, copy_dst;
  double hbm_copy_gbps = 0;  // median of 5 1 GiB copies, read + written (MeasureHbmCopyGbps)
};

absl::Status CopyOnce(DeviceState& s) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.copy_dst.data(), s.copy_src.data(), kCopyBytes,
                                              cudaMemcpyDeviceToDevice, s.stream.get()));
  return absl::OkStatus();
}

// Random bf16 values (normal, mean 0.2) in a 64 MiB host block, copied over the whole pool.
absl::Status FillRandom(DeviceBuffer& pool, uint64_t seed) {
  constexpr size_t kBlock = size_t{64} << 20;
  std::vector<uint16_t> block(kBlock / 2);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.2f, 1.0f);
  for (auto& e : block) e = FloatToBF16(normal(rng));
  for (size_t offset = 0; offset < pool.size(); offset += kBlock) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(pool.data() + offset, block.data(),
                                           std::min(kBlock, pool.size() - offset),
                                           cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceState>> CreateDeviceState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<DeviceState>();
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->k_pool, DeviceBuffer::Allocate(kPoolPages * kPageBytes));
  KVTIER_ASSIGN_OR_RETURN(s->v_pool, DeviceBuffer::Allocate(kPoolPages * kPageBytes));
  KVTIER_RETURN_IF_ERROR(FillRandom(s->k_pool, 1));
  KVTIER_RETURN_IF_ERROR(FillRandom(s->v_pool, 2));
  KVTIER_ASSIGN_OR_RETURN(s->k_pages, DeviceBuffer::Allocate(kPoolPages * sizeof(void*)));
  KVTIER_ASSIGN_OR_RETURN(s->v_pages, DeviceBuffer::Allocate(kPoolPages * sizeof(void*)));
  KVTIER_ASSIGN_OR_RETURN(s->page_offsets, DeviceBuffer::Allocate((kMaxItems + 1) * 4));
  KVTIER_ASSIGN_OR_RETURN(s->last_page_tokens, DeviceBuffer::Allocate(kMaxItems * 4));
  std::vector<uint16_t> q(kMaxItems * kGroup * kHeadDim);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.3f, 1.0f);
  for (auto& e : q) e = FloatToBF16(normal(rng));
  KVTIER_ASSIGN_OR_RETURN(s->q, DeviceBuffer::Allocate(q.size() * 2));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s->q.data(), q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  KVTIER_ASSIGN_OR_RETURN(s->out, DeviceBuffer::Allocate(q.size() * 2));
  KVTIER_ASSIGN_OR_RETURN(s->lse, DeviceBuffer::Allocate(kMaxItems * kGroup * 4));
  KVTIER_ASSIGN_OR_RETURN(s->chunk_lse,
                          DeviceBuffer::Allocate(kPoolPages * (kPageSize / 16) * kGroup * 4));
  s->workspace_bytes = PagedDecodeWorkspaceBytes(kMaxItems, kGroup, kHeadDim, kMaxSplits);
  KVTIER_ASSIGN_OR_RETURN(s->workspace, DeviceBuffer::Allocate(s->workspace_bytes));

  KVTIER_ASSIGN_OR_RETURN(s->copy_src, DeviceBuffer::Allocate(kCopyBytes));
  KVTIER_ASSIGN_OR_RETURN(s->copy_dst, DeviceBuffer::Allocate(kCopyBytes));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemset(s->copy_src.data(), 0x3C, kCopyBytes));
  KVTIER_ASSIGN_OR_RETURN(s->hbm_copy_gbps,
                          MeasureHbmCopyGbps(s->copy_dst.data(), s->copy_src.data(), kCopyBytes,
                                             s->stream.get(), s->start, s->stop));
  return s;
}

// Page tables for `items` items of `pages_per_item` full pages: item i's page j is pool page
// i * pages_per_item + j (contiguous), or that entry of a random permutation of the pool
// (scattered; K and V permuted independently).
absl::Status UploadPageTables(DeviceState& s, int items, int64_t pages_per_item, bool scattered) {
  const int64_t total = items * pages_per_item;
  std::vector<int64_t> k_order(kPoolPages), v_order(kPoolPages);
  std::iota(k_order.begin(), k_order.end(), 0);
  std::iota(v_order.begin(), v_order.end(), 0);
  if (scattered) {
    std::mt19937_64 rng(17);
    std::shuffle(k_order.begin(), k_order.end(), rng);
    std::shuffle(v_order.begin(), v_order.end(), rng);
  }
  std::vector<const void*> k(total), v(total);
  for (int64_t j = 0; j < total; ++j) {
    k[j] = s.k_pool.data() + k_order[j] * kPageBytes;
    v[j] = s.v_pool.data() + v_order[j] * kPageBytes;
  }
  std::vector<int32_t> offsets(items + 1), last(items, kPageSize);
  for (int i = 0; i <= items; ++i) offsets[i] = static_cast<int32_t>(i * pages_per_item);
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s.k_pages.data(), k.data(), total * sizeof(void*), cudaMemcpyHostToDevice));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s.v_pages.data(), v.data(), total * sizeof(void*), cudaMemcpyHostToDevice));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpy(s.page_offsets.data(), offsets.data(), offsets.size() * 4,
                                         cudaMemcpyHostToDevice));
  KVTIER_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(s.last_page_tokens.data(), last.data(), last.size() * 4, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

// Args: batch (sequences), context (tokens per sequence), scattered pages (0/1), splits (0:
// as ChoosePagedDecodeSplits says), launches between the two events of one timed iteration
// (1: the time of one call, host launch overhead included, as a decode step sees it when the
// stream is idle; more: back-to-back launches, the kernels' own rate).
void RunPagedDecodeAttention(benchmark::State& state, bool with_chunk_lse) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const int batch = static_cast<int>(state.range(0));
  const int64_t context = state.range(1);
  const bool scattered = state.range(2) != 0;
  const int forced_splits = static_cast<int>(state.range(3));
  const int launches = static_cast<int>(state.range(4));
  const int items = batch * kKvHeads;
  const int64_t pages_per_item = context / kPageSize;
  if (items * pages_per_item > kPoolPages) {
    state.SkipWithError("shape larger than the pool");
    return;
  }
  if (absl::Status status = UploadPageTables(s, items, pages_per_item, scattered); !status.ok()) {
    return SkipWithError(state, status);
  }
  PagedDecodeParams p;
  p.dtype = DType::kBF16;
  p.head_dim = kHeadDim;
  p.page_size = kPageSize;
  p.group_size = kGroup;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  p.num_items = items;
  p.q = s.q.data();
  p.k_pages = s.k_pages.as<const void* const>();
  p.v_pages = s.v_pages.as<const void* const>();
  p.page_offsets = s.page_offsets.as<const int32_t>();
  p.last_page_tokens = s.last_page_tokens.as<const int32_t>();
  p.out_dtype = DType::kBF16;
  p.out = s.out.data();
  p.lse = s.lse.as<float>();
  if (with_chunk_lse) p.chunk_lse = s.chunk_lse.as<float>();
  absl::StatusOr<int> splits = forced_splits > 0 ? absl::StatusOr<int>(forced_splits)
                                                 : ChoosePagedDecodeSplits(p, context, kMaxSplits);
  if (!splits.ok()) return SkipWithError(state, splits.status());
  auto launch = [&] {
    return LaunchPagedDecodeAttention(p, *splits, s.workspace.data(), s.workspace_bytes,
                                      s.stream.get());
  };
  auto launch_all = [&]() -> absl::Status {
    for (int i = 0; i < launches; ++i) KVTIER_RETURN_IF_ERROR(launch());
    return absl::OkStatus();
  };
  // Warm-up.
  if (absl::Status status = launch(); !status.ok()) return SkipWithError(state, status);
  // The iteration time is the whole interval, all `launches` calls.
  const std::optional<double> timed =
      TimeIterations(state, s.stream.get(), s.start, s.stop, /*per_interval=*/1, launch_all);
  if (!timed) return;
  const double total_seconds = *timed;
  const double kv_bytes = 2.0 * items * context * kHeadDim * 2;
  const double tbps =
      total_seconds > 0
          ? kv_bytes * launches * static_cast<double>(state.iterations()) / total_seconds * 1e-12
          : 0;
  state.counters["TB/s"] = tbps;
  state.counters["vs_hbm_copy"] = tbps * 1e3 / s.hbm_copy_gbps;
  state.counters["hbm_copy_TB/s"] = s.hbm_copy_gbps * 1e-3;
  state.counters["bound_us"] = kv_bytes / (s.hbm_copy_gbps * 1e9) * 1e6;
  state.counters["splits"] = *splits;
  state.counters["us_per_call"] =
      total_seconds / (static_cast<double>(state.iterations()) * launches) * 1e6;
}

void BM_PagedDecodeAttention(benchmark::State& state) { RunPagedDecodeAttention(state, false); }
void BM_PagedDecodeAttentionChunkLse(benchmark::State& state) {
  RunPagedDecodeAttention(state, true);
}

BENCHMARK(BM_PagedDecodeAttention)
    ->ArgNames({"batch", "context", "scattered", "splits", "launches"})
    // The targets: Llama-3-8B, batch 32 x 32K and 8 x 128K, contiguous and scattered pages.
    ->Args({32, 32768, 0, 0, 1})
    ->Args({32, 32768, 1, 0, 1})
    ->Args({8, 131072, 0, 0, 1})
    ->Args({8, 131072, 1, 0, 1})
    // Back-to-back launches: the kernels without host launch overhead.
    ->Args({32, 32768, 1, 0, 10})
    ->Args({8, 131072, 1, 0, 10})
    // Split counts other than the chooser's: what split-K costs where one split already fills
    // the GPU, and whether more waves of shorter blocks balance better.
    ->Args({32, 32768, 1, 4, 1})
    ->Args({8, 131072, 1, 8, 1})
    ->Args({8, 131072, 1, 16, 1})
    ->Args({1, 131072, 1, 16, 1})
    ->Args({1, 131072, 1, 64, 1})
    ->Args({1, 131072, 1, 128, 1})
    // Few long sequences (many splits) and many short ones.
    ->Args({1, 131072, 1, 0, 1})
    ->Args({1, 131072, 1, 0, 10})
    ->Args({64, 4096, 1, 0, 1})
    ->Args({64, 4096, 1, 0, 10})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// The targets and the back-to-back rows again, with chunk_lse written.
BENCHMARK(BM_PagedDecodeAttentionChunkLse)
    ->ArgNames({"batch", "context", "scattered", "splits", "launches"})
    ->Args({32, 32768, 0, 0, 1})
    ->Args({32, 32768, 1, 0, 1})
    ->Args({8, 131072, 0, 0, 1})
    ->Args({8, 131072, 1, 0, 1})
    ->Args({32, 32768, 1, 0, 10})
    ->Args({8, 131072, 1, 0, 10})
    ->Args({1, 131072, 1, 0, 10})
    ->Args({64, 4096, 1, 0, 10})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// The ceiling as a row of its own: 1 GiB device-to-device cudaMemcpyAsync, bytes read +
// written per second.
void BM_HbmCopy(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const std::optional<double> timed = TimeIterations(
      state, s.stream.get(), s.start, s.stop, /*per_interval=*/1, [&] { return CopyOnce(s); });
  if (!timed) return;
  const double total_seconds = *timed;
  const double tbps =
      total_seconds > 0
          ? 2.0 * kCopyBytes * static_cast<double>(state.iterations()) / total_seconds * 1e-12
          : 0;
  state.counters["TB/s"] = tbps;
  state.counters["vs_hbm_copy"] = tbps * 1e3 / s.hbm_copy_gbps;
}
BENCHMARK(BM_HbmCopy)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
