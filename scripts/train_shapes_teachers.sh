#!/usr/bin/env bash
# Train the shipped shapes-world teachers: the bidirectional teacher, then the causal
# (teacher-forcing) teacher initialised from it. Usage: scripts/train_shapes_teachers.sh OUT_DIR
# Each stage stops at its step count or its time guard (TEACHER_SECONDS / CAUSAL_SECONDS),
# whichever comes first; a stage stopped by the guard is exported from its last checkpoint.
set -uo pipefail
out=${1:?usage: train_shapes_teachers.sh OUT_DIR}
cli=${CAUSAL_RCM:-causal-rcm}
python=${PYTHON:-python3}
common="train.progress=false train.log_every=100 train.ckpt_every=250"
extra=${EXTRA:-}  # more overrides, e.g. for a quick check

stage() {  # stage RECIPE DIR SECONDS OVERRIDES...
    local recipe=$1 dir=$2 seconds=$3; shift 3
    timeout "$seconds" $cli train "$recipe" $common train.out_dir="$dir" "$@" $extra
    if [ ! -f "$dir/model/model.safetensors" ]; then
        local step
        [ -f "$dir/checkpoint.pt" ] || { echo "$recipe: stopped before its first checkpoint" >&2; exit 1; }
        step=$($python -c "import torch; print(torch.load('$dir/checkpoint.pt', weights_only=False)['step'])")
        echo "time guard hit: exporting $recipe at step $step"
        $cli train "$recipe" $common train.out_dir="$dir" "$@" $extra train.steps="$step"
    fi
}

stage teacher "$out/teacher" "${TEACHER_SECONDS:-330}" train.steps=3000 train.batch_size=64 train.eval_every=1000
stage causal-teacher "$out/causal-teacher" "${CAUSAL_SECONDS:-180}" train.steps=1500 train.batch_size=64 \
    train.init="$out/teacher/model"
