#!/usr/bin/env bash
# Sets everything up (packages, build) and runs the main job on its built-in default:
# kvtier-probe (hardware ceilings), then a small decode demo on the reference attention.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvtier_install_packages
kvtier_build "$KVTIER_ROOT/build"
"$KVTIER_ROOT/build/tools/probe/kvtier-probe"
echo
"$KVTIER_ROOT/build/tools/demo/kvtier-demo"
