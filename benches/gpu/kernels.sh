#!/usr/bin/env bash
# Every kernel of a bf16 training step of the paper's model (6 x 768, batch 84 x 256), flora's and
# PyTorch's, timed one by one by Nsight Compute (ncu, on the device image) on the machine with the
# GPU, after benches/gpu/prepare.sh:
#
#   OUT=... bash benches/gpu/kernels.sh     # there: flora-kernels.csv, torch-kernels.csv
#                                           # (KERNELS_TORCH=0: flora's alone;
#                                           # ATTENTION=flash: flash attention's step)
#   python3 benches/gpu/kernels.py DIR      # here: each step's time by kernel
#
# flora runs a warm-up step and one more, PyTorch one warm-up and one timed step; kernels.py takes
# the last step of each (flora's steps end with LAMB's lamb_apply, PyTorch's with the optimizer's
# last kernel before the next forward pass). ncu serialises kernels and reads only their
# durations (one pass, no replay), with the clocks left alone.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benches/out/gpu}
mkdir -p "$out"
source benches/gpu/libraries.sh
bin=${FLORA_BIN:-.gpu/flora}
[ -x "$bin" ] || { gunzip -c "$bin.gz" >"$bin" && chmod +x "$bin"; }
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "kernels.sh: no ncu here" >&2; exit 1; }
limit=${GPU_RUN_SECONDS:-200}
profile() {
  local name=$1
  shift
  timeout "$limit" "$ncu" --clock-control none --target-processes all --metrics gpu__time_duration.sum \
    --csv --page raw "$@" >"$out/$name-kernels.csv" 2>>"$out/kernels.log"
  echo "kernels.sh: $name exit status $?, $(wc -l <"$out/$name-kernels.csv") lines" | tee -a "$out/kernels.log"
}
profile flora "$bin" bench --gpu 0 --precision "${PRECISION:-bf16}" --attention "${ATTENTION:-products}" \
  --batch 84 --len "${LEN:-256}" --steps 1
[ "${KERNELS_TORCH:-1}" = 1 ] || exit 0
profile torch python3 benches/torch_step.py --precision "${PRECISION:-bf16}" --attn sdpa --len "${LEN:-256}" \
  --warmup 1 --steps 1
