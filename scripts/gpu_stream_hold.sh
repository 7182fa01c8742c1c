#!/usr/bin/env bash
# Issue #24's stream targets on one GPU (~6 min), the shipped 2-step SF-DMD student at its defaults and with a
# chunk of attention sink (--sink 2, which held 60 s streams on 16 prompts on the CPU: stream_ablation_2026-12-07),
# side by side in the same run: 60 s streams of 192 prompts; 10-minute streams of 16 prompts (last minute);
# prompt switches at 4 s and 8 s on 32 prompts, to reversed directions and to the next scene.
# Results under $OUT/<name>.json. Settings: PROMPTS (192), LONG_PROMPTS (16), EVAL_SECONDS (a run's limit, 540).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
out=$OUT cli=$CAUSAL_RCM ckpt=${CKPT:-checkpoints/shapes/sf-dmd/model}
ev() {  # ev NAME ARGS...
    local name=$1; shift
    timeout "${EVAL_SECONDS:-540}" $cli eval shapes -c "$ckpt" --steps 2 --device cuda --json "$out/$name.json" "$@" \
        > "$out/$name.log" 2>&1
    echo "exit $?" >> "$out/$name.log"
}
for sink in 0 2; do
    ev minute_sink$sink -n "${PROMPTS:-192}" --stream-seconds 60 --sink $sink &
    ev ten_minutes_sink$sink -n "${LONG_PROMPTS:-16}" --stream-seconds 600 --sink $sink &
    for to in direction scene; do
        ev switch_${to}_sink$sink -n 32 --switch 4s --switch 8s --switch-to $to --sink $sink &
    done
done
wait
