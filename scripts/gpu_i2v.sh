#!/usr/bin/env bash
# Issue #26 on one GPU, one device call (~7 min): fine-tune the shipped students for image-to-video
# (configs/shapes/{sf-dmd,tf-scm}-i2v.json, data.given_frames_prob=0.5), each beside its control (the same config
# and steps with data.given_frames_prob=0, so that more training is not read as given-frame training), then score
# all four and the shipped students with `eval --image-cond` and plain `eval` on the same scenes. The shapes models
# leave the GPU mostly idle, so the four trainings run side by side, then the evaluations.
# Results under $OUT: <run>_image_cond.json, <run>_eval.json, <run>.log and the fine-tuned models as i2v.tar.
# Settings: SCENES (evaluation scenes, 192), TRAIN_SECONDS (a training's hard limit, 300), EVAL_SECONDS (240).
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
out=$OUT cli=$CAUSAL_RCM runs=/tmp/runs/i2v ckpt=checkpoints/shapes
train() {  # train RUN RECIPE INIT TEACHER P
    timeout "${TRAIN_SECONDS:-300}" $cli train "$2" --config "configs/shapes/$2-i2v.json" data.given_frames_prob="$5" \
        train.init="$ckpt/$3/model" train.teacher="$ckpt/$4/model" train.out_dir="$runs/$1" train.device=cuda \
        > "$out/$1.log" 2>&1
    echo "train exit $?" >> "$out/$1.log"
}
train sf-dmd-p0.5 sf-dmd sf-dmd teacher 0.5 &
train sf-dmd-p0 sf-dmd sf-dmd teacher 0 &
train tf-scm-p0.5 tf-scm tf-scm causal-teacher 0.5 &
train tf-scm-p0 tf-scm tf-scm causal-teacher 0 &
wait
tar cf "$out/i2v.tar" --exclude checkpoint --exclude tb -C /tmp/runs i2v
score() {  # score NAME CHECKPOINT
    timeout "${EVAL_SECONDS:-240}" $cli eval shapes -c "$2" --image-cond -n "${SCENES:-192}" --device cuda \
        --json "$out/$1_image_cond.json" > "$out/$1_eval.log" 2>&1
    timeout "${EVAL_SECONDS:-240}" $cli eval shapes -c "$2" -n "${SCENES:-192}" --device cuda \
        --json "$out/$1_eval.json" >> "$out/$1_eval.log" 2>&1
}
for run in sf-dmd-p0.5 sf-dmd-p0 tf-scm-p0.5 tf-scm-p0; do score "$run" "$runs/$run/model" & done
score shipped-sf-dmd "$ckpt/sf-dmd/model" &
score shipped-tf-scm "$ckpt/tf-scm/model" &
wait
