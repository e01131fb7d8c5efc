// What the GPU benchmarks share: the device they run on, launches timed with CUDA events,
// errors reported as a skipped benchmark, and the copy rates their results are compared
// with. Header-only; for benchmarks built with KVTIER_WITH_CUDA.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/status.h"

namespace kvtier {

// Makes device 0 current; Unavailable ("no CUDA device") when there is none.
inline absl::Status UseFirstDevice() {
  if (CudaDeviceCount() == 0) return absl::UnavailableError("no CUDA device");
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(0));
  return absl::OkStatus();
}

// What `Create` (a function returning absl::StatusOr<std::unique_ptr<T>>) makes on the first
// call, shared by every later call and so by every benchmark of the process; when that call
// failed, its error every time.
template <auto Create>
auto SharedState() -> absl::StatusOr<typename decltype(Create())::value_type::pointer> {
  static auto state = Create();
  if (!state.ok()) return state.status();
  return state->get();
}

// Ends the benchmark as skipped with `status`'s message (call it, then leave the loop).
inline void SkipWithError(benchmark::State& state, const absl::Status& status) {
  state.SkipWithError(std::string(status.message()).c_str());
}

// Records `start` on `stream`, calls `enqueue` (which queues work on `stream` and returns an
// absl::Status), records `stop`, waits for it and returns the seconds between the events.
// The first error of any step is returned instead.
template <typename Enqueue>
absl::StatusOr<double> TimedSeconds(cudaStream_t stream, const CudaEvent& start,
                                    const CudaEvent& stop, Enqueue&& enqueue) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(start.get(), stream));
  KVTIER_RETURN_IF_ERROR(enqueue());
  KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop.get(), stream));
  KVTIER_ASSIGN_OR_RETURN(const float ms, ElapsedMilliseconds(start, stop));
  return ms * 1e-3;
}

// The loop of a manual-time benchmark: each iteration first calls `untimed` (returns an
// absl::Status; outside the interval), then times `enqueue` with TimedSeconds; the
// iteration time is the interval divided by `per_interval` (the steps `enqueue` queues, to
// report the time of one; 1 reports whole intervals). Returns the sum of the intervals in seconds,
// or nullopt after an error, which has skipped the benchmark (the caller returns without setting
// counters).
template <typename Untimed, typename Enqueue>
std::optional<double> TimeIterations(benchmark::State& state, cudaStream_t stream,
                                     const CudaEvent& start, const CudaEvent& stop,
                                     int64_t per_interval, Untimed&& untimed, Enqueue&& enqueue) {
  double total_seconds = 0;
  for (auto _ : state) {
    const absl::Status ready = untimed();
    absl::StatusOr<double> seconds =
        ready.ok() ? TimedSeconds(stream, start, stop, enqueue) : absl::StatusOr<double>(ready);
    if (!seconds.ok()) {
      SkipWithError(state, seconds.status());
      return std::nullopt;
    }
    state.SetIterationTime(*seconds / per_interval);
    total_seconds += *seconds;
  }
  return total_seconds;
}

// TimeIterations with nothing to do outside the timed interval.
template <typename Enqueue>
std::optional<double> TimeIterations(benchmark::State& state, cudaStream_t stream,
                                     const CudaEvent& start, const CudaEvent& stop,
                                     int64_t per_interval, Enqueue&& enqueue) {
  return TimeIterations(
      state, stream, start, stop, per_interval, [] { return absl::OkStatus(); }, enqueue);
}

// Median rate, in GB/s of bytes copied, of `repetitions` timed cudaMemcpyAsync(dst, src,
// bytes, kind) on `stream`, after one untimed warm-up copy.
inline absl::StatusOr<double> MeasureCopyGbps(void* dst, const void* src, size_t bytes,
                                              cudaMemcpyKind kind, cudaStream_t stream,
                                              const CudaEvent& start, const CudaEvent& stop,
                                              int repetitions = 5) {
  std::vector<double> gbps;
  for (int rep = 0; rep <= repetitions; ++rep) {  // rep 0 warms up
    KVTIER_ASSIGN_OR_RETURN(
        const double seconds, TimedSeconds(stream, start, stop, [&]() -> absl::Status {
          KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, kind, stream));
          return absl::OkStatus();
        }));
    if (rep > 0) gbps.push_back(bytes / seconds * 1e-9);
  }
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

// The HBM ceiling: MeasureCopyGbps of a device-to-device copy, counted as bytes read plus
// bytes written (twice the bytes copied).
inline absl::StatusOr<double> MeasureHbmCopyGbps(void* dst, const void* src, size_t bytes,
                                                 cudaStream_t stream, const CudaEvent& start,
                                                 const CudaEvent& stop) {
  KVTIER_ASSIGN_OR_RETURN(
      const double gbps,
      MeasureCopyGbps(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, start, stop));
  return 2 * gbps;
}

// The host-to-device ceiling: MeasureCopyGbps from pinned host memory `src` to device `dst`.
inline absl::StatusOr<double> MeasurePinnedH2DGbps(void* dst, const void* src, size_t bytes,
                                                   cudaStream_t stream, const CudaEvent& start,
                                                   const CudaEvent& stop) {
  return MeasureCopyGbps(dst, src, bytes, cudaMemcpyHostToDevice, stream, start, stop);
}

}  // namespace kvtier
