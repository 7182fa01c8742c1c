# Sourced by the device-machine scripts (scripts/gpu_*.sh, device_session.sh, device_round.sh): the device image has
# torch and triton but not every dependency, so wheels carried in .whl/ (diffusers, webdataset, braceexpand: fetch
# them with `pip download --no-deps -d .whl NAME`) go into /tmp/site; the package runs from src/ uninstalled.
# Sets CAUSAL_RCM (the CLI) and OUT (results; default /tmp/out), and records the GPU in OUT/gpu.txt.
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} CAUSAL_RCM=${CAUSAL_RCM:-"python3 -m causal_rcm.cli"} PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
fi
