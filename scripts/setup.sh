#!/usr/bin/env bash
# Create .venv with causal-rcm installed (editable). `--test` adds the test dependencies.
# An existing torch (e.g. a CUDA build on a GPU machine) is reused through --system-site-packages;
# with none, torch 2.13.0 is installed (a CPU build from local disk on these machines), so a plain
# CPU install never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install --quiet --editable ".${extras}"
