#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .gpu/ carried (scripts/pack-gpu.sh)
# and $OUT set by the device tool: every test binary (GPU tests included), the probe, the
# benchmarks. Full logs go to $OUT; a short summary is printed last.
set -uo pipefail
OUT=${OUT:-/tmp/kvtier-out}
mkdir -p /tmp/kvlibs "$OUT"
tar -xJf .gpu/libs.tar.xz -C /tmp/kvlibs
export LD_LIBRARY_PATH=/tmp/kvlibs OPENBLAS_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
for t in gpu_test runtime_core_test offload_test kernels_reference_test index_test; do
  .gpu/$t > "$OUT/$t.log" 2>&1 || status=1
  echo "$t: $(grep -E '^\[  (PASSED|FAILED)  \]|SKIPPED \]' "$OUT/$t.log" | head -3 | tr '\n' ' ')"
done
.gpu/kvtier_bench_page_copy --benchmark_out_format=json --benchmark_out="$OUT/bench_page_copy.json" \
  > "$OUT/bench_page_copy.txt" 2>&1 || status=1
.gpu/kvtier-probe --json_out="$OUT/probe.json" > "$OUT/probe.txt" 2>&1 || status=1
grep -E "FAILED|Failure" "$OUT"/*_test.log | head -20
cat "$OUT/bench_page_copy.txt" | tail -15
cat "$OUT/probe.txt"
exit $status
