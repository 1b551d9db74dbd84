#!/usr/bin/env bash
# The k-mer baseline benchmark: flora against scikit-learn on the same 40,000 x 1 kb table.
# Installs scikit-learn into a virtual environment under target/ (PyPI), then runs
# `cargo bench --bench kmers`, which times both and checks that they predict the same values.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/bench-data/kmers/venv
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'scikit-learn==1.7.*' 'numpy<3'
fi
"$venv/bin/python" -c 'import sklearn, numpy; print(f"scikit-learn {sklearn.__version__}, numpy {numpy.__version__}")'
FLORA_SKLEARN_PYTHON="$PWD/$venv/bin/python" cargo bench --bench kmers
