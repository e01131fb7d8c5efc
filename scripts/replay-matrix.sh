#!/usr/bin/env bash
# Developer helper for the GPU machine (see ../shared/GPU.md): runs kvtier-replay once per
# line of a run list and prints one summary row per run. With .gpu/ carried
# (scripts/pack-gpu.sh) and $OUT set by the device tool:
#   scripts/replay-matrix.sh 'name1: --flags...' 'name2: --flags...'
# Each run's JSON report goes to $OUT/<name>.json, its log to $OUT/<name>.log.
set -uo pipefail
RESULTS=${OUT:-/tmp/kvtier-out}
mkdir -p /tmp/kvlibs "$RESULTS"
[ -e /tmp/kvlibs/.unpacked ] || { tar -xJf .gpu/libs.tar.xz -C /tmp/kvlibs && touch /tmp/kvlibs/.unpacked; }
export LD_LIBRARY_PATH=/tmp/kvlibs OPENBLAS_NUM_THREADS=1
status=0
for run in "$@"; do
  name=${run%%:*}
  flags=${run#*:}
  start=$(date +%s)
  # shellcheck disable=SC2086
  .gpu/kvtier-replay $flags --json_out="$RESULTS/$name.json" > "$RESULTS/$name.log" 2>&1 || {
    status=1
    echo "$name: failed after $(( $(date +%s) - start )) s"; tail -5 "$RESULTS/$name.log"; continue; }
  python3 - "$RESULTS/$name.json" "$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); c = r["config"]; d = r["decode"]; a = r["accuracy"]
print(f"{sys.argv[2]:<14} batch {c['batch']:>3} ctx {c['context']:>6} policy {c['policy']:<5} "
      f"step {d['mean_step_ms']:8.2f} ms bound {d['bound_step_ms']:7.2f} ms "
      f"({d['mean_step_ms'] / max(d['bound_step_ms'], 1e-9):5.2f}x) "
      f"{d['tokens_per_second']:8.0f} tok/s hit {100 * d['hit_rate']:5.1f}% "
      f"PCIe {d['pcie_bytes_per_step'] / 1e9:7.3f} GB/step HBM {d['hbm_bytes_per_step'] / 1e9:6.2f} GB/step "
      f"mass {a['mean_mass_captured']:.3f} err {a['mean_output_error']:.3f} "
      f"[{sys.argv[3]} s]")
PY
done
exit $status
