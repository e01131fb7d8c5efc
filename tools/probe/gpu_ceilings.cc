#include "tools/probe/gpu_ceilings.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/base/cuda_device.h"
#include "kernels/base/status.h"

#ifdef KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/base/cuda_check.h"
#include "kernels/base/cuda_handles.h"
#include "kernels/page_copy.h"
#include "offload/numa_topology.h"
#include "offload/pinned_buffer.h"
#endif

namespace kvtier::probe {

#ifndef KVTIER_WITH_CUDA

absl::Status MeasureGpuCeilings(const ProbeOptions& options, ProbeReport* report) {
  return absl::UnavailableError("kvtier was built without CUDA");
}

absl::Status MeasureBulkRates(const ProbeOptions& options, ProbeReport* report) {
  return absl::UnavailableError("kvtier was built without CUDA");
}

#else  // KVTIER_WITH_CUDA

namespace {

constexpr int64_t kMinPageBytes = 512;  // the smallest page read measured
constexpr int64_t kPerCallPageBytes = 4096;
constexpr int64_t kMaxPerCallCopies = 4096;
constexpr int64_t kMaxBytesPerLaunch = int64_t{256} << 20;

// What every measurement works on. Two of each buffer so copies never read what they write.
// Members are released in reverse order, so an early error return leaks nothing.
struct Setup {
  size_t bytes = 0;
  int repetitions = 0;
  PinnedBuffer host_a;     // `bytes` pinned and mapped: copy source, page-read source
  PinnedBuffer host_b;     // `bytes` pinned: device-to-host destination
  DeviceBuffer device_a;   // `bytes`
  DeviceBuffer device_b;   // `bytes`
  DeviceBuffer src_array;  // one `const void*` per kMinPageBytes of `bytes`
  DeviceBuffer dst_array;  // one `void*` per kMinPageBytes of `bytes`
  CudaStream stream;       // timed work runs here
  CudaStream second_stream;
  CudaEvent start;
  CudaEvent stop;
  CudaEvent join;
};

// Median seconds of `enqueue` (work put on s.stream) between two events: one untimed
// warm-up, then `repetitions` timed runs.
absl::StatusOr<double> MedianSeconds(const Setup& s, const std::function<absl::Status()>& enqueue) {
  std::vector<double> seconds;
  for (int rep = 0; rep <= s.repetitions; ++rep) {
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.start.get(), s.stream.get()));
    KVTIER_RETURN_IF_ERROR(enqueue());
    KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.stop.get(), s.stream.get()));
    KVTIER_ASSIGN_OR_RETURN(const float ms, ElapsedMilliseconds(s.start, s.stop));
    if (rep > 0) seconds.push_back(ms * 1e-3);
  }
  return Median(seconds);
}

absl::StatusOr<double> CopyGbps(const Setup& s, void* dst, const void* src, size_t bytes,
                                cudaMemcpyKind kind, double bytes_counted) {
  KVTIER_ASSIGN_OR_RETURN(
      const double seconds, MedianSeconds(s, [&]() -> absl::Status {
        KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, bytes, kind, s.stream.get()));
        return absl::OkStatus();
      }));
  return bytes_counted / seconds * 1e-9;
}

// The rows a bound needs: pinned host-to-device, and device-to-device (read + written).
absl::Status MeasurePinnedToDevice(const Setup& s, ProbeReport* report) {
  KVTIER_ASSIGN_OR_RETURN(const double gbps,
                          CopyGbps(s, s.device_a.data(), s.host_a.data(), s.bytes,
                                   cudaMemcpyHostToDevice, static_cast<double>(s.bytes)));
  report->AddRow({"pinned_h2d", "pinned host-to-device", gbps, "GB/s",
                  absl::StrCat("cudaMemcpyAsync, ", FormatBytes(static_cast<int64_t>(s.bytes)))});
  return absl::OkStatus();
}
absl::Status MeasureDeviceToDevice(const Setup& s, ProbeReport* report) {
  KVTIER_ASSIGN_OR_RETURN(const double gbps,
                          CopyGbps(s, s.device_b.data(), s.device_a.data(), s.bytes,
                                   cudaMemcpyDeviceToDevice, 2 * static_cast<double>(s.bytes)));
  report->AddRow({"d2d_copy", "device-to-device copy", gbps, "GB/s",
                  absl::StrCat("bytes read + written, ", FormatBytes(static_cast<int64_t>(s.bytes)),
                               " copied")});
  return absl::OkStatus();
}

// The bulk copies: pinned each way, both ways at once, pageable, device to device.
absl::Status MeasureBulkCopies(const Setup& s, ProbeReport* report) {
  const std::string size = FormatBytes(static_cast<int64_t>(s.bytes));
  const double bytes = static_cast<double>(s.bytes);
  KVTIER_RETURN_IF_ERROR(MeasurePinnedToDevice(s, report));
  double gbps = 0;
  KVTIER_ASSIGN_OR_RETURN(gbps, CopyGbps(s, s.host_b.data(), s.device_a.data(), s.bytes,
                                         cudaMemcpyDeviceToHost, bytes));
  report->AddRow({"pinned_d2h", "pinned device-to-host", gbps, "GB/s",
                  absl::StrCat("cudaMemcpyAsync, ", size)});

  // Both directions: the second stream joins the timed stream's start and stop events.
  KVTIER_ASSIGN_OR_RETURN(
      const double both_seconds, MedianSeconds(s, [&]() -> absl::Status {
        KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s.second_stream.get(), s.start.get(), 0));
        KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.device_a.data(), s.host_a.data(), s.bytes,
                                                    cudaMemcpyHostToDevice, s.stream.get()));
        KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.host_b.data(), s.device_b.data(), s.bytes,
                                                    cudaMemcpyDeviceToHost, s.second_stream.get()));
        KVTIER_CUDA_RETURN_IF_ERROR(cudaEventRecord(s.join.get(), s.second_stream.get()));
        KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(s.stream.get(), s.join.get(), 0));
        return absl::OkStatus();
      }));
  report->AddRow({"pinned_bidirectional", "pinned both directions at once",
                  2 * bytes / both_seconds * 1e-9, "GB/s",
                  absl::StrCat("two streams, ", size, " each way, total of both")});

  std::unique_ptr<std::byte[]> pageable(new (std::nothrow) std::byte[s.bytes]);
  if (pageable == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", s.bytes, " bytes of pageable host memory"));
  }
  std::memset(pageable.get(), 0x5A, s.bytes);  // fault the pages in before timing
  KVTIER_ASSIGN_OR_RETURN(
      gbps, CopyGbps(s, s.device_a.data(), pageable.get(), s.bytes, cudaMemcpyHostToDevice, bytes));
  report->AddRow({"pageable_h2d", "pageable host-to-device", gbps, "GB/s",
                  absl::StrCat("cudaMemcpyAsync from malloc'd memory, ", size)});
  return MeasureDeviceToDevice(s, report);
}

// Uploads the page pointers of `num_batches` launches of `batch_pages` each: distinct
// random pages of the `source_bytes` at `source`, each batch into the same slots of `arena`
// in a random order. Successive launches take successive batches, so none re-reads what
// an earlier one left in the GPU's L2.
absl::Status UploadRandomBatches(const Setup& s, const std::byte* source, size_t source_bytes,
                                 std::byte* arena, int64_t page_bytes, int64_t batch_pages,
                                 int64_t num_batches, std::mt19937_64& rng) {
  const int64_t source_pages = static_cast<int64_t>(source_bytes) / page_bytes;
  std::vector<int64_t> order(source_pages), slots(batch_pages);
  std::iota(order.begin(), order.end(), 0);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::shuffle(slots.begin(), slots.end(), rng);
  const int64_t entries = num_batches * batch_pages;
  std::vector<const void*> src(entries);
  std::vector<void*> dst(entries);
  for (int64_t i = 0; i < entries; ++i) {
    src[i] = source + order[i] * page_bytes;
    dst[i] = arena + slots[i % batch_pages] * page_bytes;
  }
  const size_t array_bytes = entries * sizeof(void*);
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.src_array.data(), src.data(), array_bytes,
                                              cudaMemcpyHostToDevice, s.stream.get()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.dst_array.data(), dst.data(), array_bytes,
                                              cudaMemcpyHostToDevice, s.stream.get()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s.stream.get()));  // `src`, `dst` die here
  return absl::OkStatus();
}

struct PageCopyRate {
  double gbps = 0;  // page bytes moved per second
  int64_t bytes_per_launch = 0;
};

// LaunchPageCopy of random `page_bytes` pages of `source` (device-addressable) into device
// slots: a quarter of the source (at most 256 MiB) per launch, a fresh batch each launch.
absl::StatusOr<PageCopyRate> MeasurePageCopy(const Setup& s, const std::byte* source,
                                             int64_t page_bytes, std::mt19937_64& rng) {
  const int64_t source_pages = static_cast<int64_t>(s.bytes) / page_bytes;
  const int64_t batch_pages =
      std::max<int64_t>(1, std::min<int64_t>(source_pages / 4, kMaxBytesPerLaunch / page_bytes));
  const int64_t num_batches = source_pages / batch_pages;
  KVTIER_RETURN_IF_ERROR(UploadRandomBatches(s, source, s.bytes, s.device_b.data(), page_bytes,
                                             batch_pages, num_batches, rng));
  int64_t batch = 0;
  KVTIER_ASSIGN_OR_RETURN(const double seconds, MedianSeconds(s, [&]() -> absl::Status {
                            PageCopyParams params;
                            params.src = s.src_array.as<const void*>() + batch * batch_pages;
                            params.dst = s.dst_array.as<void*>() + batch * batch_pages;
                            params.num_pages = batch_pages;
                            params.page_bytes = page_bytes;
                            batch = (batch + 1) % num_batches;
                            return LaunchPageCopy(params, s.stream.get());
                          }));
  return PageCopyRate{static_cast<double>(batch_pages * page_bytes) / seconds * 1e-9,
                      batch_pages * page_bytes};
}

absl::Status MeasurePageReads(const Setup& s, ProbeReport* report) {
  std::mt19937_64 rng(20261122);
  const std::string source_size = FormatBytes(static_cast<int64_t>(s.bytes));
  for (int64_t page_bytes = kMinPageBytes; page_bytes <= 32768; page_bytes *= 2) {
    KVTIER_ASSIGN_OR_RETURN(const PageCopyRate rate,
                            MeasurePageCopy(s, s.host_a.device_data(), page_bytes, rng));
    report->AddRow({absl::StrCat("zero_copy_page_read_", page_bytes),
                    absl::StrCat("zero-copy page read, ", FormatBytes(page_bytes), " pages"),
                    rate.gbps, "GB/s",
                    absl::StrCat("LaunchPageCopy, random pages of ", source_size, " pinned, ",
                                 FormatBytes(rate.bytes_per_launch), " a launch")});
  }
  // The same kernel on device pages: the HBM side of the performance model.
  KVTIER_ASSIGN_OR_RETURN(const PageCopyRate hbm,
                          MeasurePageCopy(s, s.device_a.data(), kPerCallPageBytes, rng));
  report->AddRow({"device_page_copy_4096", "device page copy, 4 KiB pages", 2 * hbm.gbps, "GB/s",
                  absl::StrCat("LaunchPageCopy in HBM, bytes read + written, ",
                               FormatBytes(hbm.bytes_per_launch), " a launch")});
  return absl::OkStatus();
}

// One cudaMemcpyAsync per 4 KiB page, random pinned pages into consecutive device slots.
absl::Status MeasurePerPageMemcpy(const Setup& s, ProbeReport* report) {
  const int64_t source_pages = static_cast<int64_t>(s.bytes) / kPerCallPageBytes;
  const int64_t calls = std::min(kMaxPerCallCopies, source_pages);
  std::mt19937_64 rng(4096);
  std::vector<int64_t> order(source_pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::byte* const slots = s.device_b.data();
  KVTIER_ASSIGN_OR_RETURN(
      const double seconds, MedianSeconds(s, [&]() -> absl::Status {
        for (int64_t i = 0; i < calls; ++i) {
          KVTIER_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
              slots + i * kPerCallPageBytes, s.host_a.data() + order[i] * kPerCallPageBytes,
              kPerCallPageBytes, cudaMemcpyHostToDevice, s.stream.get()));
        }
        return absl::OkStatus();
      }));
  const std::string note = absl::StrCat(calls, " calls, random pinned 4 KiB pages");
  report->AddRow({"memcpy_per_page_4096_us", "cudaMemcpyAsync per 4 KiB page",
                  seconds / calls * 1e6, "us/call", note});
  report->AddRow({"memcpy_per_page_4096", "cudaMemcpyAsync per 4 KiB page",
                  static_cast<double>(calls * kPerCallPageBytes) / seconds * 1e-9, "GB/s", note});
  return absl::OkStatus();
}

std::string YesNo(bool b) { return b ? "yes" : "no"; }

}  // namespace

namespace {

absl::Status CheckDevice(const ProbeOptions& options) {
  const int count = CudaDeviceCount();
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device=", options.device, " but ", count, " CUDA device(s) are visible"));
  }
  return absl::OkStatus();
}

absl::Status AddGpuInfo(const ProbeOptions& options, ProbeReport* report, GpuInfo* gpu) {
  KVTIER_ASSIGN_OR_RETURN(*gpu, QueryGpu(options.device));
  report->AddInfo("gpu", absl::StrFormat("%s (device %d), sm_%d%d, %d SMs, %s memory (%s free)",
                                         gpu->name, gpu->device_id, gpu->compute_capability_major,
                                         gpu->compute_capability_minor, gpu->sm_count,
                                         FormatBytes(gpu->total_memory_bytes),
                                         FormatBytes(gpu->free_memory_bytes)));
  return absl::OkStatus();
}

// The streams, events and the four bulk buffers of `s` (options.bytes each), filled.
absl::Status PrepareBulkBuffers(const ProbeOptions& options, Setup* s) {
  KVTIER_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  s->bytes = static_cast<size_t>(options.bytes);
  s->repetitions = options.repetitions;
  KVTIER_ASSIGN_OR_RETURN(s->stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->second_stream, CudaStream::Create());
  KVTIER_ASSIGN_OR_RETURN(s->start, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->stop, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->join, CudaEvent::Create());
  KVTIER_ASSIGN_OR_RETURN(s->host_a,
                          PinnedBuffer::Allocate({.bytes = s->bytes, .device_id = options.device}));
  KVTIER_ASSIGN_OR_RETURN(s->host_b,
                          PinnedBuffer::Allocate({.bytes = s->bytes, .device_id = options.device}));
  if (!s->host_a.pinned() || !s->host_b.pinned()) {
    return absl::InternalError("the host buffers were not page-locked although a GPU is present");
  }
  std::memset(s->host_a.data(), 0x5A, s->bytes);
  std::memset(s->host_b.data(), 0, s->bytes);
  KVTIER_ASSIGN_OR_RETURN(s->device_a, DeviceBuffer::Allocate(s->bytes));
  KVTIER_ASSIGN_OR_RETURN(s->device_b, DeviceBuffer::Allocate(s->bytes));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s->device_a.data(), 0x3C, s->bytes, s->stream.get()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s->device_b.data(), 0, s->bytes, s->stream.get()));
  KVTIER_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s->stream.get()));
  return absl::OkStatus();
}

}  // namespace

absl::Status MeasureGpuCeilings(const ProbeOptions& options, ProbeReport* report) {
  KVTIER_RETURN_IF_ERROR(CheckDevice(options));
  GpuInfo gpu;
  KVTIER_RETURN_IF_ERROR(AddGpuInfo(options, report, &gpu));
  report->AddInfo("gpu pci bus id", gpu.pci_bus_id);
  {
    KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<const NumaTopology> topology, NumaTopology::Shared());
    absl::StatusOr<int> node = topology->NodeNearPciDevice(gpu.pci_bus_id);
    report->AddInfo(
        "numa node nearest gpu",
        node.ok() ? absl::StrCat(*node) : absl::StrCat("unknown (", node.status().message(), ")"));
  }

  Setup s;
  KVTIER_RETURN_IF_ERROR(PrepareBulkBuffers(options, &s));
  const NumaPlacement& placement = s.host_a.placement();
  report->AddInfo("pinned buffers",
                  absl::StrCat("node ", placement.node, ", bound to it: ", YesNo(placement.bound),
                               ", page-locked: ", YesNo(s.host_a.pinned() && s.host_b.pinned()),
                               " (", placement.how, ")"));
  const size_t array_bytes = s.bytes / kMinPageBytes * sizeof(void*);
  KVTIER_ASSIGN_OR_RETURN(s.src_array, DeviceBuffer::Allocate(array_bytes));
  KVTIER_ASSIGN_OR_RETURN(s.dst_array, DeviceBuffer::Allocate(array_bytes));

  KVTIER_RETURN_IF_ERROR(MeasureBulkCopies(s, report));
  KVTIER_RETURN_IF_ERROR(MeasurePageReads(s, report));
  KVTIER_RETURN_IF_ERROR(MeasurePerPageMemcpy(s, report));
  return absl::OkStatus();
}

absl::Status MeasureBulkRates(const ProbeOptions& options, ProbeReport* report) {
  KVTIER_RETURN_IF_ERROR(CheckDevice(options));
  GpuInfo gpu;
  KVTIER_RETURN_IF_ERROR(AddGpuInfo(options, report, &gpu));
  Setup s;
  KVTIER_RETURN_IF_ERROR(PrepareBulkBuffers(options, &s));
  KVTIER_RETURN_IF_ERROR(MeasurePinnedToDevice(s, report));
  return MeasureDeviceToDevice(s, report);
}

#endif  // KVTIER_WITH_CUDA

}  // namespace kvtier::probe
