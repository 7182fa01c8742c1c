#!/usr/bin/env bash
# Train the shipped shapes-world teachers: the bidirectional teacher, then the causal
# (teacher-forcing) teacher initialised from it. Usage: scripts/train_shapes_teachers.sh OUT_DIR
# Each stage stops at its step count or its time guard (TEACHER_SECONDS / CAUSAL_SECONDS, the
# trainer's train.max_seconds), whichever comes first, and exports its EMA model either way.
# Each stage folder records its exact command in command.txt. To ship the result, copy the two
# folders without checkpoint.pt and tb/ to checkpoints/shapes/ (see checkpoints/shapes/README.md).
set -euo pipefail
out=${1:?usage: train_shapes_teachers.sh OUT_DIR}
cli=${CAUSAL_RCM:-causal-rcm}
# Data echo 8: rendering 256 videos on the CPU (~2 ms a video, 10 render workers: ~50 ms a batch)
# costs several GPU steps of this small model once its noise is drawn on the device, so each batch
# serves 8 steps, each with its own noise and times. The learning rate stays constant (with the EMA):
# on the CPU, 600 teacher steps annealed by optim.schedule=cosine ended at a held-out loss of 0.557
# against 0.504 at constant lr (EMA weights, 64 held-out videos at 4 noise levels): these teachers
# are still far from converged when their guard stops them.
common="train.progress=false train.log_every=200 train.ckpt_every=2000 train.export_dtype=float16 train.compile=true train.data_echo=8 data.workers=10"
extra=${EXTRA:-}  # more overrides, e.g. for a quick check
stages=${STAGES:-teacher causal-teacher}  # STAGES=teacher trains the bidirectional teacher alone
# The causal teacher starts from this stage's teacher, or from TEACHER_INIT (e.g. with STAGES=causal-teacher:
# TEACHER_INIT=checkpoints/shapes/teacher/model, the shipped one)
teacher_init=${TEACHER_INIT:-$out/teacher/model}

stage() {  # stage RECIPE DIR SECONDS OVERRIDES...
    local recipe=$1 dir=$2 seconds=$3; shift 3
    local command="$cli train $recipe $common train.out_dir=$dir train.max_seconds=$seconds $* $extra"
    mkdir -p "$dir"
    echo "$command" > "$dir/command.txt"
    $command
}

# Batch 256: the 3.5M-parameter model is launch-bound on a GPU, so a step of 256 videos costs
# about what one of 64 does (attempt 1, docs/results/shapes_teachers_attempt1.md). Evaluations count
# against the time guard: a few for the teacher, the final one alone for the causal teacher (its
# 4x-long rollouts are the costly part), on 48 held-out prompts.
# The teacher trains at flow-matching time shift 8 (the recipes' default is 3): its times then sit at high noise,
# where the caption decides what a video shows, and on one H100 (2026-12-02, docs/results/shapes_attempt5.md)
# 420 s at shift 8 reached caption 0.948 and direction 0.490 against 0.882 and 0.385 for 500 s at shift 3.
# With the packed codec (the shipped teacher's EXTRA, checkpoints/shapes/README.md) 1080 s on one H200 reached caption
# 0.906 and direction 0.971 on 192 prompts (2026-12-03, docs/results/shapes_attempt9.md); 960 s: 0.888 and 0.946.
if [[ " $stages " == *" teacher "* ]]; then
    stage teacher "$out/teacher" "${TEACHER_SECONDS:-1080}" train.steps=200000 train.batch_size=256 train.eval_every=10000 train.eval_videos=48 \
        objective.shift=8
fi
# The causal teacher trains at shift 8 too: from the shipped teacher on one H200 (2026-12-03,
# docs/results/shapes_attempt6.md) 140 s at shift 8 reached caption 0.906 against 0.892 at shift 3 (4x-rollout
# drift 0.183 against 0.151: within the noise of one 48-prompt evaluation).
if [[ " $stages " == *" causal-teacher "* ]]; then
    stage causal-teacher "$out/causal-teacher" "${CAUSAL_SECONDS:-140}" train.steps=100000 train.batch_size=256 \
        train.eval_every=20000 train.eval_videos=48 train.init="$teacher_init" objective.shift=8
fi
