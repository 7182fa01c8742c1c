#!/usr/bin/env bash
# The GPU work that CPU sessions leave for a device machine, one stage per call (each fits the
# device tool's 10-minute limit). Run from the repository root on the device, e.g.
#   bash scripts/device_session.sh teachers  # the shipped shapes-world teachers (scripts/train_shapes_teachers.sh)
#   bash scripts/device_session.sh tests     # the kernel and model tests on CUDA, alone
#   bash scripts/device_session.sh bench     # bench jvp, bench stream eager and compiled (Wan2.1-1.3B, random weights;
#                                            # BENCH_JVP=0 / BENCH_EAGER=0 leave out the first two, BENCH_TEST=0
#                                            # the compiled-blocks GPU test; BENCH_STEPS=1,2,4)
#   bash scripts/device_session.sh scm-step  # bench scm-step
#   bash scripts/device_session.sh students  # the shipped TF-sCM and SF-DMD students from those teachers
#   bash scripts/device_session.sh teachers+tests  # both in one call: the tests (CPU-bound compiles) beside training
#   bash scripts/device_session.sh students+cm     # the students, with cm-convergence and the kernel tests beside them
#   bash scripts/device_session.sh teachers+cm     # the teachers, with cm-convergence (from the shipped ones) beside them
#   bash scripts/device_session.sh ablation        # experiment init-ablation from the shipped teachers
#   bash scripts/device_session.sh atari           # the whole Breakout chain (scripts/train_atari.sh) from carried shards,
#   bash scripts/device_session.sh atari-teachers  # or its teachers alone,
#   bash scripts/device_session.sh atari-students  # then its students from those teachers (carried back as tars)
#       (carry .data/: breakout.tgz, the shards of `causal-rcm collect` packed by `tar czf .data/breakout.tgz -C DIR .`,
#       and for the students teacher.tar and causal-teacher.tar as the teachers' call returned them)
# Results go under $OUT (the device tool brings that folder back, at most 8 files): each trained
# stage comes back as one tar of its output folder without checkpoint/ and tb/. The device image
# lacks diffusers: put its wheel (and importlib_metadata's) in .whl/ (pip download --no-deps) and carry it.
set -euo pipefail
stage=${1:?usage: device_session.sh teachers|tests|teachers+tests|bench|scm-step|students|students+cm|teachers+cm|ablation|atari|atari-teachers|atari-students}
out=${OUT:-/tmp/out}
mkdir -p "$out"
source "$(dirname "$0")/device_env.sh"
runs=/tmp/runs
teachers=${TEACHERS:-checkpoints/shapes}
# Extra settings of the experiments' runs (the recipes' defaults otherwise). The 2026-12-02 GPU
# cm-convergence ran with "optim.lr=1e-4 train.batch_size=64 objective.tangent_warmup=300", under which
# TF-sCM and TF-MeanFlow degraded (docs/results/cm_convergence_gpu_2026-12-02.md).
cm_settings=${CM_SETTINGS:-}

# The kernel and model tests on CUDA: the GPU-marked ones and every other one there, which takes
# CUDA tensors whenever a GPU is present (tests/kernels/conftest.py).
# Most of their time is Triton compiling kernels (~35 s for each Wan-sized GPU test on an H200,
# 2026-12-01), so they run in parallel (pytest-xdist, in the device image), verbose so that a
# run cut short still says which passed.
gpu_tests() {
    timeout "${TESTS_SECONDS:-540}" python3 -m pytest -v -p no:cacheprovider -n "${TEST_WORKERS:-12}" \
        -m "gpu or not slow" tests/kernels tests/models > "$out/gpu_tests.txt" 2>&1
}

gpu_tests_kernels() {  # the kernel tests alone (the Triton JVP and backward kernels at real tile sizes)
    timeout "${TESTS_SECONDS:-540}" python3 -m pytest -v -p no:cacheprovider -n "${TEST_WORKERS:-12}" \
        -m "gpu or not slow" tests/kernels > "$out/gpu_tests.txt" 2>&1
}

train() {  # train SCRIPT LOG STAGE... [-- SCRIPT_ARGS...]: run a training script into $runs, then
    # one tar per stage folder that it made (without the resumable checkpoint), whatever its exit
    local script=$1 log=$2 status=0 names=(); shift 2
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do names+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    bash "$script" "$runs" "$@" > "$out/$log" 2>&1 || status=$?
    for name in "${names[@]}"; do
        if [ -d "$runs/$name" ]; then
            tar -C "$runs" -cf "$out/$name.tar" --exclude checkpoint --exclude tb "$name"
        fi
    done
    grep -E "trained|caption_adherence|direction_accuracy|long_" "$out/$log" || true
    return "$status"
}

cm_convergence() {  # experiment cm-convergence from $teachers at a GPU budget (CM_STEPS per method); its runs'
    # logs come back even when the guard stops it (`|| true`: under set -e a timed-out command would end
    # the subshell before the tar, as it did on 2026-12-02)
    timeout "${CM_SECONDS:-500}" $CAUSAL_RCM experiment cm-convergence -t "$teachers/causal-teacher/model" \
        --steps "${CM_STEPS:-600}" --eval-every "${CM_EVAL_EVERY:-100}" -o "$runs/cm-convergence" $cm_settings data.workers=3 \
        > "$out/cm_convergence.txt" 2>&1 || true
    # without the weights: three fp32 models made the tar too large to come back (2026-12-02)
    tar -C "$runs" -cf "$out/cm-convergence.tar" --exclude checkpoint --exclude tb --exclude samples --exclude model cm-convergence
}

case "$stage" in
    tests) gpu_tests || true; grep -cE " PASSED" "$out/gpu_tests.txt" || true; grep -E "FAILED|ERROR| passed| failed" "$out/gpu_tests.txt" | tail -20 || true ;;
    teachers) train scripts/train_shapes_teachers.sh teachers.txt teacher causal-teacher ;;
    teachers+tests)
        TEST_WORKERS=${TEST_WORKERS:-4} gpu_tests &
        tests=$!
        status=0
        train scripts/train_shapes_teachers.sh teachers.txt teacher causal-teacher || status=$?
        wait "$tests" || true
        grep -E "FAILED|ERROR| passed| failed" "$out/gpu_tests.txt" | tail -20 || true
        exit "$status" ;;
    bench)  # the whole-model JVP, the stream eager and with compiled blocks (profiled), the compiled-blocks GPU test
        if [ "${BENCH_JVP:-1}" = 1 ]; then $CAUSAL_RCM bench jvp --out "$out" 2>&1 | tee "$out/jvp.txt"; fi
        if [ "${BENCH_EAGER:-1}" = 1 ]; then $CAUSAL_RCM bench stream --steps "${BENCH_STEPS:-1,2,4}" --out "$out" 2>&1 | tee "$out/stream.txt"; fi
        $CAUSAL_RCM bench stream --steps "${BENCH_STEPS:-1,2,4}" --compile --profile --out "$out" 2>&1 | tee "$out/stream_compiled.txt"
        if [ "${BENCH_TEST:-1}" = 1 ]; then  # BENCH_TEST=0 leaves it out
            timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_wan.py -k compiled 2>&1 | tail -3 | tee "$out/gpu_compile_test.txt"
        fi ;;
    scm-step) $CAUSAL_RCM bench scm-step --out "$out" 2>&1 | tee "$out/scm_step.txt" ;;
    students) train scripts/train_shapes_students.sh students.txt tf-scm sf-dmd -- "$teachers" ;;
    ablation)  # SF-DMD from every initialisation, same budget (device_round.sh's settings, 6 runs at a time); its
        # folder comes back even when the guard stops it
        timeout "${ABLATION_SECONDS:-540}" bash scripts/device_round.sh ablation || true
        tar -cf "$out/init-ablation.tar" --exclude checkpoint --exclude tb --exclude samples --exclude model runs/gpu-ablation
        tail -20 runs/gpu-ablation/log.txt ;;
    students+cm)
        cm_convergence &
        cm=$!
        (TEST_WORKERS=${TEST_WORKERS:-3} TESTS_SECONDS=${TESTS_SECONDS:-480} gpu_tests_kernels) &
        kt=$!
        status=0
        train scripts/train_shapes_students.sh students.txt tf-scm sf-dmd -- "$teachers" || status=$?
        wait "$cm" "$kt" || true
        tail -15 "$out/cm_convergence.txt" || true
        grep -E "FAILED|ERROR| passed| failed" "$out/gpu_tests.txt" | tail -20 || true
        exit "$status" ;;
    teachers+cm)  # cm-convergence from the teachers already in $teachers, beside the training of new ones
        cm_convergence &
        cm=$!
        status=0
        train scripts/train_shapes_teachers.sh teachers.txt teacher causal-teacher || status=$?
        wait "$cm" || true
        tail -15 "$out/cm_convergence.txt" || true
        exit "$status" ;;
    atari|atari-teachers|atari-students)
        shards=/tmp/shards/breakout
        mkdir -p "$shards" "$runs"
        tar -C "$shards" -xzf .data/breakout.tgz
        if [ "$stage" = atari ]; then
            train scripts/train_atari.sh atari.txt teacher causal-teacher tf-scm sf-dmd -- "$shards" breakout
        elif [ "$stage" = atari-teachers ]; then
            STAGES="teacher causal-teacher" train scripts/train_atari.sh atari_teachers.txt teacher causal-teacher -- "$shards" breakout
        else
            for name in teacher causal-teacher; do tar -C "$runs" -xf ".data/$name.tar"; done
            STAGES="tf-scm sf-dmd" train scripts/train_atari.sh atari_students.txt tf-scm sf-dmd -- "$shards" breakout
        fi ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
