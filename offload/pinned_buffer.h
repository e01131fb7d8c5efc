// One large host buffer on the NUMA node nearest a GPU, page-locked for DMA and mapped into
// the GPU's address space when a CUDA device is present. Owns its memory (RAII, movable).
#pragma once

#include <cstddef>
#include <memory>

#include "absl/status/statusor.h"
#include "offload/numa_topology.h"

namespace kvtier {

struct PinnedBufferRequest {
  size_t bytes = 0;
  // The GPU the buffer feeds: the buffer goes to the NUMA node nearest it and is pinned
  // (failing to pin is then an error, never a quietly slower pageable buffer). -1, a build
  // without CUDA, or no such device: placed on the calling thread's node, not pinned.
  int device_id = 0;
};

class PinnedBuffer {
 public:
  // ResourceExhausted when the memory cannot be allocated or pinned (with the byte count),
  // InvalidArgument for zero bytes.
  static absl::StatusOr<PinnedBuffer> Allocate(const PinnedBufferRequest& request);

  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();

  std::byte* data() const { return data_; }
  // The buffer's address for kernels (zero-copy reads); nullptr when not pinned.
  std::byte* device_data() const { return device_data_; }
  size_t size() const { return size_; }
  // Page-locked with cudaHostRegister (mapped, portable): the GPU may read it directly and
  // cudaMemcpyAsync from it is asynchronous.
  bool pinned() const { return pinned_; }
  const NumaPlacement& placement() const { return placement_; }

 private:
  void Release();

  std::shared_ptr<const NumaTopology> topology_;
  std::byte* data_ = nullptr;
  std::byte* device_data_ = nullptr;
  size_t size_ = 0;
  bool pinned_ = false;
  NumaPlacement placement_;
};

}  // namespace kvtier
