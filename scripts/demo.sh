#!/usr/bin/env bash
# Builds flora and runs the demo workflow end to end on data it generates itself (no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
target/release/flora run workflows/demo.yaml "$@"
echo
echo "Outputs are linked under results/demo/: open results/demo/report/report.html, or run target/release/flora check workflows/demo.yaml"
