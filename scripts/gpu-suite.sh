#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .gpu/ carried (scripts/pack-gpu.sh)
# and $OUT set by the device tool: every test binary (GPU tests included), the probe, the
# benchmarks. Full logs go to $OUT/logs.tar.gz (the device tool returns at most 8 files);
# a short summary is printed last.
set -uo pipefail
RESULTS=${OUT:-/tmp/kvtier-out}
OUT=/tmp/kvtier-logs
mkdir -p /tmp/kvlibs "$OUT" "$RESULTS"
tar -xJf .gpu/libs.tar.xz -C /tmp/kvlibs
export LD_LIBRARY_PATH=/tmp/kvlibs OPENBLAS_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
status=0
for t in gpu_test runtime_core_test offload_test kernels_reference_test index_test runtime_test \
         replay_test workload_test; do
  .gpu/$t > "$OUT/$t.log" 2>&1 || status=1
  echo "$t: $(grep -E '^\[  (PASSED|FAILED)  \]|SKIPPED \]' "$OUT/$t.log" | head -3 | tr '\n' ' ')"
done
for b in page_copy decode_attention block_select estimation cache_resolve; do
  .gpu/kvtier_bench_$b --benchmark_out_format=json --benchmark_out="$OUT/bench_$b.json" \
    > "$OUT/bench_$b.txt" 2>&1 || status=1
done
python3 .gpu/sdpa_baseline.py > "$OUT/sdpa_baseline.txt" 2>&1 || status=1
.gpu/kvtier-probe --json_out="$OUT/probe.json" > "$OUT/probe.txt" 2>&1 || status=1
grep -E "FAILED|Failure" "$OUT"/*_test.log | head -20
for b in page_copy decode_attention block_select estimation cache_resolve; do
  grep -E "^BM_" "$OUT/bench_$b.txt" | cut -c1-160
done
cat "$OUT/sdpa_baseline.txt" | tail -8
cat "$OUT/probe.txt"
tar -czf "$RESULTS/logs.tar.gz" -C "$OUT" .
exit $status
