#!/usr/bin/env bash
# The CUDA toolchain for flora's `cuda` feature, from PyPI (Debian's main archive has none), and a
# command run with it:
#
#   scripts/cuda.sh cargo check --features cuda          # what CI does
#   scripts/cuda.sh cargo build --release --features cuda
#   scripts/cuda.sh nvcc -cubin -arch=sm_90 stages/src/model/kernels.cu   # flora's own kernels
#   scripts/cuda.sh scripts/nvrtc_check.sh           # the same through NVRTC, as a GPU run compiles them
#
# Installs (once) into $FLORA_CUDA_HOME (default ~/.cache/flora/cuda-$FLORA_CUDA_VERSION): nvcc and
# the headers candle's kernels compile with (about 100 MB of wheels); for
# `scripts/nvrtc_check.sh`, NVRTC too; and unless the command is a `cargo check`, `cargo clippy`,
# `nvcc` or that check, the cuBLAS, cuRAND, NVRTC and runtime libraries a binary links against
# (about 600 MB more) and a link-time stand-in for the driver's libcuda.so.1 (the real one comes
# with the NVIDIA driver where the binary runs). Versions are pinned as one set: a newer nvcc than
# the driver where the program runs emits PTX that driver cannot load, cudarc 0.19 rejects CUDA 13.5,
# and unpinned packages mix nvcc and nvvm releases. 13.0 matches driver 580, the H100/H200
# machines' driver; set FLORA_CUDA_VERSION=13.4 for a newer driver.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${FLORA_CUDA_VERSION:-13.0}
case "$version" in
13.0)
  compile=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
  link=(nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35)
  ;;
13.4)
  compile=(nvidia-cuda-nvcc==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-crt==13.4.92
    nvidia-cuda-runtime==13.4.92 nvidia-cuda-cccl==13.3.5.0.6)
  link=(nvidia-cuda-nvrtc==13.4.92 nvidia-cublas==13.4.3.11 nvidia-curand==10.4.4.72)
  ;;
*)
  echo "cuda.sh: FLORA_CUDA_VERSION=$version is not a pinned set (13.0 or 13.4)" >&2
  exit 2
  ;;
esac
home=${FLORA_CUDA_HOME:-$HOME/.cache/flora/cuda-$version}
root=$home/nvidia/cu13

# Downloads wheels (zip files) and unpacks them into $home: nothing is installed into a Python
# environment. $1 names the set, for the marker file that says it is complete.
fetch() {
  local set=$1
  shift
  [ -e "$home/.$set" ] && return 0
  scripts/setup.sh
  if ! python3 -m pip --version >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-pip
  fi
  echo "cuda.sh: installing CUDA $version ($set) from PyPI into $home" >&2
  local wheels
  wheels=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    -d "$wheels" "$@"
  mkdir -p "$home"
  for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$home"; done
  rm -rf "$wheels"
  touch "$home/.$set"
}

fetch compile "${compile[@]}"
chmod +x "$root"/bin/* "$root"/nvvm/bin/*
case " $* " in
*" check "* | *" clippy "* | " nvcc "*) linking=no ;;
" scripts/nvrtc_check.sh "*) linking=nvrtc ;;
*) linking=yes ;;
esac
if [ $linking = nvrtc ]; then
  # NVRTC alone (its wheel is the first of the link set), for the kernels' run-time compile.
  fetch nvrtc "${link[0]}"
fi
if [ $linking = yes ]; then
  fetch link "${link[@]}"
  # Unversioned names for the linker.
  for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
    ln -sf "lib$lib" "$root/lib/lib${lib%%.so.*}.so"
  done
  # The driver API's stand-in for the linker: every cu* function that cudarc (the version in
  # Cargo.lock) declares, as an empty symbol, in a library named libcuda.so.1 like the driver's. The
  # binary records that name, and the driver's own library is the one loaded at run time.
  cudarc=$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
  stub=$home/stubs/cudarc-$cudarc/libcuda.so
  if [ ! -e "$stub" ]; then
    cargo fetch --locked >/dev/null 2>&1 || cargo fetch --locked
    decls=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc"/src/driver/sys/mod.rs | head -1)
    mkdir -p "$(dirname "$stub")"
    grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$decls" | sort -u |
      sed -E 's/pub unsafe fn (.*)/void \1(void) {}/' |
      cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" -x c -
  fi
  export LIBRARY_PATH=$root/lib:$(dirname "$stub")${LIBRARY_PATH:+:$LIBRARY_PATH}
fi

export CUDA_HOME=$root CUDA_PATH=$root CUDA_ROOT=$root
export PATH=$root/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LD_LIBRARY_PATH=$root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec "$@"
