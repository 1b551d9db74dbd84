#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, doc and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export FLORA_SHARED_DATA=${FLORA_SHARED_DATA:-$(cd .. && pwd)/shared/data}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The GPU path must not rot on machines without a GPU: the `cuda` feature compiles, with nvcc and
# the CUDA headers from PyPI (scripts/cuda.sh; candle's kernels take a few minutes to compile).
scripts/cuda.sh cargo check --workspace --features cuda --locked
