#!/usr/bin/env bash
# Sets everything up (packages, build) and runs the main job on its built-in default:
# kvtier-probe (hardware ceilings), then kvtier-replay: prefill and decode of a Llama-3-8B
# shaped synthetic workload through KvCache (on the GPU when there is one, else on the host
# backend, in about a minute).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvtier_install_packages
kvtier_build "$KVTIER_ROOT/build"
# The probe's report sets the replay's bound to this machine's rates (when it has a GPU).
PROBE_JSON="$KVTIER_ROOT/build/probe.json"
"$KVTIER_ROOT/build/tools/probe/kvtier-probe" --json_out="$PROBE_JSON"
RATES=()
if grep -q '"d2d_copy"' "$PROBE_JSON" 2>/dev/null; then RATES=(--rates="$PROBE_JSON"); fi
echo
"$KVTIER_ROOT/build/tools/replay/kvtier-replay" "${RATES[@]}"
