// The zero-copy page load (LaunchPageCopy) reading random pages of a 1 GiB pinned host
// buffer into device slots, timed with CUDA events. Reports GB/s and its ratio to the
// pinned cudaMemcpyAsync host-to-device rate measured in the same process
// ("vs_pinned_h2d"): the kernel should come close to what the copy engines reach.
//
//   kvtier_bench_page_copy [--benchmark_filter=...] [--benchmark_format=json]
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/bench_util.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/status.h"
#include "kernels/miss_load.h"
#include "kernels/page_copy.h"
#include "offload/pinned_buffer.h"

namespace kvtier {
namespace {

constexpr size_t kSourceBytes = size_t{1} << 30;  // random pages come from all of it
constexpr size_t kDeviceBytes = size_t{1} << 30;  // the H2D reference copy's destination

// What every benchmark of the process shares; members release in reverse order (at process
// exit CUDA may already be unloading: the handles ignore errors there).
struct DeviceState {
  PinnedBuffer source;         // kSourceBytes of pinned, mapped host memory
  DeviceBuffer device_buffer;  // kDeviceBytes; the first bytes are the slot arena
  DeviceBuffer src_array;      // room for one page pointer per source page
  DeviceBuffer dst_array;
  CudaStream stream;
  CudaEvent start;
  CudaEvent stop;
  double pinned_h2d_gbps = 0;  // median of 5 1 GiB copies (MeasurePinnedH2DGbps)
};

// The reference copy of every rate: 1 GiB of the pinned source into device memory.
absl::Status CopySourceToDevice(const DeviceState& s) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device_buffer.data(), s.source.data(), kSourceBytes,
                                              cudaMemcpyHostToDevice, s.stream.get()));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceState>> CreateDeviceState() {
  KVTIER_RETURN_IF_ERROR(UseFirstDevice());
  auto s = std::make_unique<DeviceState>();
  KVTIER_ASSIGN_OR_RETURN(s->source,
                          PinnedBuffer::Allocate({.bytes = kSourceBytes, .device_id = 0}));
  if (!s->source.pinned()) return absl::InternalError("the 1 GiB source buffer is not pinned");
  std::memset(s->source.data(), 0x5A, kSourceBytes);
  KVTIER_ASSIGN_OR_RETURN(s->device_buffer, DeviceBuffer::Allocate(kDeviceBytes));
  // Smallest page benchmarked is 512 B: one pointer per page of the whole source.
  const size_t array_bytes = kSourceBytes / 512 * sizeof(void*);
  KVTIER_ASSIGN_OR_RETURN(s->src_array, DeviceBuffer::Allocate(array_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->dst_array, DeviceBuffer::Allocate(array_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->pinned_h2d_gbps,
                          MeasurePinnedH2DGbps(s->device_buffer.data(), s->source.data(),
                                               kSourceBytes, s->stream.get(), s->start, s->stop));
  return s;
}

// Uploads page pointers for every page of the source in random order, cut into batches of
// `batch_pages`; batch b's destinations are the arena's first `batch_pages` slots in a
// random order. Successive launches walk through the batches, so no launch re-reads pages
// an earlier one left in the GPU's L2. Returns the number of whole batches.
absl::StatusOr<int64_t> UploadRandomBatches(DeviceState& s, int64_t page_bytes,
                                            int64_t batch_pages) {
  const int64_t source_pages = static_cast<int64_t>(kSourceBytes) / page_bytes;
  const int64_t num_batches = batch_pages > 0 ? source_pages / batch_pages : 0;
  if (num_batches == 0) {
    return absl::InvalidArgumentError("a launch must move between one page and the source");
  }
  std::mt19937_64 rng(12345);
  std::vector<int64_t> order(source_pages), slots(batch_pages);
  std::iota(order.begin(), order.end(), 0);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::shuffle(slots.begin(), slots.end(), rng);
  const int64_t entries = num_batches * batch_pages;
  std::vector<const void*> src(entries);
  std::vector<void*> dst(entries);
  std::byte* const arena = s.device_buffer.data();
  for (int64_t i = 0; i < entries; ++i) {
    src[i] = s.source.device_data() + order[i] * page_bytes;
    dst[i] = arena + slots[i % batch_pages] * page_bytes;
  }
  const size_t array_bytes = entries * sizeof(void*);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.src_array.data(), src.data(), array_bytes,
                                              cudaMemcpyHostToDevice, s.stream.get()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.dst_array.data(), dst.data(), array_bytes,
                                              cudaMemcpyHostToDevice, s.stream.get()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream.get()));
  return num_batches;
}

// Args: page bytes, bytes per launch (KiB).
void BM_ZeroCopyPageLoad(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const int64_t page_bytes = state.range(0);
  const int64_t batch_pages = state.range(1) * 1024 / page_bytes;
  absl::StatusOr<int64_t> num_batches = UploadRandomBatches(s, page_bytes, batch_pages);
  if (!num_batches.ok()) return SkipWithError(state, num_batches.status());

  PageCopyParams params;
  params.num_pages = batch_pages;
  params.page_bytes = page_bytes;
  int64_t batch = 0;
  auto next_batch = [&] {
    params.src = s.src_array.as<const void*>() + batch * batch_pages;
    params.dst = s.dst_array.as<void*>() + batch * batch_pages;
    batch = (batch + 1) % *num_batches;
    return absl::OkStatus();
  };
  const std::optional<double> timed =
      TimeIterations(state, s.stream.get(), s.start, s.stop, /*per_interval=*/1, next_batch,
                     [&] { return LaunchPageCopy(params, s.stream.get()); });
  if (!timed) return;
  const double total_seconds = *timed;
  const double bytes = static_cast<double>(state.iterations()) * batch_pages * page_bytes;
  const double gbps = total_seconds > 0 ? bytes / total_seconds * 1e-9 : 0;
  state.counters["GB/s"] = gbps;
  state.counters["vs_pinned_h2d"] = gbps / s.pinned_h2d_gbps;
  state.counters["pinned_h2d_GB/s"] = s.pinned_h2d_gbps;
  state.counters["pages"] = static_cast<double>(batch_pages);
}

// Large launches (64 MiB) measure the rate; small ones (1 and 8 MiB, a decode step's
// misses) show what launch latency costs.
BENCHMARK(BM_ZeroCopyPageLoad)
    ->ArgNames({"page_bytes", "KiB_per_launch"})
    ->Args({512, 64 << 10})
    ->Args({4096, 64 << 10})
    ->Args({16384, 64 << 10})
    ->Args({4096, 1 << 10})
    ->Args({4096, 8 << 10})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// The reference itself, as a row of its own: 1 GiB pinned cudaMemcpyAsync host to device.
void BM_PinnedHostToDeviceMemcpy(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  const std::optional<double> timed =
      TimeIterations(state, s.stream.get(), s.start, s.stop, /*per_interval=*/1,
                     [&] { return CopySourceToDevice(s); });
  if (!timed) return;
  const double total_seconds = *timed;
  const double gbps = total_seconds > 0 ? static_cast<double>(state.iterations()) * kSourceBytes /
                                              total_seconds * 1e-9
                                        : 0;
  state.counters["GB/s"] = gbps;
  state.counters["vs_pinned_h2d"] = gbps / s.pinned_h2d_gbps;
}
BENCHMARK(BM_PinnedHostToDeviceMemcpy)->UseManualTime()->Unit(benchmark::kMillisecond);

// A decode step's miss load (LaunchMissLoad) at Llama-3-8B shape: 32 sequences x 8 KV heads
// = 256 caches, 4 KiB K and V pages, a selection of 128 pages of which `misses` miss (26:
// an 80% hit rate; 128: the cache off). Each cache's 512 host pages and 512 slots span the
// 1 GiB pinned source and the 1 GiB device buffer; 16 random miss lists rotate so no launch
// re-reads what an earlier one left in L2. Counts live in device memory, as after a resolve.
void BM_MissLoad(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = SharedState<CreateDeviceState>();
  if (!device.ok()) return SkipWithError(state, device.status());
  DeviceState& s = **device;
  constexpr int32_t kItems = 256, kMaxMisses = 128, kPagesPerItem = 512, kVariants = 16;
  constexpr int64_t kPageBytes = 4096;
  const int32_t misses = static_cast<int32_t>(state.range(0));
  std::mt19937 rng(7);
  std::vector<const void*> k_table, v_table;
  std::vector<int64_t> offsets;
  std::vector<void*> k_base, v_base;
  const int64_t pool_bytes = int64_t{kPagesPerItem} * kPageBytes;
  for (int32_t i = 0; i < kItems; ++i) {
    offsets.push_back(int64_t{i} * kPagesPerItem);
    for (int32_t p = 0; p < kPagesPerItem; ++p) {
      const int64_t frame = int64_t{i} * kPagesPerItem + p;
      k_table.push_back(s.source.device_data() + 2 * frame * kPageBytes);
      v_table.push_back(s.source.device_data() + (2 * frame + 1) * kPageBytes);
    }
    k_base.push_back(s.device_buffer.data() + i * pool_bytes);
    v_base.push_back(s.device_buffer.data() + kDeviceBytes / 2 + i * pool_bytes);
  }
  std::vector<int32_t> pages(int64_t{kVariants} * kItems * kMaxMisses, -1), slots(pages.size(), -1);
  std::vector<int32_t> ids(kPagesPerItem);
  std::iota(ids.begin(), ids.end(), 0);
  for (int64_t row = 0; row < int64_t{kVariants} * kItems; ++row) {
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int32_t m = 0; m < misses; ++m) pages[row * kMaxMisses + m] = ids[m];
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int32_t m = 0; m < misses; ++m) slots[row * kMaxMisses + m] = ids[m];
  }
  const std::vector<int32_t> counts(kItems, misses);
  auto upload = [](const auto& host) -> absl::StatusOr<DeviceBuffer> {
    KVTIER_ASSIGN_OR_RETURN(DeviceBuffer buffer,
                            DeviceBuffer::Allocate(host.size() * sizeof(host[0])));
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buffer.data(), host.data(), buffer.size(), cudaMemcpyHostToDevice));
    return buffer;
  };
  auto k_table_d = upload(k_table), v_table_d = upload(v_table), offsets_d = upload(offsets);
  auto k_base_d = upload(k_base), v_base_d = upload(v_base), pages_d = upload(pages);
  auto slots_d = upload(slots), counts_d = upload(counts);
  for (const auto* b :
       {&k_table_d, &v_table_d, &offsets_d, &k_base_d, &v_base_d, &pages_d, &slots_d, &counts_d}) {
    if (!b->ok()) return SkipWithError(state, b->status());
  }
  MissLoadParams params;
  params.num_items = kItems;
  params.max_misses = kMaxMisses;
  params.page_bytes = kPageBytes;
  params.miss_count = counts_d->as<int32_t>();
  params.host_k_pages = k_table_d->as<const void*>();
  params.host_v_pages = v_table_d->as<const void*>();
  params.page_table_offset = offsets_d->as<int64_t>();
  params.slot_k_base = k_base_d->as<void*>();
  params.slot_v_base = v_base_d->as<void*>();
  int variant = 0;
  auto next_variant = [&] {
    params.miss_pages = pages_d->as<int32_t>() + int64_t{variant} * kItems * kMaxMisses;
    params.miss_slots = slots_d->as<int32_t>() + int64_t{variant} * kItems * kMaxMisses;
    variant = (variant + 1) % kVariants;
    return absl::OkStatus();
  };
  const std::optional<double> timed =
      TimeIterations(state, s.stream.get(), s.start, s.stop, /*per_interval=*/1, next_variant,
                     [&] { return LaunchMissLoad(params, s.stream.get()); });
  if (!timed) return;
  const double total_seconds = *timed;
  const double bytes = static_cast<double>(state.iterations()) * kItems * misses * 2 * kPageBytes;
  const double gbps = total_seconds > 0 ? bytes / total_seconds * 1e-9 : 0;
  state.counters["GB/s"] = gbps;
  state.counters["vs_pinned_h2d"] = gbps / s.pinned_h2d_gbps;
  state.counters["MB/step"] = static_cast<double>(kItems) * misses * 2 * kPageBytes * 1e-6;
}
BENCHMARK(BM_MissLoad)
    ->ArgName("misses_of_128")
    ->Arg(26)
    ->Arg(128)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
