// The rates behind kvtier-replay's bytes bound (HBM and PCIe), and where they came from: the
// --hbm_gbps / --pcie_gbps flags, a kvtier-probe report of this machine (kvtier-probe
// --json_out=FILE, read with --rates=FILE or from the default path), or the runtime's built-in
// constants (Options: an H100's), which say nothing about this machine.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvtier::tools {

// A kvtier-probe report's rates: the device-to-device copy (row "d2d_copy", bytes read +
// written: the HBM rate) and the pinned host-to-device copy (row "pinned_h2d": the PCIe rate),
// in bytes per second.
struct ProbeRates {
  double hbm_bytes_per_second = 0;
  double pcie_bytes_per_second = 0;
};

// Reads those two rows from the text of a kvtier-probe --json report. InvalidArgument naming
// `source` and what is wrong: not a probe report (no rows), a row missing, a value that is not
// a positive number of GB/s.
absl::StatusOr<ProbeRates> ParseProbeRates(absl::string_view json, absl::string_view source);

// The same from a file; NotFound when it cannot be read.
absl::StatusOr<ProbeRates> ReadProbeRates(const std::string& path);

// The two rates' sources in one phrase for a report: one source, or "HBM: ...; PCIe: ...".
std::string DescribeRateSources(const std::string& hbm_source, const std::string& pcie_source);

// Where kvtier-probe's report is looked for when --rates is not given:
// $XDG_CACHE_HOME/kvtier/probe.json, else $HOME/.cache/kvtier/probe.json; "" when neither
// variable is set.
std::string DefaultProbeRatesPath();

}  // namespace kvtier::tools
