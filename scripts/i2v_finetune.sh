#!/usr/bin/env bash
# Issue #26: fine-tune the shipped students for image-to-video
# (configs/shapes/{sf-dmd,tf-scm}-i2v.json, data.given_frames_prob=0.5), each beside its control (the same config
# and steps with data.given_frames_prob=0, so that more training is not read as given-frame training), then score
# all four and the shipped students with `eval --image-cond` and plain `eval` on the same scenes. The shapes models
# leave a GPU mostly idle, so there the four trainings run side by side (one device call, ~7 min), then the
# evaluations; on the CPU (DEVICE=cpu) one after another.
# Results under $OUT: <run>_image_cond.json, <run>_eval.json, <run>.log and the fine-tuned models as i2v.tar.
# Settings: DEVICE (cuda), SCENES (evaluation scenes, 192), TRAIN_SECONDS (a training's hard limit, 300),
# EVAL_SECONDS (240), EXTRA (overrides for every training, e.g. train.eval_every=0), RUNS (where the runs go, /tmp/runs; the models in RUNS/i2v/<run>/model).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
device=${DEVICE:-cuda} out=$OUT cli=$CAUSAL_RCM runs=${RUNS:-/tmp/runs}/i2v ckpt=checkpoints/shapes
bg() { if [ "$device" = cpu ]; then "$@"; else "$@" & fi; }  # side by side on a GPU, one after another on the CPU
train() {  # train RUN RECIPE INIT TEACHER P
    timeout "${TRAIN_SECONDS:-300}" $cli train "$2" --config "configs/shapes/$2-i2v.json" data.given_frames_prob="$5" \
        train.init="$ckpt/$3/model" train.teacher="$ckpt/$4/model" train.out_dir="$runs/$1" train.device=$device \
        ${EXTRA:-} > "$out/$1.log" 2>&1
    echo "train exit $?" >> "$out/$1.log"
}
bg train sf-dmd-p0.5 sf-dmd sf-dmd teacher 0.5
bg train sf-dmd-p0 sf-dmd sf-dmd teacher 0
bg train tf-scm-p0.5 tf-scm tf-scm causal-teacher 0.5
bg train tf-scm-p0 tf-scm tf-scm causal-teacher 0
wait
tar cf "$out/i2v.tar" --exclude checkpoint --exclude tb -C "$(dirname "$runs")" i2v
score() {  # score NAME CHECKPOINT
    timeout "${EVAL_SECONDS:-240}" $cli eval shapes -c "$2" --image-cond -n "${SCENES:-192}" --device $device \
        --json "$out/$1_image_cond.json" > "$out/$1_eval.log" 2>&1
    timeout "${EVAL_SECONDS:-240}" $cli eval shapes -c "$2" -n "${SCENES:-192}" --device $device \
        --json "$out/$1_eval.json" >> "$out/$1_eval.log" 2>&1
}
for run in sf-dmd-p0.5 sf-dmd-p0 tf-scm-p0.5 tf-scm-p0; do bg score "$run" "$runs/$run/model"; done
bg score shipped-sf-dmd "$ckpt/sf-dmd/model"
bg score shipped-tf-scm "$ckpt/tf-scm/model"
wait
