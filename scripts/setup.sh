#!/usr/bin/env bash
# Installs what flora needs beyond Rust on a Debian machine; safe to run again (does nothing when
# everything is there). Called by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# rust-htslib runs bindgen (libclang) and builds htslib (zlib headers).
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
# The model's matrix products on the CPU go through OpenBLAS (stages/src/model/blas.rs).
for pkg in zlib1g-dev libopenblas-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# The demo's and the tests' `exec` stages use POSIX tools.
command -v awk >/dev/null 2>&1 || need+=(mawk)
command -v python3 >/dev/null 2>&1 || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust first (https://rustup.rs)" >&2
  exit 1
fi
