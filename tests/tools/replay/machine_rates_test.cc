// The bound's rates (tools/replay/machine_rates.h): a kvtier-probe --json report read back,
// its bad forms refused with the file named, and kvtier-replay's resolution of flags, report
// and built-in constants, each rate with where it came from.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/core/options.h"
#include "tools/replay/machine_rates.h"
#include "tools/replay/replay_config.h"

namespace kvtier::replay {
namespace {

using ::testing::HasSubstr;

// A report as kvtier-probe --json writes it (probe_report.cc's PrintJson), with a note that
// holds braces and an escaped quote, and a zero-copy row before the two that count.
std::string ProbeReport(const std::string& d2d_value, const std::string& h2d_value,
                        const std::string& h2d_unit = "GB/s") {
  return absl::StrCat(R"({
  "options": {"bytes": 1073741824, "repetitions": 5, "device": 0},
  "info": {
    "gpu": "NVIDIA H200",
    "host": "2 x 8 cores {numa 0}"
  },
  "rows": [
    {"id": "zero_copy_page_read_4096", "name": "zero-copy read", "value": 40.1, "unit": "GB/s", "note": "a \"note\" with {braces}"},
    {"id": "pinned_h2d", "name": "pinned host-to-device", "value": )",
                      h2d_value, R"(, "unit": ")", h2d_unit,
                      R"(", "note": "cudaMemcpyAsync, 1 GiB"},
    {"id": "d2d_copy", "name": "device-to-device copy", "value": )",
                      d2d_value, R"(, "unit": "GB/s", "note": "bytes read + written, 1 GiB copied"}
  ],
  "notes": []
}
)");
}

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name);
  std::ofstream(path) << text;
  return path;
}

TEST(ProbeRatesTest, ReadsTheCopyRowsOfAProbeReport) {
  absl::StatusOr<tools::ProbeRates> rates =
      tools::ParseProbeRates(ProbeReport("4236.4", "55.2"), "probe.json");
  ASSERT_TRUE(rates.ok()) << rates.status();
  EXPECT_DOUBLE_EQ(rates->hbm_bytes_per_second, 4236.4e9);
  EXPECT_DOUBLE_EQ(rates->pcie_bytes_per_second, 55.2e9);
}

TEST(ProbeRatesTest, RefusesWhatIsNotAProbeReportOfAGpuMachine) {
  struct Case {
    std::string text;
    std::string message;
  };
  const Case cases[] = {
      {"{\"trace\": 1}", "no \"rows\""},
      {"not json at all", "no \"rows\""},
      // A host-only report (no CUDA device): the GPU rows are missing.
      {R"({"rows": [{"id": "host_memcpy", "value": 20, "unit": "GB/s"}], "notes": []})",
       "no row \"d2d_copy\""},
      {ProbeReport("abc", "55.2"), "row \"d2d_copy\" has value \"abc\""},
      {ProbeReport("0", "55.2"), "row \"d2d_copy\" has value \"0\""},
      {ProbeReport("4236", "-5"), "row \"pinned_h2d\" has value \"-5\""},
      {ProbeReport("4236", "55.2", "us"), "row \"pinned_h2d\" has unit \"us\""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    absl::StatusOr<tools::ProbeRates> rates = tools::ParseProbeRates(c.text, "saved.json");
    ASSERT_FALSE(rates.ok());
    EXPECT_EQ(rates.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(rates.status().message(), HasSubstr("saved.json: "));
    EXPECT_THAT(rates.status().message(), HasSubstr(c.message));
  }
  const absl::StatusOr<tools::ProbeRates> missing =
      tools::ReadProbeRates(absl::StrCat(::testing::TempDir(), "/no-such-probe.json"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("no-such-probe.json"));
}

TEST(ProbeRatesTest, DescribesOneSourceOrEach) {
  EXPECT_EQ(tools::DescribeRateSources("--hbm_gbps", "--hbm_gbps"), "--hbm_gbps");
  EXPECT_EQ(tools::DescribeRateSources("--hbm_gbps", "report x"),
            "HBM: --hbm_gbps; PCIe: report x");
}

TEST(ReplayRatesTest, FlagsThenTheReportThenTheBuiltInRates) {
  const Options defaults;
  ReplayFlags flags;
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hbm_bytes_per_second, defaults.hbm_bytes_per_second);
  EXPECT_EQ(c->pcie_bytes_per_second, defaults.pcie_bytes_per_second);
  EXPECT_THAT(c->hbm_rate_source, HasSubstr("built-in"));
  EXPECT_EQ(c->pcie_rate_source, c->hbm_rate_source);

  flags.rates = WriteFile("h200-probe.json", ProbeReport("4236", "55.2"));
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->hbm_bytes_per_second, 4236e9);
  EXPECT_DOUBLE_EQ(c->pcie_bytes_per_second, 55.2e9);
  EXPECT_EQ(c->hbm_rate_source, absl::StrCat("kvtier-probe report ", flags.rates));
  EXPECT_EQ(c->pcie_rate_source, c->hbm_rate_source);
  absl::StatusOr<Options> options = MakeOptions(*c);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_DOUBLE_EQ(options->hbm_bytes_per_second, 4236e9);

  flags.hbm_gbps = 3000;  // a flag wins for its own rate only
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->hbm_bytes_per_second, 3000e9);
  EXPECT_DOUBLE_EQ(c->pcie_bytes_per_second, 55.2e9);
  EXPECT_EQ(c->hbm_rate_source, "--hbm_gbps");
  EXPECT_THAT(c->pcie_rate_source, HasSubstr("h200-probe.json"));

  flags.pcie_gbps = 25;  // both flags: the report is not even read
  flags.rates = absl::StrCat(::testing::TempDir(), "/no-such-probe.json");
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->pcie_rate_source, "--pcie_gbps");
}

// Rates measured at start (kvtier-replay's main, when no report is there) come after the
// flags and a report, before the built-in constants.
TEST(ReplayRatesTest, MeasuredRatesServeWhatTheFlagsAndNoReportGive) {
  ReplayFlags flags;
  flags.measured_hbm_bytes_per_second = 4100e9;
  flags.measured_pcie_bytes_per_second = 54e9;
  flags.measured_rates_source = "measured at start";
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->hbm_bytes_per_second, 4100e9);
  EXPECT_DOUBLE_EQ(c->pcie_bytes_per_second, 54e9);
  EXPECT_EQ(c->hbm_rate_source, "measured at start");
  EXPECT_EQ(c->pcie_rate_source, "measured at start");

  flags.pcie_gbps = 25;  // a flag wins for its own rate
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->hbm_bytes_per_second, 4100e9);
  EXPECT_DOUBLE_EQ(c->pcie_bytes_per_second, 25e9);
  EXPECT_EQ(c->pcie_rate_source, "--pcie_gbps");

  flags.pcie_gbps = 0;  // a report wins over a measurement
  flags.rates = WriteFile("h200-probe-2.json", ProbeReport("4236", "55.2"));
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->hbm_bytes_per_second, 4236e9);
  EXPECT_THAT(c->hbm_rate_source, HasSubstr("h200-probe-2.json"));

  flags.rates.clear();  // half a measurement is none
  flags.measured_pcie_bytes_per_second = 0;
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hbm_bytes_per_second, Options{}.hbm_bytes_per_second);
  EXPECT_THAT(c->hbm_rate_source, HasSubstr("built-in"));
}

TEST(ReplayRatesTest, ABadReportIsAnErrorNamingTheFile) {
  ReplayFlags flags;
  flags.rates = WriteFile("broken-probe.json", ProbeReport("fast", "55.2"));
  absl::StatusOr<ReplayConfig> c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("broken-probe.json"));
  EXPECT_THAT(c.status().message(), HasSubstr("\"fast\""));
  flags.rates = absl::StrCat(::testing::TempDir(), "/no-such-probe.json");
  c = MakeReplayConfig(flags, DeviceFacts{});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier::replay
