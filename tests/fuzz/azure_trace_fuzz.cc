// libFuzzer target: the Azure CSV reader on any bytes (checks in trace_fuzz_checks.h).
#include "tests/fuzz/trace_fuzz_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::fuzz::FuzzTrace(data, size, kvtier::TraceFormat::kAzureCsv);
  return 0;
}
