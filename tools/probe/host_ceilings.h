// Host-side ceilings: memcpy rates and the NUMA layout. Needs no GPU.
#pragma once

#include "absl/status/status.h"
#include "tools/probe/probe_report.h"

namespace kvtier::probe {

// Adds host info (threads, NUMA nodes) and the host memcpy rows to `report`.
// ResourceExhausted when the copy buffers cannot be allocated.
absl::Status MeasureHostCeilings(const ProbeOptions& options, ProbeReport* report);

}  // namespace kvtier::probe
