#include "tools/replay/step_buffers.h"

#include <algorithm>
#include <limits>

#include "kernels/base/status.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>

#include "kernels/base/cuda_check.h"
#endif

namespace kvtier::replay {

absl::Status MarkProfiledRange(bool device, bool begin) {
#ifdef KVTIER_WITH_CUDA
  if (device) KVTIER_CUDA_RETURN_IF_ERROR(begin ? cudaProfilerStart() : cudaProfilerStop());
#else
  (void)device;
  (void)begin;
#endif
  return absl::OkStatus();
}

absl::StatusOr<StepBuffers> StepBuffers::Create(const ModelShape& shape, int capacity, bool device,
                                                int device_id) {
  StepBuffers b;
  b.shape_ = shape;
  b.batch_ = capacity;
  b.device_ = device;
  const size_t layers = shape.num_layers;
  b.q_elems_ = int64_t{capacity} * shape.num_query_heads * shape.head_dim;
  b.kv_elems_ = int64_t{capacity} * shape.num_kv_heads * shape.head_dim;
  b.q_.resize(layers * b.q_elems_);
  b.k_.resize(layers * b.kv_elems_);
  b.v_.resize(layers * b.kv_elems_);
  b.out_.resize(layers * b.q_elems_);
#ifdef KVTIER_WITH_CUDA
  if (b.device_) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_id));
    KVTIER_ASSIGN_OR_RETURN(b.stream_, CudaStream::Create());
    KVTIER_ASSIGN_OR_RETURN(b.q_dev_, DeviceBuffer::Allocate(b.q_.size() * sizeof(uint16_t)));
    KVTIER_ASSIGN_OR_RETURN(b.k_dev_, DeviceBuffer::Allocate(b.k_.size() * sizeof(uint16_t)));
    KVTIER_ASSIGN_OR_RETURN(b.v_dev_, DeviceBuffer::Allocate(b.v_.size() * sizeof(uint16_t)));
    KVTIER_ASSIGN_OR_RETURN(b.out_dev_, DeviceBuffer::Allocate(b.out_.size() * sizeof(float)));
  }
#else
  (void)device_id;
  if (b.device_) {
    return absl::FailedPreconditionError("the CUDA backend needs a build with KVTIER_WITH_CUDA");
  }
#endif
  return b;
}

cudaStream_t StepBuffers::stream() const {
#ifdef KVTIER_WITH_CUDA
  return stream_.get();
#else
  return nullptr;
#endif
}

void* StepBuffers::DevicePtr(int which) const {
#ifdef KVTIER_WITH_CUDA
  const DeviceBuffer* buffers[] = {&q_dev_, &k_dev_, &v_dev_, &out_dev_};
  return buffers[which]->data();
#else
  (void)which;
  return nullptr;
#endif
}

absl::Status StepBuffers::Stage() {
#ifdef KVTIER_WITH_CUDA
  if (device_) {
    cudaStream_t s = stream_.get();
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(q_dev_.data(), q_.data(), q_dev_.size(), cudaMemcpyHostToDevice, s));
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(k_dev_.data(), k_.data(), k_dev_.size(), cudaMemcpyHostToDevice, s));
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(v_dev_.data(), v_.data(), v_dev_.size(), cudaMemcpyHostToDevice, s));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out_dev_.data(), 0xFF, out_dev_.size(), s));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    return absl::OkStatus();
  }
#endif
  std::fill(out_.begin(), out_.end(), std::numeric_limits<float>::quiet_NaN());
  return absl::OkStatus();
}

const void* StepBuffers::Pick(const void* device, const uint16_t* host, int64_t offset) const {
  return device_ ? static_cast<const uint16_t*>(device) + offset : host + offset;
}

ConstTensor StepBuffers::Tensor(const void* data, int heads) const {
  return MakeConstTensor(data, shape_.dtype, {batch_, heads, shape_.head_dim}, Space());
}

ConstTensor StepBuffers::QTensor(int layer) const {
  return Tensor(Pick(DevicePtr(0), q_.data(), layer * q_elems_), shape_.num_query_heads);
}
ConstTensor StepBuffers::KTensor(int layer) const {
  return Tensor(Pick(DevicePtr(1), k_.data(), layer * kv_elems_), shape_.num_kv_heads);
}
ConstTensor StepBuffers::VTensor(int layer) const {
  return Tensor(Pick(DevicePtr(2), v_.data(), layer * kv_elems_), shape_.num_kv_heads);
}

MutableTensor StepBuffers::OutTensor(int layer) {
  float* base = device_ ? static_cast<float*>(DevicePtr(3)) : out_.data();
  return MakeMutableTensor(base + layer * q_elems_, DType::kFP32,
                           {batch_, shape_.num_query_heads, shape_.head_dim}, Space());
}

absl::Status StepBuffers::Synchronize() {
#ifdef KVTIER_WITH_CUDA
  if (device_) KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
#endif
  return absl::OkStatus();
}

absl::Status StepBuffers::FetchOut() {
#ifdef KVTIER_WITH_CUDA
  if (device_) {
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(out_.data(), out_dev_.data(), out_dev_.size(), cudaMemcpyDeviceToHost));
  }
#endif
  return absl::OkStatus();
}

}  // namespace kvtier::replay
