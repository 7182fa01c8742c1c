#!/usr/bin/env bash
# Issue #25 on one GPU, one device call (~8 min): the stream options at Wan2.1-1.3B (random weights, 480x832, 81
# frames), each against the clean-context compiled stream in the same run: `bench stream --compile` clean, noisy
# context, int8 KV cache and --low-memory; the eager stream; the overlap trace (--profile); then the GPU tests of
# overlapped decoding. Needs diffusers for the VAE: `pip download --no-deps -d .whl diffusers` and carry .whl.
# Results under $OUT (the JSON, the logs, the trace). Settings: STEPS (1,2,4), BENCH_SECONDS (a run's limit, 150).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
out=$OUT cli=$CAUSAL_RCM
bench() {  # bench NAME OPTIONS...
    local name=$1; shift
    timeout "${BENCH_SECONDS:-150}" $cli bench stream --steps "${STEPS:-1,2,4}" --modes chunk --out "$out" "$@" \
        > "$out/$name.log" 2>&1
    echo "exit $?" >> "$out/$name.log"
}
bench compiled_clean --compile
bench compiled_noisy --compile --context noisy
bench compiled_int8 --compile --kv-int8
bench compiled_low_memory --compile --low-memory
bench eager_clean
bench profile --compile --profile --steps 2
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_pipeline.py tests/bench/test_stream.py -k overlap \
    > "$out/gpu_tests.log" 2>&1
echo "exit $?" >> "$out/gpu_tests.log"
