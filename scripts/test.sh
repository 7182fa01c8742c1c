#!/usr/bin/env bash
# Set up (with test dependencies) and run the default test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
exec .venv/bin/python -m pytest "$@"
