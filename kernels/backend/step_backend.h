// The kernel set a KvCache runs on, behind one interface so that the step pipeline is written
// once: the CUDA backend launches the kernels on streams; the host backend runs their host
// twins on the calling thread (streams and events are then no-ops). "Backend memory" is
// device memory for CUDA and ordinary host memory for the host backend; every pointer in the
// kernels' parameters is backend memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/append.h"
#include "kernels/base/backend_kind.h"
#include "kernels/block_select.h"
#include "kernels/block_summary.h"
#include "kernels/cache_resolve.h"
#include "kernels/decode_attention.h"
#include "kernels/decode_plan.h"
#include "kernels/estimation.h"
#include "kernels/miss_load.h"
#include "kernels/page_copy.h"
#include "kernels/row_gather.h"
#include "kernels/segment_cluster.h"
#include "kernels/token_pack.h"
#include "kernels/value_shift.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#else
struct CUstream_st;
using cudaStream_t = CUstream_st*;
#endif

namespace kvtier::internal {

// An ordering point between streams (a CUDA event; nothing on the host backend).
using EventHandle = void*;

class StepBackend {
 public:
  virtual ~StepBackend() = default;

  virtual Backend kind() const = 0;
  // True when backend memory is device memory (host tensors must be copied).
  bool on_device() const { return kind() == Backend::kCuda; }

  // One block of backend memory, 256-byte aligned, zero-filled, owned by the backend until it
  // is destroyed. ResourceExhausted when it cannot be had.
  virtual absl::StatusOr<std::byte*> Allocate(int64_t bytes) = 0;

  // kvtier's own streams (nullptr on the host backend).
  virtual cudaStream_t copy_stream() const = 0;  // write-back of completed pages
  virtual cudaStream_t load_stream() const = 0;  // miss loads
  virtual cudaStream_t hot_stream() const = 0;   // hot-set attention, beside selection

  // Copies between host memory and backend memory, ordered on
  // `stream` (host: immediate).
  virtual absl::Status CopyToBackend(void* dst, const void* src, int64_t bytes,
                                     cudaStream_t stream) = 0;
  virtual absl::Status CopyToHost(void* dst, const void* src, int64_t bytes,
                                  cudaStream_t stream) = 0;
  virtual absl::Status Fill(void* dst, uint8_t byte, int64_t bytes, cudaStream_t stream) = 0;
  virtual absl::Status Synchronize(cudaStream_t stream) = 0;

  // Events: created once, recorded on a stream, waited on by another stream or the host.
  virtual absl::StatusOr<EventHandle> CreateEvent(bool timing) = 0;
  virtual absl::Status Record(EventHandle event, cudaStream_t stream) = 0;
  // `external`: the event was recorded outside the CUDA-graph capture that `stream` is in
  // (cudaEventWaitExternal); false for an ordinary wait.
  virtual absl::Status StreamWait(cudaStream_t stream, EventHandle event,
                                  bool external = false) = 0;
  // Whether `stream` is capturing a CUDA graph (never, on the host backend).
  virtual absl::StatusOr<bool> IsCapturing(cudaStream_t stream) = 0;
  virtual absl::Status HostWait(EventHandle event) = 0;
  // Milliseconds between two recorded timing events (both complete: call HostWait first).
  virtual absl::StatusOr<float> Elapsed(EventHandle start, EventHandle stop) = 0;

  // The kernels (kernels/*.h): launches on `stream`, or the host twin.
  virtual absl::Status DecodePlan(const DecodePlanParams& p, cudaStream_t s) = 0;
  virtual absl::Status Append(const AppendParams& p, cudaStream_t s) = 0;
  virtual absl::Status WriteBack(const WriteBackParams& p, cudaStream_t s) = 0;
  virtual absl::Status PageSummaries(const PageSummaryParams& p, cudaStream_t s) = 0;
  virtual absl::Status BlockSelect(const BlockSelectParams& p, cudaStream_t s) = 0;
  // BlockSelect's two passes one at a time (block_select.h).
  virtual absl::Status BlockScoring(const BlockSelectParams& p, cudaStream_t s) = 0;
  virtual absl::Status BlockSelectScored(const BlockSelectParams& p, cudaStream_t s) = 0;
  virtual absl::Status BlockSelectZone(const BlockSelectParams& p, cudaStream_t s) = 0;
  virtual absl::Status Estimation(const EstimationParams& p, cudaStream_t s) = 0;
  virtual absl::Status ValueKeyCovariance(const ValueKeyCovarianceParams& p, cudaStream_t s) = 0;
  virtual absl::Status ValueShift(const ValueShiftParams& p, cudaStream_t s) = 0;
  virtual absl::Status CacheResolve(const CacheResolveParams& p, cudaStream_t s) = 0;
  virtual absl::Status MissLoad(const MissLoadParams& p, cudaStream_t s) = 0;
  virtual absl::Status BuildSelectedPages(const SelectedPagesParams& p, cudaStream_t s) = 0;
  // `num_splits` and the workspace apply to the CUDA backend (see decode_attention.h).
  virtual absl::Status Attention(const PagedDecodeParams& p, int64_t max_tokens_per_item,
                                 void* workspace, size_t workspace_bytes, int max_splits,
                                 cudaStream_t s) = 0;
  virtual absl::Status Merge(const MergeParams& p, cudaStream_t s) = 0;
  virtual absl::Status UpdatePageScores(const PageScoreUpdateParams& p, cudaStream_t s) = 0;
  virtual absl::Status TokenPack(const TokenPackParams& p, cudaStream_t s) = 0;
  virtual absl::Status PageCopy(const PageCopyParams& p, cudaStream_t s) = 0;
  virtual absl::Status RowGather(const RowGatherParams& p, cudaStream_t s) = 0;
  virtual absl::Status SegmentCluster(const SegmentClusterParams& p, cudaStream_t s) = 0;
};

// The host twins. Never fails to create.
std::unique_ptr<StepBackend> CreateHostBackend();

// The CUDA kernels on device `device_id` (made current). FailedPrecondition without a device
// or in a build without CUDA.
absl::StatusOr<std::unique_ptr<StepBackend>> CreateCudaBackend(int device_id);

}  // namespace kvtier::internal
