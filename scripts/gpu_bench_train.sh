#!/usr/bin/env bash
# Issue #22 item 6 on one GPU, one device call (under 8 min): `causal-rcm bench train --size wan2.1-1.3b`, the trainer's
# step of every recipe on random weights (bf16 autocast, 480x832, 21 latent frames, batch 1): TF diffusion, TF-sCM,
# TF-MeanFlow, SF-DMD generator and critic, each with activation checkpointing on and off, and TF-sCM / TF diffusion.
# Steps that run out of memory are recorded as "oom" with the sharding they would need. Under $OUT: the JSON
# (train_wan2.1-1.3b_<GPU>_<date>.json, rewritten after every step, so the time limit keeps what was measured), the log
# and the GPU's name. BENCH_SECONDS (default 440) bounds the benchmark, REPEATS (3) the timed steps after a warm-up.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
out=$OUT
timeout --kill-after=10 "${BENCH_SECONDS:-440}" $CAUSAL_RCM bench train --size wan2.1-1.3b \
    --repeats "${REPEATS:-3}" --out "$out" 2>&1 | tee "$out/bench_train.txt"
rc=${PIPESTATUS[0]}
note=""; [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note=" (stopped by the time limit: the JSON holds the steps measured)"
echo "bench train exit $rc$note" | tee -a "$out/bench_train.txt"
exit "$rc"
