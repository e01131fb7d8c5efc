# Shared by quickstart.sh and test.sh: install what is missing, configure, build.
# Sourced, not run. Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail

KVTIER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# python3-matplotlib (with python3-numpy): Debian's /usr/bin/python3 draws kvtier-accuracy's
# sweep plots (scripts/plot_accuracy.py); accuracy_test's plot test skips without it.
KVTIER_PACKAGES=(cmake ninja-build pkg-config g++ libhwloc-dev libtbb-dev libfaiss-dev
                 libabsl-dev libgtest-dev libbenchmark-dev libopenblas0-pthread
                 python3-matplotlib python3-numpy)

kvtier_install_packages() {
  local missing=()
  for p in "${KVTIER_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "kvtier: installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# kvtier_build BUILD_DIR [extra cmake arguments...]
kvtier_build() {
  local dir=$1
  shift
  # nvcc lives outside PATH in the CUDA toolkit's default install.
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
  fi
  cmake -S "$KVTIER_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" -j "$(nproc)"
}
