#!/usr/bin/env bash
# Idempotent set-up: a local virtual environment in .venv with the project, ONNX Runtime's CPU
# build, its HTTP/Triton serving extra and its test tools. On a CUDA machine, install the `gpu`
# extra instead of `cpu` (never both: the two ONNX Runtime builds break each other).
# Re-installs only when pyproject.toml changes. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PY --version)" >&2
    "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing the project, its serving extra and dev tools into .venv (first time: a few minutes)" >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[cpu,dev,serve]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
