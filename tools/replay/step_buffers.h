// The decode step's host (and, on the CUDA backend, device) buffers that kvtier-replay's
// drivers (the fixed batch of replay_run.cc, the serving loop of serving_run.cc) hand to
// KvCache::Decode, and small helpers both share.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/core/options.h"
#include "runtime/core/tensor.h"
#include "runtime/kv_cache.h"
#include "tbb/parallel_for.h"

#ifdef KVTIER_WITH_CUDA
#include "kernels/base/cuda_handles.h"
#endif

namespace kvtier::replay {

// Runs fn(i) for i in [0, n) on oneTBB and returns the first error, if any.
template <typename Fn>
absl::Status ParallelFor(int n, Fn fn) {
  std::vector<absl::Status> status(static_cast<size_t>(n));
  tbb::parallel_for(0, n, [&](int i) { status[i] = fn(i); });
  for (absl::Status& s : status) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// Starts (`begin`) or ends the range that a profiler started with "profile from start off"
// records (ncu --profile-from-start off): the timed decode steps. No effect without one.
absl::Status MarkProfiledRange(bool device, bool begin);

// Queries, new K/V and outputs of every layer for up to `capacity` sequences a step; a step
// of `batch` <= capacity sequences uses the first `batch` rows of each layer's block
// (set_batch). Host vectors are where the generator writes; Stage moves them to the device.
class StepBuffers {
 public:
  // FailedPrecondition for a device backend in a build without CUDA; CUDA errors.
  static absl::StatusOr<StepBuffers> Create(const ModelShape& shape, int capacity, bool device,
                                            int device_id);

  void set_batch(int batch) { batch_ = batch; }  // in [1, capacity]
  int batch() const { return batch_; }
  uint16_t* q(int layer) { return q_.data() + layer * q_elems_; }
  uint16_t* k(int layer) { return k_.data() + layer * kv_elems_; }
  uint16_t* v(int layer) { return v_.data() + layer * kv_elems_; }
  const float* out(int layer) const { return out_.data() + layer * q_elems_; }
  bool on_device() const { return device_; }
  cudaStream_t stream() const;

  // Moves the step's inputs to where Decode reads them and poisons `out` (NaN) so an
  // element Decode does not write shows; returns when that is done, so none of it is timed.
  absl::Status Stage();
  ConstTensor QTensor(int layer) const;
  ConstTensor KTensor(int layer) const;
  ConstTensor VTensor(int layer) const;
  MutableTensor OutTensor(int layer);
  // Waits for the step's work on the caller's stream.
  absl::Status Synchronize();
  // Brings `out` of every layer to the host (after Synchronize).
  absl::Status FetchOut();

 private:
  MemorySpace Space() const { return device_ ? MemorySpace::kDevice : MemorySpace::kHost; }
  const void* Pick(const void* device, const uint16_t* host, int64_t offset) const;
  ConstTensor Tensor(const void* data, int heads) const;
  void* DevicePtr(int which) const;  // q, k, v, out: 0..3; nullptr without CUDA

#ifdef KVTIER_WITH_CUDA
  CudaStream stream_;
  DeviceBuffer q_dev_, k_dev_, v_dev_, out_dev_;
#endif
  ModelShape shape_;
  int64_t batch_ = 0;
  bool device_ = false;
  int64_t q_elems_ = 0;   // per layer: [capacity, Hq, D]
  int64_t kv_elems_ = 0;  // per layer: [capacity, Hk, D]
  std::vector<uint16_t> q_, k_, v_;
  std::vector<float> out_;
};

}  // namespace kvtier::replay
