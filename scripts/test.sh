#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, doc and integration tests (the Slurm executor's
# against a one-node Slurm started here, scripts/slurm.sh); then the demo at full
# size, reproduced: its key figures checked against workflows/demo.expected.yaml, a second run
# that must be fully cached, and a fine-tuning edit that must re-run only what depends on it;
# then the Arabidopsis workflow on the shared real data, checked against its expected figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FLORA_SHARED_DATA=${FLORA_SHARED_DATA:-$(cd .. && pwd)/shared/data}
# Every cargo command below builds with one profile, `ci` (Cargo.toml: optimised, with debug
# assertions and overflow checks), so that what one compiles the next reuses.
profile=ci
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --profile $profile -- -D warnings

# A real Slurm for the Slurm executor's tests (tests/slurm.rs): munged, slurmctld and slurmd on
# this machine, stopped by their process ids when this script ends.
work=$(mktemp -d)
cleanup() {
    scripts/slurm.sh stop "$work/slurm" || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/slurm.sh start "$work/slurm"
export SLURM_CONF=$work/slurm/slurm.conf
cargo test --workspace --locked --profile $profile
scripts/slurm.sh stop "$work/slurm"
unset SLURM_CONF

# The demo, reproduced, in a cache of its own, with the binary the tests just ran.
cargo build --locked --profile $profile
flora=target/$profile/flora
demo_cache=$work/demo
mkdir -p "$demo_cache"
$flora --cache "$demo_cache" run workflows/demo.yaml --results "$demo_cache/results"
$flora --cache "$demo_cache" check workflows/demo.yaml
again=$($flora --cache "$demo_cache" run workflows/demo.yaml --results "$demo_cache/results" 2>&1)
echo "$again" | tail -1
echo "$again" | grep -q "37 jobs: 0 ran, 37 cached" || { echo "the second demo run was not fully cached"; exit 1; }
to_run=$($flora --cache "$demo_cache" plan workflows/demo.yaml --set finetune.lr=0.001 --json |
    python3 -c 'import json, sys; print(" ".join(r["job"] for r in json.load(sys.stdin) if r["state"] != "cached"))')
[ "$to_run" = "finetune analysis importance report" ] ||
    { echo "a fine-tuning edit would re-run: $to_run"; exit 1; }
echo "demo reproduced: figures within tolerance, fully cached re-run, a fine-tuning edit re-runs: $to_run"

# Real data: workflows on the shared data, their figures checked the same way. `real NAME PATH`
# runs workflows/NAME.yaml when PATH (what it reads, under the data folder) is there.
real() {
    if [ -e "$FLORA_SHARED_DATA/$2" ]; then
        $flora --cache "$demo_cache" run "workflows/$1.yaml" --set "vars.data=$FLORA_SHARED_DATA" \
            --results "$demo_cache/$1"
        $flora --cache "$demo_cache" check "workflows/$1.yaml" --set "vars.data=$FLORA_SHARED_DATA"
    else
        echo "SKIPPED workflows/$1.yaml: no real data at FLORA_SHARED_DATA=$FLORA_SHARED_DATA" >&2
    fi
}
real arabidopsis athaliana_chr1
# FloraBERT's own maize NAM fine-tuning table, on its published folds.
real nam maize_nam_expression/merged_seq_genex.csv

# The GPU path must not rot on machines without a GPU: the `cuda` feature compiles, with nvcc and
# the CUDA headers from PyPI (scripts/cuda.sh). candle's kernels go through nvcc's whole pipeline
# (front end, NVVM, ptxas) but with its fast-compile level, as a check links nothing: measured on
# one of candle's quantized-matmul files, 84 s at the build's -O3 against 12 s; and they compile
# on every core (candle's kernel builder uses half of them by default).
# nvcc 13.0 has crashed once in CI ("Segmentation fault" in candle-kernels' mmq_instance_q2_k.cu,
# which compiled cleanly in 44 s and 350 MB on the Intel machine of that stop), so a failed
# check is retried once: the kernels that did compile are kept (candle's kernel builder is
# incremental) and a real compile error fails twice.
cuda_check() {
    NVCC_APPEND_FLAGS="-Ofc max" CUDAFORGE_THREADS=$(nproc) \
        scripts/cuda.sh cargo check --workspace --features cuda --locked --profile $profile
}
if ! cuda_check; then
    echo "RETRYING the cuda check once: the first attempt failed (see above)" >&2
    cuda_check
fi
# flora's own kernels (stages/src/model/kernels.cu, compiled by NVRTC when a GPU run starts)
# through nvcc's front end and ptxas for the H100/H200 (sm_90), warnings and register spills as
# errors, so that a kernel that does not compile fails here rather than on the card. What they
# compute is tested on the CPU by the kernel emulator's tests (model/kernel_emulator.rs).
kernels_cubin=$(mktemp)
scripts/cuda.sh nvcc -cubin -arch=sm_90 -Xptxas --warn-on-spills --Werror all-warnings \
    -o "$kernels_cubin" stages/src/model/kernels.cu
rm -f "$kernels_cubin"
echo "flora's CUDA kernels compile for sm_90"
# The same kernels the way a GPU run compiles them: NVRTC (whose front end has no host headers and
# its own built-ins) for compute_90, 80 and 75, each PTX assembled by ptxas for its card.
scripts/cuda.sh scripts/nvrtc_check.sh
