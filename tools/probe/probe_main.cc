// kvtier-probe: measures the hardware ceilings kvtier's performance model uses (PCIe copy
// rates, the zero-copy page read, HBM copy, host memcpy) and prints them as a table, or as
// JSON with --json. Without a CUDA device it measures the host part only and says so; it
// exits non-zero only for a real failure (bad flags, memory that cannot be allocated, a
// CUDA error).
//
//   kvtier-probe                    # table, 1 GiB copies, median of 5
//   kvtier-probe --json --bytes=268435456 --repetitions=3
#include <cstdint>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/base/cuda_device.h"
#include "tools/probe/gpu_ceilings.h"
#include "tools/probe/host_ceilings.h"
#include "tools/probe/probe_report.h"

ABSL_FLAG(bool, json, false, "print JSON instead of a table");
ABSL_FLAG(std::string, json_out, "", "also write the JSON report to this file");
ABSL_FLAG(int64_t, bytes, int64_t{1} << 30,
          "bytes of each bulk copy and of the page-read source buffer (at least 1 MiB, rounded "
          "down to a multiple of 32 KiB); host memcpy uses at most 256 MiB. The GPU part "
          "takes 2x this in pinned host memory, 1x pageable and 2x on the device. Below ~256 MiB "
          "the page-read batches may partly fit the GPU's L2 cache.");
ABSL_FLAG(int32_t, repetitions, 5,
          "timed runs per measurement (after one warm-up); the median "
          "is reported");
ABSL_FLAG(int32_t, device, 0, "CUDA device to measure");

namespace kvtier::probe {
namespace {

constexpr int64_t kMinBytes = int64_t{1} << 20;
constexpr int64_t kBytesGranule = 32 * 1024;  // the largest page read measured

absl::Status CheckOptions(const ProbeOptions& options) {
  if (options.bytes < kMinBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--bytes=", options.bytes, ": at least ", kMinBytes, " expected"));
  }
  if (options.repetitions < 1 || options.repetitions > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("--repetitions=", options.repetitions, ": 1 to 1000 expected"));
  }
  return absl::OkStatus();
}

absl::Status Measure(ProbeReport& report) {
  if (absl::Status host = MeasureHostCeilings(report.options, &report); !host.ok()) return host;
  if (CudaDeviceCount() == 0) {
    report.notes.push_back("no CUDA device: GPU rows skipped");
    return absl::OkStatus();
  }
  return MeasureGpuCeilings(report.options, &report);
}

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Measures the copy and memory ceilings kvtier's performance model uses.\n"
      "Usage: kvtier-probe [--json] [--json_out=FILE] [--bytes=N] [--repetitions=N] [--device=N]");
  // --help lists this tool's flags (the default matches files named after the program).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "probe_main");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    std::cerr << "kvtier-probe: unexpected argument '" << positional[1] << "' (see --help)\n";
    return 2;
  }
  ProbeReport report;
  report.options.bytes = absl::GetFlag(FLAGS_bytes);
  report.options.repetitions = absl::GetFlag(FLAGS_repetitions);
  report.options.device = absl::GetFlag(FLAGS_device);
  const bool json = absl::GetFlag(FLAGS_json);
  if (absl::Status options = CheckOptions(report.options); !options.ok()) {
    std::cerr << "kvtier-probe: " << options.message() << "\n";
    return 2;
  }
  report.options.bytes = report.options.bytes / kBytesGranule * kBytesGranule;

  const absl::Status status = Measure(report);
  if (!status.ok()) report.error = status.ToString();
  // What was measured is printed even when a later measurement failed.
  if (json) {
    PrintJson(report, std::cout);
  } else {
    PrintTable(report, std::cout);
  }
  std::cout.flush();
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    std::ofstream file(path);
    PrintJson(report, file);
    if (!file.good()) {
      std::cerr << "kvtier-probe: cannot write " << path << "\n";
      return 1;
    }
  }
  for (const std::string& note : report.notes) {
    if (json) std::cerr << "kvtier-probe: " << note << "\n";
  }
  if (!status.ok()) {
    std::cerr << "kvtier-probe: error: " << status << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kvtier::probe

int main(int argc, char** argv) { return kvtier::probe::Run(argc, argv); }
