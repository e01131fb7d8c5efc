// The host backend: every kernel of the step is its host twin, run on the calling thread
// (the twins parallelise with oneTBB). Streams and events are no-ops: each call completes
// before it returns, so every ordering the pipeline asks for holds trivially.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend/step_backend.h"
#include "kernels/reference_attention.h"

namespace kvtier::internal {
namespace {

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

class HostBackend final : public StepBackend {
 public:
  Backend kind() const override { return Backend::kHost; }

  // calloc, so that large blocks come zeroed from the kernel page by page as they are first
  // touched (most of the page caches of a small run never are), then aligned by hand.
  absl::StatusOr<std::byte*> Allocate(int64_t bytes) override {
    if (bytes <= 0) return absl::InvalidArgumentError("host backend: allocation of 0 bytes");
    auto* raw = static_cast<std::byte*>(std::calloc(static_cast<size_t>(bytes) + 256, 1));
    if (raw == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("host backend: cannot allocate ", bytes, " bytes"));
    }
    blocks_.emplace_back(raw);
    const uintptr_t address = reinterpret_cast<uintptr_t>(raw);
    return raw + ((256 - address % 256) % 256);
  }

  cudaStream_t copy_stream() const override { return nullptr; }
  cudaStream_t load_stream() const override { return nullptr; }
  cudaStream_t hot_stream() const override { return nullptr; }

  absl::Status CopyToBackend(void* dst, const void* src, int64_t bytes, cudaStream_t) override {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
  absl::Status CopyToHost(void* dst, const void* src, int64_t bytes, cudaStream_t) override {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
  absl::Status Fill(void* dst, uint8_t byte, int64_t bytes, cudaStream_t) override {
    if (bytes > 0) std::memset(dst, byte, static_cast<size_t>(bytes));
    return absl::OkStatus();
  }
  absl::Status Synchronize(cudaStream_t) override { return absl::OkStatus(); }

  // An event is the wall-clock time it was recorded at.
  absl::StatusOr<EventHandle> CreateEvent(bool) override {
    events_.push_back(std::make_unique<Clock::time_point>());
    return static_cast<EventHandle>(events_.back().get());
  }
  absl::Status Record(EventHandle event, cudaStream_t) override {
    *static_cast<Clock::time_point*>(event) = Clock::now();
    return absl::OkStatus();
  }
  absl::Status StreamWait(cudaStream_t, EventHandle, bool) override { return absl::OkStatus(); }
  absl::StatusOr<bool> IsCapturing(cudaStream_t) override { return false; }
  absl::Status HostWait(EventHandle) override { return absl::OkStatus(); }
  absl::StatusOr<float> Elapsed(EventHandle start, EventHandle stop) override {
    const auto d = *static_cast<Clock::time_point*>(stop) - *static_cast<Clock::time_point*>(start);
    return std::chrono::duration<float, std::milli>(d).count();
  }

  absl::Status DecodePlan(const DecodePlanParams& p, cudaStream_t) override {
    return ReferenceDecodePlan(p);
  }
  absl::Status Append(const AppendParams& p, cudaStream_t) override { return ReferenceAppend(p); }
  absl::Status WriteBack(const WriteBackParams& p, cudaStream_t) override {
    return ReferenceWriteBack(p);
  }
  absl::Status PageSummaries(const PageSummaryParams& p, cudaStream_t) override {
    return ReferencePageSummaries(p);
  }
  absl::Status BlockSelect(const BlockSelectParams& p, cudaStream_t) override {
    return ReferenceBlockSelect(p);
  }
  absl::Status BlockScoring(const BlockSelectParams& p, cudaStream_t) override {
    return ReferenceBlockScoring(p);
  }
  absl::Status BlockSelectScored(const BlockSelectParams& p, cudaStream_t) override {
    return ReferenceBlockSelectScored(p);
  }
  absl::Status BlockSelectZone(const BlockSelectParams& p, cudaStream_t) override {
    return ReferenceBlockSelectZone(p);
  }
  absl::Status Estimation(const EstimationParams& p, cudaStream_t) override {
    return ReferenceEstimation(p);
  }
  absl::Status CacheResolve(const CacheResolveParams& p, cudaStream_t) override {
    return ReferenceCacheResolve(p);
  }
  absl::Status MissLoad(const MissLoadParams& p, cudaStream_t) override {
    return ReferenceMissLoad(p);
  }
  absl::Status BuildSelectedPages(const SelectedPagesParams& p, cudaStream_t) override {
    return ReferenceBuildSelectedPages(p);
  }
  absl::Status Attention(const PagedDecodeParams& p, int64_t, void*, size_t, int,
                         cudaStream_t) override {
    return ReferencePagedDecodeAttention(p);
  }
  absl::Status Merge(const MergeParams& p, cudaStream_t) override {
    return ReferenceMergePartials(p);
  }
  absl::Status UpdatePageScores(const PageScoreUpdateParams& p, cudaStream_t) override {
    return ReferenceUpdatePageScores(p);
  }
  absl::Status TokenPack(const TokenPackParams& p, cudaStream_t) override {
    return ReferenceTokenPack(p);
  }
  absl::Status PageCopy(const PageCopyParams& p, cudaStream_t) override {
    return ReferencePageCopy(p);
  }
  absl::Status RowGather(const RowGatherParams& p, cudaStream_t) override {
    return ReferenceRowGather(p);
  }
  absl::Status SegmentCluster(const SegmentClusterParams& p, cudaStream_t) override {
    return ReferenceSegmentCluster(p);
  }
  absl::Status ValueKeyCovariance(const ValueKeyCovarianceParams& p, cudaStream_t) override {
    return ReferenceValueKeyCovariance(p);
  }
  absl::Status ValueShift(const ValueShiftParams& p, cudaStream_t) override {
    return ReferenceValueShift(p);
  }

 private:
  using Clock = std::chrono::steady_clock;
  std::vector<std::unique_ptr<std::byte, FreeDeleter>> blocks_;
  std::vector<std::unique_ptr<Clock::time_point>> events_;
};

}  // namespace

std::unique_ptr<StepBackend> CreateHostBackend() { return std::make_unique<HostBackend>(); }

#ifndef KVTIER_WITH_CUDA
absl::StatusOr<std::unique_ptr<StepBackend>> CreateCudaBackend(int) {
  return absl::FailedPreconditionError(
      "backend kCuda: this build of kvtier has no CUDA support (KVTIER_WITH_CUDA=OFF); use "
      "Backend::kHost");
}
#endif

}  // namespace kvtier::internal
