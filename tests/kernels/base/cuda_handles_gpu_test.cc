// The RAII owners of cuda_handles.h on a real device: what they create works, moving hands
// ownership over exactly once, release really returns the memory, and a failed allocation
// is a ResourceExhausted status that leaves CUDA usable.
//
// Double releases show as a CUDA error left behind: the destructors ignore the error a
// second cudaFree / cudaStreamDestroy / cudaEventDestroy returns but do not clear it, so
// each test ends by checking cudaGetLastError().
#include "kernels/base/cuda_handles.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/base/status.h"
#include "tests/testing/gpu_test_util.h"

namespace kvtier {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

class CudaHandlesGpuTest : public GpuTest {
 protected:
  CudaHandlesGpuTest() : GpuTest("CUDA handle tests") {}

  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_CUDA_OK(cudaGetLastError());  // start clean: later checks blame this test only
  }

  void TearDown() override {
    if (IsSkipped()) return;
    EXPECT_EQ(cudaGetLastError(), cudaSuccess) << "a CUDA error was left behind";
  }
};

// Bytes to copy back from `buffer` into host memory, synchronously on `stream`.
std::vector<uint8_t> CopyToHost(const DeviceBuffer& buffer, cudaStream_t stream) {
  std::vector<uint8_t> host(buffer.size(), 0);
  EXPECT_EQ(
      cudaMemcpyAsync(host.data(), buffer.data(), host.size(), cudaMemcpyDeviceToHost, stream),
      cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  return host;
}

TEST_F(CudaHandlesGpuTest, AllocateGivesDeviceMemoryOfTheRequestedSize) {
  ASSERT_OK_AND_ASSIGN(DeviceBuffer buffer, DeviceBuffer::Allocate(3 * kMiB + 5));
  ASSERT_NE(buffer.data(), nullptr);
  EXPECT_EQ(buffer.size(), 3 * kMiB + 5);
  cudaPointerAttributes attributes{};
  ASSERT_CUDA_OK(cudaPointerGetAttributes(&attributes, buffer.data()));
  EXPECT_EQ(attributes.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attributes.device, 0);
  // cudaMalloc's alignment, which callers rely on for vector loads.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 256, 0u);
}

// Most of the free memory, twice in a row: the second allocation only fits if the first
// owner really gave its memory back, both at the end of its scope and when an empty
// buffer is move-assigned over it.
TEST_F(CudaHandlesGpuTest, ReleaseReturnsTheMemory) {
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_CUDA_OK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t bytes = free_bytes / 2 + free_bytes / 8;  // 62.5%: two never fit at once
  SCOPED_TRACE(testing::Message() << bytes << " of " << free_bytes << " free bytes");
  {
    ASSERT_OK_AND_ASSIGN(DeviceBuffer first, DeviceBuffer::Allocate(bytes));
    EXPECT_NE(first.data(), nullptr);
  }
  ASSERT_OK_AND_ASSIGN(DeviceBuffer second, DeviceBuffer::Allocate(bytes));
  second = DeviceBuffer();
  EXPECT_EQ(second.data(), nullptr);
  EXPECT_EQ(second.size(), 0u);
  ASSERT_OK_AND_ASSIGN(DeviceBuffer third, DeviceBuffer::Allocate(bytes));
  EXPECT_NE(third.data(), nullptr);
}

TEST_F(CudaHandlesGpuTest, ZeroBytesIsAnEmptyBuffer) {
  ASSERT_OK_AND_ASSIGN(DeviceBuffer buffer, DeviceBuffer::Allocate(0));
  EXPECT_EQ(buffer.data(), nullptr);
  EXPECT_EQ(buffer.size(), 0u);
  DeviceBuffer moved(std::move(buffer));
  EXPECT_EQ(moved.data(), nullptr);
}

TEST_F(CudaHandlesGpuTest, MovedFromBufferIsEmptyAndMemoryIsFreedOnce) {
  ASSERT_OK_AND_ASSIGN(DeviceBuffer a, DeviceBuffer::Allocate(kMiB));
  std::byte* const a_data = a.data();

  DeviceBuffer b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.data(), a_data);
  EXPECT_EQ(b.size(), kMiB);

  // Move-assigning over a live buffer frees the old memory and takes the new.
  ASSERT_OK_AND_ASSIGN(DeviceBuffer c, DeviceBuffer::Allocate(2 * kMiB));
  c = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(b.size(), 0u);
  EXPECT_EQ(c.data(), a_data);
  EXPECT_EQ(c.size(), kMiB);

  // Self-move-assignment keeps the buffer.
  DeviceBuffer& alias = c;
  c = std::move(alias);
  EXPECT_EQ(c.data(), a_data);
  EXPECT_EQ(c.size(), kMiB);

  // The memory is still usable through its one owner.
  ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  ASSERT_CUDA_OK(cudaMemsetAsync(c.data(), 0x42, c.size(), stream.get()));
  const std::vector<uint8_t> host = CopyToHost(c, stream.get());
  EXPECT_TRUE(std::all_of(host.begin(), host.end(), [](uint8_t v) { return v == 0x42; }));
  // a, b and c are destroyed here; TearDown sees any error from a second cudaFree.
}

TEST_F(CudaHandlesGpuTest, MovedFromStreamAndEventAreEmptyAndDestroyedOnce) {
  ASSERT_OK_AND_ASSIGN(CudaStream s1, CudaStream::Create());
  const cudaStream_t raw_stream = s1.get();
  ASSERT_NE(raw_stream, nullptr);
  CudaStream s2(std::move(s1));
  EXPECT_EQ(s1.get(), nullptr);
  EXPECT_EQ(s2.get(), raw_stream);
  ASSERT_OK_AND_ASSIGN(CudaStream s3, CudaStream::Create());
  s3 = std::move(s2);  // destroys s3's own stream
  EXPECT_EQ(s2.get(), nullptr);
  EXPECT_EQ(s3.get(), raw_stream);
  EXPECT_EQ(cudaStreamQuery(s3.get()), cudaSuccess);

  ASSERT_OK_AND_ASSIGN(CudaEvent e1, CudaEvent::Create());
  const cudaEvent_t raw_event = e1.get();
  ASSERT_NE(raw_event, nullptr);
  CudaEvent e2(std::move(e1));
  EXPECT_EQ(e1.get(), nullptr);
  ASSERT_OK_AND_ASSIGN(CudaEvent e3, CudaEvent::Create(cudaEventDisableTiming));
  e3 = std::move(e2);  // destroys e3's own event
  EXPECT_EQ(e2.get(), nullptr);
  EXPECT_EQ(e3.get(), raw_event);
  ASSERT_CUDA_OK(cudaEventRecord(e3.get(), s3.get()));
  ASSERT_CUDA_OK(cudaEventSynchronize(e3.get()));
  // Everything is destroyed here; TearDown sees any error from a second destroy.
}

TEST_F(CudaHandlesGpuTest, StreamRunsMemsetAndMemcpy) {
  ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  unsigned int flags = 0;
  ASSERT_CUDA_OK(cudaStreamGetFlags(stream.get(), &flags));
  EXPECT_EQ(flags, static_cast<unsigned int>(cudaStreamNonBlocking));

  constexpr size_t kBytes = 4 * kMiB + 48;
  ASSERT_OK_AND_ASSIGN(DeviceBuffer source, DeviceBuffer::Allocate(kBytes));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer destination, DeviceBuffer::Allocate(kBytes));
  // Source: 0x11 with the second half 0xA5; destination poisoned, then overwritten.
  ASSERT_CUDA_OK(cudaMemsetAsync(source.data(), 0x11, kBytes, stream.get()));
  ASSERT_CUDA_OK(cudaMemsetAsync(source.data() + kBytes / 2, 0xA5, kBytes / 2, stream.get()));
  ASSERT_CUDA_OK(cudaMemsetAsync(destination.data(), 0xFF, kBytes, stream.get()));
  ASSERT_CUDA_OK(cudaMemcpyAsync(destination.data(), source.data(), kBytes,
                                 cudaMemcpyDeviceToDevice, stream.get()));
  const std::vector<uint8_t> host = CopyToHost(destination, stream.get());
  std::vector<uint8_t> expected(kBytes, 0x11);
  std::fill(expected.begin() + kBytes / 2, expected.end(), 0xA5);
  ASSERT_EQ(host.size(), kBytes);
  const auto [got, want] = std::mismatch(host.begin(), host.end(), expected.begin());
  EXPECT_TRUE(got == host.end()) << "first wrong byte " << (got - host.begin()) << ": got "
                                 << int{*got} << ", expected " << int{*want};
}

TEST_F(CudaHandlesGpuTest, EventsTimeACopy) {
  constexpr size_t kBytes = 256 * kMiB;
  ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  ASSERT_OK_AND_ASSIGN(CudaEvent start, CudaEvent::Create());
  ASSERT_OK_AND_ASSIGN(CudaEvent stop, CudaEvent::Create());
  ASSERT_OK_AND_ASSIGN(DeviceBuffer source, DeviceBuffer::Allocate(kBytes));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer destination, DeviceBuffer::Allocate(kBytes));
  ASSERT_CUDA_OK(cudaMemsetAsync(source.data(), 0x3C, kBytes, stream.get()));
  ASSERT_CUDA_OK(cudaEventRecord(start.get(), stream.get()));
  ASSERT_CUDA_OK(cudaMemcpyAsync(destination.data(), source.data(), kBytes,
                                 cudaMemcpyDeviceToDevice, stream.get()));
  ASSERT_CUDA_OK(cudaEventRecord(stop.get(), stream.get()));
  // No synchronisation here: ElapsedMilliseconds waits for `stop` itself.
  const absl::StatusOr<float> ms = ElapsedMilliseconds(start, stop);
  ASSERT_TRUE(ms.ok()) << ms.status();
  EXPECT_GT(*ms, 0.0f);
  EXPECT_EQ(cudaEventQuery(stop.get()), cudaSuccess);
}

// Events made for ordering only cannot be timed: an error status, not a made-up time.
TEST_F(CudaHandlesGpuTest, ElapsedMillisecondsOfUntimedEventsIsAnError) {
  ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  ASSERT_OK_AND_ASSIGN(CudaEvent start, CudaEvent::Create(cudaEventDisableTiming));
  ASSERT_OK_AND_ASSIGN(CudaEvent stop, CudaEvent::Create(cudaEventDisableTiming));
  ASSERT_CUDA_OK(cudaEventRecord(start.get(), stream.get()));
  ASSERT_CUDA_OK(cudaEventRecord(stop.get(), stream.get()));
  const absl::StatusOr<float> ms = ElapsedMilliseconds(start, stop);
  EXPECT_FALSE(ms.ok());
  (void)cudaGetLastError();  // the expected, non-sticky error of cudaEventElapsedTime
}

TEST_F(CudaHandlesGpuTest, AbsurdAllocationIsResourceExhaustedAndLeavesCudaUsable) {
  constexpr size_t kOnePiB = size_t{1} << 50;
  const absl::StatusOr<DeviceBuffer> huge = DeviceBuffer::Allocate(kOnePiB);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  EXPECT_NE(std::string(huge.status().message()).find("cudaMalloc"), std::string::npos)
      << huge.status();
  // Not sticky, and not left behind for the next caller's error check.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  void* raw = nullptr;
  ASSERT_CUDA_OK(cudaMalloc(&raw, kMiB));
  ASSERT_CUDA_OK(cudaFree(raw));
  ASSERT_OK_AND_ASSIGN(DeviceBuffer buffer, DeviceBuffer::Allocate(kMiB));
  ASSERT_OK_AND_ASSIGN(CudaStream stream, CudaStream::Create());
  ASSERT_CUDA_OK(cudaMemsetAsync(buffer.data(), 0x7E, kMiB, stream.get()));
  ASSERT_CUDA_OK(cudaStreamSynchronize(stream.get()));
}

}  // namespace
}  // namespace kvtier
