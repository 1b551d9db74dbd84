#!/usr/bin/env bash
# The engine benchmark: flora's plan, cached run and full run on DAGs of 1,000 and 10,000 trivial
# `exec` jobs, side by side with Snakemake's dry run (`snakemake -n`) on the same DAG.
#
#   benches/engine/run.sh            # everything (about 5 minutes on 2 cores)
#   SNAKEMAKE=0 benches/engine/run.sh   # flora only
#   ENGINE_WORK=/dev/shm/engine benches/engine/run.sh   # the DAGs and caches on tmpfs
#
# The DAGs, their caches and outputs go to $ENGINE_WORK (default benches/out/engine-work). A full
# run creates about five files a job and deletes two, so on some file systems its time depends
# on the disk as much as on flora: on an ext4 without a journal (this project's development
# machine) the inode allocator reads past every inode deleted in the last 30 s, and the same
# 1,001 jobs took 2.4 to 4.1 s. On tmpfs the figures are flora's and the kernel's alone.
#
# Writes a Markdown table to benches/out/engine.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/benches/out
WORK=${ENGINE_WORK:-$OUT/engine-work}
mkdir -p "$OUT"
rm -rf "$WORK"

cargo build --release --quiet
FLORA=$ROOT/target/release/flora

SNAKEMAKE=${SNAKEMAKE:-1}
if [ "$SNAKEMAKE" = 1 ]; then
  VENV=$ROOT/target/bench-venv
  if [ ! -x "$VENV/bin/snakemake" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "snakemake==9.27.1"
  fi
  SMK=$VENV/bin/snakemake
fi

# Best of $REPS wall-clock seconds of a command run in $1.
REPS=${REPS:-3}
best() {
  local dir=$1; shift
  local best=""
  for _ in $(seq "$REPS"); do
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$dir" && "$@" >/dev/null 2>&1)
    t1=$(date +%s.%N)
    best=$(python3 -c "a='$best'; b=$t1-$t0; print(f'{min(float(a), b) if a else b:.3f}')")
  done
  echo "$best"
}
once() {
  local dir=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$dir" && "$@" >/dev/null 2>&1)
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1-$t0:.3f}')"
}

{
  echo "Engine benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, flora $("$FLORA" --version | cut -d' ' -f2), in $WORK ($(stat -f -c %T "$(dirname "$WORK")"))"
  [ "$SNAKEMAKE" = 1 ] && echo "Snakemake $("$SMK" --version)"
  echo
  echo "| DAG | jobs | flora plan (empty cache) | flora run (all jobs) | per job | flora run (all cached) | flora plan (all cached) | snakemake -n |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} > "$OUT/engine.md"

for shape in "fanout 1000" "grid 10 100" "fanout 10000" "grid 10 1000"; do
  dir=$WORK/${shape// /-}
  jobs=$(python3 benches/engine/gen.py "$dir" $shape)
  plan_empty=$(best "$dir" "$FLORA" plan bench.yaml)
  full=$(once "$dir" "$FLORA" run bench.yaml)
  per_job=$(python3 -c "print(f'{1000*$full/$jobs:.2f} ms')")
  cached=$(best "$dir" "$FLORA" run bench.yaml)
  plan_cached=$(best "$dir" "$FLORA" plan bench.yaml)
  smk="-"
  if [ "$SNAKEMAKE" = 1 ]; then
    smk=$(best "$dir" "$SMK" -n --cores 1 --quiet all)
    smk="$smk s"
  fi
  echo "| $shape | $jobs | $plan_empty s | $full s | $per_job | $cached s | $plan_cached s | $smk |" >> "$OUT/engine.md"
done
cat "$OUT/engine.md"
