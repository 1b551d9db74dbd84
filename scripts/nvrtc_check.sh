#!/usr/bin/env bash
# flora's own CUDA kernels (stages/src/model/kernels.cu) through NVRTC, as a GPU run compiles them
# (gpu_kernels.rs: NVRTC, the card's compute capability), for the H100/H200 (compute_90), the
# A100 (compute_80) and the T4 (compute_75), each PTX then assembled by ptxas for its card:
# a kernel that nvcc takes but NVRTC or the assembler does not fails here, not on a card. Run
# through scripts/cuda.sh, which provides NVRTC, its headers' folder and ptxas:
#
#   scripts/cuda.sh scripts/nvrtc_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CUDA_HOME:?run this through scripts/cuda.sh}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O1 -o "$work/nvrtc_check" scripts/nvrtc_check.c -L"$CUDA_HOME/lib" -l:libnvrtc.so.13
archs=(90 80 75)
"$work/nvrtc_check" stages/src/model/kernels.cu "$work/kernels" "${archs[@]/#/compute_}"
for a in "${archs[@]}"; do
  ptxas -arch="sm_$a" -o "$work/kernels.sm_$a.cubin" "$work/kernels.compute_$a.ptx"
done
echo "flora's CUDA kernels compile through NVRTC and ptxas for$(printf ' sm_%s' "${archs[@]}")"
