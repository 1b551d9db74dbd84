#!/usr/bin/env bash
# Builds what a GPU session carries to the device machine, into .gpu/ (ignored by git): the
# `cuda` build of flora and the stage crate's unit-test binary (its `gpu_` tests), each stripped
# and gzipped, and the CPU's side of the small models that the card's runs are checked against
# (.gpu/reference, benches/gpu/small.sh), made here with the CPU build of the same commit (the
# `cuda` build needs the driver's libcuda to start). Then, on the device machine, with .gpu
# carried along:
#
#   bash benches/gpu/prepare.sh                 # here, on a machine without a GPU
#   bash benches/gpu/session.sh                 # there: the gpu_ tests, then run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/cuda.sh cargo build --release --features cuda
# The test binary's path, from cargo's own report of what it built.
tests=$(scripts/cuda.sh cargo test --release --features cuda -p flora-stages --lib --no-run \
  --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')
[ -n "$tests" ] || { echo "prepare.sh: cargo built no test binary" >&2; exit 1; }
mkdir -p .gpu
strip -o .gpu/flora target/release/flora
strip -o .gpu/stage-tests "$tests"
gzip -f .gpu/flora .gpu/stage-tests
cargo build --release
echo "prepare.sh: the CPU's small models (a few minutes)" >&2
: >.gpu/reference.log
FLORA_BIN=target/release/flora SMALL_LOG=.gpu/reference.log bash benches/gpu/small.sh cpu .gpu/reference
du -sh .gpu/*
