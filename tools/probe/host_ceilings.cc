#include "tools/probe/host_ceilings.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/base/status.h"
#include "offload/numa_topology.h"

namespace kvtier::probe {
namespace {

// Host copies stop at 256 MiB: well beyond any last-level cache, and it keeps the probe
// quick on machines without a GPU.
constexpr int64_t kMaxHostCopyBytes = int64_t{256} << 20;

// Seconds `fn` takes on the wall clock.
template <typename Fn>
double TimeSeconds(Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Copies `bytes` from `src` to `dst` with `threads` threads, each taking one contiguous
// slice (cache-line aligned).
void ParallelMemcpy(std::byte* dst, const std::byte* src, size_t bytes, int threads) {
  std::vector<std::thread> workers;
  const size_t slice = (bytes / threads + 63) / 64 * 64;
  for (int t = 0; t < threads; ++t) {
    const size_t begin = std::min(bytes, t * slice);
    const size_t end = std::min(bytes, begin + slice);
    if (begin == end) break;
    workers.emplace_back([=] { std::memcpy(dst + begin, src + begin, end - begin); });
  }
  for (std::thread& w : workers) w.join();
}

}  // namespace

absl::Status MeasureHostCeilings(const ProbeOptions& options, ProbeReport* report) {
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<const NumaTopology> topology, NumaTopology::Shared());
  report->AddInfo("host",
                  absl::StrCat(threads, " hardware threads, ", topology->num_nodes(),
                               " NUMA node(s), probe running on node ", topology->LocalNode()));

  const size_t bytes = static_cast<size_t>(std::min(options.bytes, kMaxHostCopyBytes));
  std::unique_ptr<std::byte[]> src(new (std::nothrow) std::byte[bytes]);
  std::unique_ptr<std::byte[]> dst(new (std::nothrow) std::byte[bytes]);
  if (src == nullptr || dst == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate 2 x ", bytes, " bytes of host memory for memcpy"));
  }
  // Touch every page first so the timed copies measure copying, not page faults.
  std::memset(src.get(), 0x5A, bytes);
  std::memset(dst.get(), 0, bytes);

  const auto measure = [&](int copy_threads) {
    std::vector<double> gbps;
    for (int rep = 0; rep <= options.repetitions; ++rep) {  // rep 0 warms up
      const double seconds =
          TimeSeconds([&] { ParallelMemcpy(dst.get(), src.get(), bytes, copy_threads); });
      if (rep > 0) gbps.push_back(bytes / seconds * 1e-9);
    }
    return Median(gbps);
  };
  report->AddRow({"host_memcpy_1_thread", "host memcpy, one thread", measure(1), "GB/s",
                  absl::StrCat(FormatBytes(static_cast<int64_t>(bytes)),
                               ", bytes copied (read + written: 2x)")});
  if (threads > 1) {
    report->AddRow({"host_memcpy_all_threads", "host memcpy, all threads", measure(threads), "GB/s",
                    absl::StrCat(FormatBytes(static_cast<int64_t>(bytes)), ", ", threads,
                                 " threads, one slice each, bytes copied")});
  }
  return absl::OkStatus();
}

}  // namespace kvtier::probe
