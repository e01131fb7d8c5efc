#!/usr/bin/env bash
# Developer helper (not a newcomer command): builds the fuzz targets with clang and libFuzzer
# (plus AddressSanitizer and UndefinedBehaviorSanitizer) and runs each for SECONDS (default 60)
# from a copy of the seed corpus in tests/fuzz/corpus. A crash leaves its input in
# build-fuzz/ (crash-*) and ends the script non-zero. Usage: scripts/fuzz.sh [SECONDS]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
seconds=${1:-60}
KVTIER_PACKAGES+=(clang libclang-rt-14-dev)
kvtier_install_packages
dir="$KVTIER_ROOT/build-fuzz"
CXX=clang++ CC=clang cmake -S "$KVTIER_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVTIER_WITH_CUDA=OFF -DKVTIER_FUZZ=ON -DKVTIER_BUILD_BENCH=OFF >/dev/null
cmake --build "$dir" -j "$(nproc)" --target azure_trace_fuzz mooncake_trace_fuzz
for target in azure mooncake; do
  corpus="$dir/corpus/$target"
  mkdir -p "$corpus"
  cp -n "$KVTIER_ROOT/tests/fuzz/corpus/$target/"* "$corpus/"
  (cd "$dir" && "./tests/${target}_trace_fuzz" -max_total_time="$seconds" -max_len=4096 \
     -print_final_stats=1 "$corpus")
done
