// The CUDA backend: the step's kernels launched on streams, backend memory in device memory.
// kvtier owns two non-blocking streams besides the caller's: a copy stream for write-backs
// (device -> pinned host) and a load stream for miss loads (pinned host -> device), so both
// directions of PCIe overlap attention on the caller's stream.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend/step_backend.h"
#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/base/status.h"

namespace kvtier::internal {
namespace {

class CudaBackend final : public StepBackend {
 public:
  CudaBackend(int device_id, CudaStream copy, CudaStream load, CudaStream hot)
      : device_id_(device_id),
        copy_(std::move(copy)),
        load_(std::move(load)),
        hot_(std::move(hot)) {}

  ~CudaBackend() override {
    // Work still queued may touch memory freed below.
    (void)cudaSetDevice(device_id_);
    (void)cudaDeviceSynchronize();
  }

  Backend kind() const override { return Backend::kCuda; }

  absl::StatusOr<std::byte*> Allocate(int64_t bytes) override {
    KVTIER_ASSIGN_OR_RETURN(DeviceBuffer buffer,
                            DeviceBuffer::Allocate(static_cast<size_t>(bytes)));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemset(buffer.data(), 0, static_cast<size_t>(bytes)));
    KVTIER_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    std::byte* p = buffer.data();
    buffers_.push_back(std::move(buffer));
    return p;
  }

  cudaStream_t copy_stream() const override { return copy_.get(); }
  cudaStream_t load_stream() const override { return load_.get(); }
  cudaStream_t hot_stream() const override { return hot_.get(); }

  absl::Status CopyToBackend(void* dst, const void* src, int64_t bytes, cudaStream_t s) override {
    if (bytes <= 0) return absl::OkStatus();
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, s));
    return absl::OkStatus();
  }
  absl::Status CopyToHost(void* dst, const void* src, int64_t bytes, cudaStream_t s) override {
    if (bytes <= 0) return absl::OkStatus();
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, s));
    return absl::OkStatus();
  }
  absl::Status Fill(void* dst, uint8_t byte, int64_t bytes, cudaStream_t s) override {
    if (bytes <= 0) return absl::OkStatus();
    KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, byte, static_cast<size_t>(bytes), s));
    return absl::OkStatus();
  }
  absl::Status Synchronize(cudaStream_t s) override {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    return absl::OkStatus();
  }

  absl::StatusOr<EventHandle> CreateEvent(bool timing) override {
    KVTIER_ASSIGN_OR_RETURN(CudaEvent event,
                            CudaEvent::Create(timing ? cudaEventDefault : cudaEventDisableTiming));
    events_.push_back(std::move(event));
    return static_cast<EventHandle>(events_.back().get());
  }
  absl::Status Record(EventHandle event, cudaStream_t s) override {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(static_cast<cudaEvent_t>(event), s));
    return absl::OkStatus();
  }
  absl::Status StreamWait(cudaStream_t s, EventHandle event, bool external) override {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(event),
                                                    external ? cudaEventWaitExternal : 0));
    return absl::OkStatus();
  }
  absl::StatusOr<bool> IsCapturing(cudaStream_t s) override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(s, &status));
    return status == cudaStreamCaptureStatusActive;
  }
  absl::Status HostWait(EventHandle event) override {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
    return absl::OkStatus();
  }
  absl::StatusOr<float> Elapsed(EventHandle start, EventHandle stop) override {
    float ms = 0;
    KVTIER_CUDA_RETURN_IF_ERROR(
        cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(stop)));
    return ms;
  }

  absl::Status DecodePlan(const DecodePlanParams& p, cudaStream_t s) override {
    return LaunchDecodePlan(p, s);
  }
  absl::Status Append(const AppendParams& p, cudaStream_t s) override { return LaunchAppend(p, s); }
  absl::Status WriteBack(const WriteBackParams& p, cudaStream_t s) override {
    return LaunchWriteBack(p, s);
  }
  absl::Status PageSummaries(const PageSummaryParams& p, cudaStream_t s) override {
    return LaunchPageSummaries(p, s);
  }
  absl::Status BlockSelect(const BlockSelectParams& p, cudaStream_t s) override {
    return LaunchBlockSelect(p, s);
  }
  absl::Status BlockScoring(const BlockSelectParams& p, cudaStream_t s) override {
    return LaunchBlockScoring(p, s);
  }
  absl::Status BlockSelectScored(const BlockSelectParams& p, cudaStream_t s) override {
    return LaunchBlockSelectScored(p, s);
  }
  absl::Status BlockSelectZone(const BlockSelectParams& p, cudaStream_t s) override {
    return LaunchBlockSelectZone(p, s);
  }
  absl::Status Estimation(const EstimationParams& p, cudaStream_t s) override {
    return LaunchEstimation(p, s);
  }
  absl::Status CacheResolve(const CacheResolveParams& p, cudaStream_t s) override {
    return LaunchCacheResolve(p, s);
  }
  absl::Status MissLoad(const MissLoadParams& p, cudaStream_t s) override {
    return LaunchMissLoad(p, s);
  }
  absl::Status BuildSelectedPages(const SelectedPagesParams& p, cudaStream_t s) override {
    return LaunchBuildSelectedPages(p, s);
  }
  absl::Status Attention(const PagedDecodeParams& p, int64_t max_tokens_per_item, void* workspace,
                         size_t workspace_bytes, int max_splits, cudaStream_t s) override {
    KVTIER_ASSIGN_OR_RETURN(const int splits,
                            ChoosePagedDecodeSplits(p, max_tokens_per_item, max_splits));
    return LaunchPagedDecodeAttention(p, splits, workspace, workspace_bytes, s);
  }
  absl::Status Merge(const MergeParams& p, cudaStream_t s) override {
    return LaunchMergePartials(p, s);
  }
  absl::Status UpdatePageScores(const PageScoreUpdateParams& p, cudaStream_t s) override {
    return LaunchUpdatePageScores(p, s);
  }
  absl::Status TokenPack(const TokenPackParams& p, cudaStream_t s) override {
    return LaunchTokenPack(p, s);
  }
  absl::Status PageCopy(const PageCopyParams& p, cudaStream_t s) override {
    return LaunchPageCopy(p, s);
  }
  absl::Status RowGather(const RowGatherParams& p, cudaStream_t s) override {
    return LaunchRowGather(p, s);
  }
  absl::Status SegmentCluster(const SegmentClusterParams& p, cudaStream_t s) override {
    return LaunchSegmentCluster(p, s);
  }
  absl::Status ValueKeyCovariance(const ValueKeyCovarianceParams& p, cudaStream_t s) override {
    return LaunchValueKeyCovariance(p, s);
  }
  absl::Status ValueShift(const ValueShiftParams& p, cudaStream_t s) override {
    return LaunchValueShift(p, s);
  }

 private:
  int device_id_;
  CudaStream copy_;
  CudaStream load_;
  CudaStream hot_;
  std::vector<DeviceBuffer> buffers_;
  std::vector<CudaEvent> events_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StepBackend>> CreateCudaBackend(int device_id) {
  const int count = CudaDeviceCount();
  if (count <= 0) {
    return absl::FailedPreconditionError(
        "backend kCuda: no CUDA device is present; use Backend::kHost");
  }
  if (device_id >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("device_id = ", device_id, ": only ", count, " CUDA device(s) present"));
  }
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_id));
  KVTIER_ASSIGN_OR_RETURN(CudaStream copy, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(CudaStream load, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(CudaStream hot, CudaStream::Create());
  return std::unique_ptr<StepBackend>(
      new CudaBackend(device_id, std::move(copy), std::move(load), std::move(hot)));
}

}  // namespace kvtier::internal
