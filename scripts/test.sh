#!/usr/bin/env bash
# Installs and builds what is missing, runs every test (GPU tests skip without a GPU), then
# runs the CPU tests once more under AddressSanitizer and UndefinedBehaviorSanitizer.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvtier_install_packages
jobs=$(nproc)

kvtier_build "$KVTIER_ROOT/build"
ctest --test-dir "$KVTIER_ROOT/build" --output-on-failure -j "$jobs"

kvtier_build "$KVTIER_ROOT/build-sanitize" -DKVTIER_WITH_CUDA=OFF -DKVTIER_SANITIZE=ON \
  -DKVTIER_BUILD_BENCH=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$KVTIER_ROOT/build-sanitize" --output-on-failure -j "$jobs" -L cpu
