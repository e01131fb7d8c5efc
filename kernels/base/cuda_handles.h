// Owners of CUDA runtime objects: device memory, streams, events. Each is move-only, creates
// through a StatusOr factory (so failures are Status, never exceptions or exit), and releases
// in its destructor, ignoring errors there (at process exit the context may be gone).
// Only for code built with KVTIER_WITH_CUDA.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/statusor.h"

namespace kvtier {

class DeviceBuffer {
 public:
  // `bytes` of device memory on the current device; ResourceExhausted when it is not there.
  // Zero bytes gives an empty buffer (data() == nullptr).
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  std::byte* data() const { return data_; }
  template <typename T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }
  size_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

class CudaStream {
 public:
  // A stream that does not synchronise with the legacy default stream.
  static absl::StatusOr<CudaStream> Create();

  CudaStream() = default;
  CudaStream(CudaStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class CudaEvent {
 public:
  // cudaEventDefault records timing; pass cudaEventDisableTiming for pure ordering.
  static absl::StatusOr<CudaEvent> Create(unsigned int flags = cudaEventDefault);

  CudaEvent() = default;
  CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent();

  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Waits for `stop`, then returns the milliseconds between `start` and `stop`.
absl::StatusOr<float> ElapsedMilliseconds(const CudaEvent& start, const CudaEvent& stop);

}  // namespace kvtier
