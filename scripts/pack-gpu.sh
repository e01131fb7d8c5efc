#!/usr/bin/env bash
# Developer helper (not a newcomer command): builds the GPU binaries for sm_90 and packs
# them with their shared libraries into .gpu/, ready to carry to the H100 machine, where
# scripts/gpu-suite.sh runs them (see ../shared/GPU.md).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvtier_build "$KVTIER_ROOT/build-gpu" -DCMAKE_CUDA_ARCHITECTURES=90
rm -rf "$KVTIER_ROOT/.gpu"
mkdir -p "$KVTIER_ROOT/.gpu"
for bin in tests/gpu_test tests/kernels_reference_test tests/offload_test tests/runtime_core_test \
           tests/index_test tests/runtime_test tests/replay_test tests/workload_test \
           tools/probe/kvtier-probe tools/replay/kvtier-replay \
           bench/kvtier_bench_page_copy bench/kvtier_bench_reference_attention \
           bench/kvtier_bench_decode_attention bench/kvtier_bench_block_select \
           bench/kvtier_bench_estimation \
           bench/kvtier_bench_cache_resolve; do
  cp "$KVTIER_ROOT/build-gpu/$bin" "$KVTIER_ROOT/.gpu/"
done
cp "$KVTIER_ROOT/bench/sdpa_baseline.py" "$KVTIER_ROOT/.gpu/"
"$KVTIER_ROOT/../shared/tools/bundle-libs" "$KVTIER_ROOT/.gpu/libs.tar.xz" \
  $(find "$KVTIER_ROOT/.gpu" -maxdepth 1 -type f -perm -u+x)
du -sh "$KVTIER_ROOT/.gpu"
