#!/usr/bin/env bash
# The Slurm executor on fan-outs of trivial `exec` jobs: one Slurm job per flora job against
# bundles (`resources: {bundle: N}`), side by side in one run, on the Slurm that SLURM_CONF names
# (`scripts/slurm.sh start DIR` starts a one-node one).
#
#   SLURM_CONF=/tmp/sl/slurm/slurm.conf benches/engine/slurm.sh
#   SLURM_JOBS="100 1000" SLURM_BUNDLES="1 25 250" ... benches/engine/slurm.sh
#
# A fan-out of N jobs plus the one that reads them all, for each N in $SLURM_JOBS, is run with
# each bundle size in $SLURM_BUNDLES (a size of 1 is skipped above 200 jobs: Slurm's second or
# so per job makes it minutes). `--slurm-poll` is left at its default (5 s). The DAGs and caches
# go to $ENGINE_WORK (default /dev/shm/flora-slurm-bench), which every node must see.
#
# Then a chain of $SLURM_CHAIN (default 6) short jobs, each needing the one before; then a
# fan-out of $SLURM_SLOW_JOBS (100) jobs of $SLURM_SLEEP (0.5) seconds each, for each
# bundle:bundle_parallel pair in $SLURM_SHAPES (25:1 100:1 100:4).
#
# Writes a Markdown table to benches/out/engine-slurm.md and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/benches/out
WORK=${ENGINE_WORK:-/dev/shm/flora-slurm-bench}
mkdir -p "$OUT"
rm -rf "$WORK"
: "${SLURM_CONF:?set SLURM_CONF (scripts/slurm.sh start DIR prints it)}"
sinfo -h > /dev/null

cargo build --release --quiet
FLORA=$ROOT/target/release/flora

# timed_slurm_run DIR WORKFLOW: runs the workflow on Slurm with a cache in DIR, and prints the
# Slurm jobs it submitted and its wall time in seconds.
timed_slurm_run() {
  local t0 t1 submitted
  t0=$(date +%s.%N)
  (cd "$1" && "$FLORA" run "$2" --executor slurm --cache "$1/cache" > run.log 2>&1)
  t1=$(date +%s.%N)
  submitted=$(grep -h -o "submitted as Slurm job [0-9]*" "$1"/cache/logs/*.log | sort -u | wc -l)
  python3 -c "print($submitted, f'{$t1-$t0:.1f}')"
}

{
  echo "| fan-out jobs | bundle | Slurm jobs | flora run (all jobs) |"
  echo "| ---: | ---: | ---: | ---: |"
  for n in ${SLURM_JOBS:-100 1000}; do
    for b in ${SLURM_BUNDLES:-1 25 250}; do
      if [ "$b" = 1 ] && [ "$n" -gt 200 ]; then
        continue
      fi
      dir=$WORK/fanout-$n-$b
      python3 benches/engine/gen.py "$dir" fanout "$n" > /dev/null
      sed -i "s/^  make:\$/  make:\n    resources: {bundle: $b}/" "$dir/bench.yaml"
      read -r submitted seconds < <(timed_slurm_run "$dir" bench.yaml)
      python3 -c "print(f'| {$n + 1:,} | $b | $submitted | $seconds s |')"
    done
  done
  # A chain of short jobs: each waits for the one before, so it shows how soon a job's end is
  # seen and the next one submitted.
  n=${SLURM_CHAIN:-6}
  dir=$WORK/chain-$n
  mkdir -p "$dir"
  python3 - "$n" > "$dir/chain.yaml" <<'PY'
import sys
n = int(sys.argv[1])
print("name: chain\nstages:")
for i in range(n):
    inputs = f"\n    inputs: {{prev: s{i - 1}}}" if i else ""
    print(f"  s{i}:\n    kind: exec{inputs}\n    params: {{argv: [sh, -c, \"echo {i} > $FLORA_OUT/x\"]}}")
PY
  t0=$(date +%s.%N)
  (cd "$dir" && "$FLORA" run chain.yaml --executor slurm --cache "$dir/cache" > run.log 2>&1)
  t1=$(date +%s.%N)
  echo
  python3 -c "print(f'A chain of $n short jobs, one Slurm job each: {$t1-$t0:.1f} s')"
  # Jobs that take a while: bundles whose jobs run in turn against bundles that run several at
  # a time (`bundle_parallel`), each SLURM_SLEEP seconds long.
  n=${SLURM_SLOW_JOBS:-100}
  sleep_s=${SLURM_SLEEP:-0.5}
  echo
  echo "A fan-out of $n jobs of $sleep_s s each:"
  echo
  echo "| bundle | bundle_parallel | Slurm jobs | flora run (all jobs) |"
  echo "| ---: | ---: | ---: | ---: |"
  for shape in ${SLURM_SHAPES:-25:1 100:1 100:4}; do
    b=${shape%:*}
    w=${shape#*:}
    dir=$WORK/slow-$n-$b-$w
    mkdir -p "$dir"
    python3 - "$n" "$b" "$w" "$sleep_s" > "$dir/slow.yaml" <<'PY'
import sys
n, b, w, s = sys.argv[1:]
print(f"name: slow\nstages:\n  nap:\n    kind: exec\n    foreach: {list(range(int(n)))}")
print(f"    resources: {{bundle: {b}, bundle_parallel: {w}}}")
print(f"    params: {{argv: [sh, -c, \"sleep {s}; echo ${{item}} > $FLORA_OUT/x\"]}}")
PY
    read -r submitted seconds < <(timed_slurm_run "$dir" slow.yaml)
    echo "| $b | $w | $submitted | $seconds s |"
  done
} | tee "$OUT/engine-slurm.md"
