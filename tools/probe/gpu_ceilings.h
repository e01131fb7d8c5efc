// GPU-side ceilings: copy-engine rates each way, pageable and device-to-device copies, the
// zero-copy page read (LaunchPageCopy over pinned host pages) by page size, and the cost of
// one cudaMemcpyAsync per page. Compiles without CUDA (then it only reports Unavailable).
#pragma once

#include "absl/status/status.h"
#include "tools/probe/probe_report.h"

namespace kvtier::probe {

// Adds GPU and placement info and the GPU rows to `report`. Call only when
// CudaDeviceCount() > 0. InvalidArgument for a device that does not exist, ResourceExhausted
// when host or device memory runs out, Internal (with the CUDA call) for other CUDA errors.
absl::Status MeasureGpuCeilings(const ProbeOptions& options, ProbeReport* report);

// The two rows a performance model's bound needs, quickly: "pinned_h2d" and "d2d_copy" (the
// same measurements as MeasureGpuCeilings', of options.bytes each; 64 MiB and 3 repetitions
// take well under a second), and the "gpu" info. Errors as MeasureGpuCeilings'.
absl::Status MeasureBulkRates(const ProbeOptions& options, ProbeReport* report);

}  // namespace kvtier::probe
