#include "offload/pinned_buffer.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/status.h"

#ifdef KVTIER_WITH_CUDA
#include "kernels/base/cuda_check.h"
#endif

namespace kvtier {
namespace {

// The node to place a buffer for `device_id` on, and a note saying how it was chosen.
std::pair<int, std::string> ChooseNode(const NumaTopology& topology, int device_id,
                                       bool device_present) {
  if (!device_present) return {topology.LocalNode(), "local to the calling thread (no GPU)"};
  absl::StatusOr<GpuInfo> gpu = QueryGpu(device_id);
  if (!gpu.ok()) {
    return {topology.LocalNode(),
            absl::StrCat("local to the calling thread (", gpu.status().message(), ")")};
  }
  absl::StatusOr<int> node = topology.NodeNearPciDevice(gpu->pci_bus_id);
  if (!node.ok()) {
    return {topology.LocalNode(),
            absl::StrCat("local to the calling thread (", node.status().message(), ")")};
  }
  return {*node, absl::StrCat("nearest GPU ", device_id, " at PCI ", gpu->pci_bus_id)};
}

}  // namespace

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(const PinnedBufferRequest& request) {
  if (request.bytes == 0) return absl::InvalidArgumentError("PinnedBuffer: bytes = 0");
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<const NumaTopology> topology, NumaTopology::Shared());
  const bool device_present = request.device_id >= 0 && request.device_id < CudaDeviceCount();
  auto [node, how] = ChooseNode(*topology, request.device_id, device_present);

  PinnedBuffer buffer;
  buffer.topology_ = topology;
  KVTIER_ASSIGN_OR_RETURN(void* data, topology->Allocate(request.bytes, node, &buffer.placement_));
  buffer.data_ = static_cast<std::byte*>(data);
  buffer.size_ = request.bytes;
  buffer.placement_.how = std::move(how);
#ifdef KVTIER_WITH_CUDA
  if (device_present) {
    // Mapped: kernels read it directly (zero-copy); portable: every context sees it pinned.
    const cudaError_t error =
        cudaHostRegister(data, request.bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
    if (error != cudaSuccess) {
      (void)cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot pin ", request.bytes, " bytes of host memory for GPU ",
                       request.device_id, ": cudaHostRegister failed with ",
                       cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
    }
    buffer.pinned_ = true;
    void* device_data = nullptr;
    KVTIER_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&device_data, data, 0));
    buffer.device_data_ = static_cast<std::byte*>(device_data);
  }
#endif
  return buffer;
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept { *this = std::move(other); }

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    topology_ = std::move(other.topology_);
    data_ = std::exchange(other.data_, nullptr);
    device_data_ = std::exchange(other.device_data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    pinned_ = std::exchange(other.pinned_, false);
    placement_ = std::move(other.placement_);
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() { Release(); }

void PinnedBuffer::Release() {
  if (data_ == nullptr) return;
#ifdef KVTIER_WITH_CUDA
  if (pinned_) (void)cudaHostUnregister(data_);
#endif
  topology_->Free(data_, size_);
  data_ = nullptr;
  device_data_ = nullptr;
  size_ = 0;
  pinned_ = false;
}

}  // namespace kvtier
