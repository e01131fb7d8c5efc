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
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/page_copy.h"
#include "offload/pinned_buffer.h"
#include "runtime/core/cuda_check.h"
#include "runtime/core/cuda_device.h"
#include "runtime/core/status.h"

namespace kvtier {
namespace {

constexpr size_t kSourceBytes = size_t{1} << 30;  // random pages come from all of it
constexpr size_t kDeviceBytes = size_t{1} << 30;  // the H2D reference copy's destination
constexpr int kReferenceRepetitions = 5;

// Device memory, a stream and two events owned together; released in the destructor (at
// process exit CUDA may already be unloading: errors there are ignored).
struct DeviceState {
  DeviceState() = default;
  DeviceState(const DeviceState&) = delete;
  DeviceState& operator=(const DeviceState&) = delete;
  ~DeviceState() {
    if (start != nullptr) (void)cudaEventDestroy(start);
    if (stop != nullptr) (void)cudaEventDestroy(stop);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    for (void* p : {device_buffer, src_array, dst_array}) {
      if (p != nullptr) (void)cudaFree(p);
    }
  }

  PinnedBuffer source;                 // kSourceBytes of pinned, mapped host memory
  std::byte* mapped_source = nullptr;  // its address on the device
  void* device_buffer = nullptr;       // kDeviceBytes; the first bytes are the slot arena
  void* src_array = nullptr;           // room for one page pointer per source page
  void* dst_array = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  double pinned_h2d_gbps = 0;  // median of kReferenceRepetitions 1 GiB copies
};

// Seconds between `start` and `stop` after `stop` completed.
absl::StatusOr<double> ElapsedSeconds(const DeviceState& s) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(s.stop));
  float ms = 0;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, s.start, s.stop));
  return ms * 1e-3;
}

absl::Status MeasurePinnedHostToDevice(DeviceState& s) {
  std::vector<double> gbps;
  for (int rep = 0; rep <= kReferenceRepetitions; ++rep) {  // rep 0 warms up
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start, s.stream));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device_buffer, s.source.data(), kSourceBytes,
                                                cudaMemcpyHostToDevice, s.stream));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop, s.stream));
    KVTIER_ASSIGN_OR_RETURN(const double seconds, ElapsedSeconds(s));
    if (rep > 0) gbps.push_back(kSourceBytes / seconds * 1e-9);
  }
  std::sort(gbps.begin(), gbps.end());
  s.pinned_h2d_gbps = gbps[gbps.size() / 2];
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceState>> CreateDeviceState() {
  if (CudaDeviceCount() == 0) return absl::UnavailableError("no CUDA device");
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(0));
  auto s = std::make_unique<DeviceState>();
  KVTIER_ASSIGN_OR_RETURN(s->source,
                          PinnedBuffer::Allocate({.bytes = kSourceBytes, .device_id = 0}));
  if (!s->source.pinned()) return absl::InternalError("the 1 GiB source buffer is not pinned");
  std::memset(s->source.data(), 0x5A, kSourceBytes);
  void* mapped = nullptr;
  KVTIER_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&mapped, s->source.data(), 0));
  s->mapped_source = static_cast<std::byte*>(mapped);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(&s->device_buffer, kDeviceBytes));
  // Smallest page benchmarked is 512 B: one pointer per page of the whole source.
  const size_t array_bytes = kSourceBytes / 512 * sizeof(void*);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(&s->src_array, array_bytes));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMalloc(&s->dst_array, array_bytes));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventCreate(&s->start));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventCreate(&s->stop));
  KVTIER_RETURN_IF_ERROR(MeasurePinnedHostToDevice(*s));
  return s;
}

// Created on first use and shared by every benchmark of the process.
absl::StatusOr<DeviceState*> GetDeviceState() {
  static absl::StatusOr<std::unique_ptr<DeviceState>> state = CreateDeviceState();
  if (!state.ok()) return state.status();
  return state->get();
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
  auto* arena = static_cast<std::byte*>(s.device_buffer);
  for (int64_t i = 0; i < entries; ++i) {
    src[i] = s.mapped_source + order[i] * page_bytes;
    dst[i] = arena + slots[i % batch_pages] * page_bytes;
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.src_array, src.data(), entries * sizeof(void*),
                                              cudaMemcpyHostToDevice, s.stream));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.dst_array, dst.data(), entries * sizeof(void*),
                                              cudaMemcpyHostToDevice, s.stream));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream));
  return num_batches;
}

// Args: page bytes, bytes per launch (KiB).
void BM_ZeroCopyPageLoad(benchmark::State& state) {
  absl::StatusOr<DeviceState*> device = GetDeviceState();
  if (!device.ok()) {
    state.SkipWithError(std::string(device.status().message()).c_str());
    return;
  }
  DeviceState& s = **device;
  const int64_t page_bytes = state.range(0);
  const int64_t batch_pages = state.range(1) * 1024 / page_bytes;
  absl::StatusOr<int64_t> num_batches = UploadRandomBatches(s, page_bytes, batch_pages);
  if (!num_batches.ok()) {
    state.SkipWithError(std::string(num_batches.status().message()).c_str());
    return;
  }

  PageCopyParams params;
  params.num_pages = batch_pages;
  params.page_bytes = page_bytes;
  int64_t batch = 0;
  double total_seconds = 0;
  for (auto _ : state) {
    params.src = static_cast<const void* const*>(s.src_array) + batch * batch_pages;
    params.dst = static_cast<void* const*>(s.dst_array) + batch * batch_pages;
    batch = (batch + 1) % *num_batches;
    absl::Status status = [&]() -> absl::Status {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start, s.stream));
      KVTIER_RETURN_IF_ERROR(LaunchPageCopy(params, s.stream));
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop, s.stream));
      return absl::OkStatus();
    }();
    absl::StatusOr<double> seconds =
        status.ok() ? ElapsedSeconds(s) : absl::StatusOr<double>(status);
    if (!seconds.ok()) {
      state.SkipWithError(std::string(seconds.status().message()).c_str());
      return;
    }
    state.SetIterationTime(*seconds);
    total_seconds += *seconds;
  }
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
  absl::StatusOr<DeviceState*> device = GetDeviceState();
  if (!device.ok()) {
    state.SkipWithError(std::string(device.status().message()).c_str());
    return;
  }
  DeviceState& s = **device;
  double total_seconds = 0;
  for (auto _ : state) {
    absl::Status status = [&]() -> absl::Status {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start, s.stream));
      KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device_buffer, s.source.data(), kSourceBytes,
                                                  cudaMemcpyHostToDevice, s.stream));
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop, s.stream));
      return absl::OkStatus();
    }();
    absl::StatusOr<double> seconds =
        status.ok() ? ElapsedSeconds(s) : absl::StatusOr<double>(status);
    if (!seconds.ok()) {
      state.SkipWithError(std::string(seconds.status().message()).c_str());
      return;
    }
    state.SetIterationTime(*seconds);
    total_seconds += *seconds;
  }
  const double gbps = total_seconds > 0 ? static_cast<double>(state.iterations()) * kSourceBytes /
                                              total_seconds * 1e-9
                                        : 0;
  state.counters["GB/s"] = gbps;
  state.counters["vs_pinned_h2d"] = gbps / s.pinned_h2d_gbps;
}
BENCHMARK(BM_PinnedHostToDeviceMemcpy)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
