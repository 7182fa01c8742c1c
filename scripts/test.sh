#!/usr/bin/env bash
# Set up (with test dependencies) and run the default test suite. Extra arguments go to pytest.
# The tests run on TEST_WORKERS pytest-xdist workers (default 2, one torch thread each: tests/conftest.py); 0 runs
# them in this process.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist worksteal "$@"
