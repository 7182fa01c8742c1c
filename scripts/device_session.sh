#!/usr/bin/env bash
# The GPU work that CPU sessions leave for a device machine, one stage per call (each fits the
# device tool's 10-minute limit). Run from the repository root on the device, e.g.
#   bash scripts/device_session.sh tests     # GPU-marked tests: kernels on H100, math vs flex gradients
#   bash scripts/device_session.sh bench     # bench scm-step and bench stream (Wan2.1-1.3B, random weights)
#   bash scripts/device_session.sh teachers  # the shipped shapes-world teachers (scripts/train_shapes_teachers.sh)
#   bash scripts/device_session.sh students  # the shipped TF-sCM and SF-DMD students from those teachers
# Results go under $OUT (the device tool brings that folder back). The device image lacks click,
# tqdm and diffusers: put their wheels in .whl/ (pip download --no-deps) and carry it.
set -euo pipefail
stage=${1:?usage: device_session.sh tests|bench|teachers|students}
out=${OUT:-/tmp/out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install --quiet --no-deps .whl/*.whl; fi
export PYTHONPATH=src CAUSAL_RCM="python3 -m causal_rcm.cli"
case "$stage" in
    tests) python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/models 2>&1 | tee "$out/gpu_tests.txt" ;;
    bench)
        $CAUSAL_RCM bench scm-step --out "$out" 2>&1 | tee "$out/scm_step.txt"
        $CAUSAL_RCM bench stream --out "$out" 2>&1 | tee "$out/stream.txt" ;;
    teachers) bash scripts/train_shapes_teachers.sh "$out/teachers" 2>&1 | tee "$out/teachers.txt" ;;
    students) bash scripts/train_shapes_students.sh "$out/students" "${TEACHERS:-checkpoints/shapes}" 2>&1 | tee "$out/students.txt" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
