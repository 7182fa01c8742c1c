#!/usr/bin/env bash
# Issue #24 on one GPU, one device call (~8 min): fine-tune the shipped SF-DMD student with long self forcing
# (configs/shapes/sf-dmd-long.json) and score it against the shipped student in the same run: 60 s streams of 192
# prompts and prompt switches at 4 s and 8 s on 32 prompts. The shipped student's scoring runs beside the training
# (the shapes models leave the GPU mostly idle). Results under $OUT; the trained model as sf-dmd-long.tar.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
out=$OUT cli=$CAUSAL_RCM
run=/tmp/runs/sf-dmd-long
score() {  # score NAME CHECKPOINT: the minute-long streams, then the switches
    $cli eval shapes -c "$2" -n "${STREAM_PROMPTS:-192}" --steps 2 --stream-seconds 60 --device cuda --json "$out/$1_stream.json"
    $cli eval shapes -c "$2" -n 32 --steps 2 --switch 4s --switch 8s --switch-to direction --device cuda \
        --json "$out/$1_switch.json"
}
score shipped checkpoints/shapes/sf-dmd/model > "$out/shipped_eval.txt" 2>&1 &
timeout "${TRAIN_SECONDS:-330}" $cli train sf-dmd --config configs/shapes/sf-dmd-long.json \
    train.teacher=checkpoints/shapes/teacher/model train.init=checkpoints/shapes/sf-dmd/model \
    train.out_dir=$run train.device=cuda > "$out/train.log" 2>&1
echo "train exit $?" >> "$out/train.log"
tar cf "$out/sf-dmd-long.tar" --exclude checkpoint --exclude tb -C /tmp/runs sf-dmd-long
export -f score; export cli out
timeout "${EVAL_SECONDS:-210}" bash -c "score long $run/model" > "$out/long_eval.txt" 2>&1
wait
