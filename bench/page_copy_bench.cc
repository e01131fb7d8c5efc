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
#include "runtime/core/cuda_handles.h"
#include "runtime/core/status.h"

namespace kvtier {
namespace {

constexpr size_t kSourceBytes = size_t{1} << 30;  // random pages come from all of it
constexpr size_t kDeviceBytes = size_t{1} << 30;  // the H2D reference copy's destination
constexpr int kReferenceRepetitions = 5;

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
  double pinned_h2d_gbps = 0;  // median of kReferenceRepetitions 1 GiB copies
};

// Seconds between `start` and `stop` after `stop` completed.
absl::StatusOr<double> ElapsedSeconds(const DeviceState& s) {
  KVTIER_ASSIGN_OR_RETURN(const float ms, ElapsedMilliseconds(s.start, s.stop));
  return ms * 1e-3;
}

absl::Status MeasurePinnedHostToDevice(DeviceState& s) {
  std::vector<double> gbps;
  for (int rep = 0; rep <= kReferenceRepetitions; ++rep) {  // rep 0 warms up
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start.get(), s.stream.get()));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device_buffer.data(), s.source.data(),
                                                kSourceBytes, cudaMemcpyHostToDevice,
                                                s.stream.get()));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop.get(), s.stream.get()));
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
  KVTIER_ASSIGN_OR_RETURN(s->device_buffer, DeviceBuffer::Allocate(kDeviceBytes));
  // Smallest page benchmarked is 512 B: one pointer per page of the whole source.
  const size_t array_bytes = kSourceBytes / 512 * sizeof(void*);
  KVTIER_ASSIGN_OR_RETURN(s->src_array, DeviceBuffer::Allocate(array_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->dst_array, DeviceBuffer::Allocate(array_bytes));
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
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
    params.src = s.src_array.as<const void*>() + batch * batch_pages;
    params.dst = s.dst_array.as<void*>() + batch * batch_pages;
    batch = (batch + 1) % *num_batches;
    absl::Status status = [&]() -> absl::Status {
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start.get(), s.stream.get()));
      KVTIER_RETURN_IF_ERROR(LaunchPageCopy(params, s.stream.get()));
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop.get(), s.stream.get()));
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
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start.get(), s.stream.get()));
      KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device_buffer.data(), s.source.data(),
                                                  kSourceBytes, cudaMemcpyHostToDevice,
                                                  s.stream.get()));
      KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop.get(), s.stream.get()));
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
