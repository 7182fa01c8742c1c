#!/usr/bin/env bash
# Distil the shipped shapes-world students from the shipped teachers with the full recipe:
# TF-sCM from the causal teacher, then SF-DMD (matching the bidirectional teacher) from the
# TF-sCM student. Usage: scripts/train_shapes_students.sh OUT_DIR [TEACHERS_DIR]
# (TEACHERS_DIR defaults to checkpoints/shapes). Each stage stops at its step count or its time
# guard (SCM_SECONDS / DMD_SECONDS, the trainer's train.max_seconds) and exports its EMA student;
# each stage folder records its exact command in command.txt. To ship them, copy
# OUT_DIR/tf-scm and OUT_DIR/sf-dmd without checkpoint.pt and tb/ to checkpoints/shapes/.
set -euo pipefail
out=${1:?usage: train_shapes_students.sh OUT_DIR [TEACHERS_DIR]}
teachers=${2:-checkpoints/shapes}
cli=${CAUSAL_RCM:-causal-rcm}
# Evaluations on 48 held-out prompts (the shipped students of 2026-12-03 had the trainer's 16: 0.06 a video)
common="train.progress=false train.log_every=50 train.ckpt_every=250 train.batch_size=32 data.frames_per_chunk=2 train.export_dtype=float16 train.eval_videos=48"
extra=${EXTRA:-}  # more overrides for both stages
scm_extra=${SCM_EXTRA:-} dmd_extra=${DMD_EXTRA:-}  # ... for one stage (e.g. SCM_EXTRA="optim.lr=5e-5")

stage() {  # stage RECIPE DIR SECONDS OVERRIDES...
    local recipe=$1 dir=$2 seconds=$3; shift 3
    local command="$cli train $recipe $common train.out_dir=$dir train.max_seconds=$seconds $* $extra"
    mkdir -p "$dir"
    echo "$command" > "$dir/command.txt"
    $command
}

# TF-sCM at lr 1e-4 with a 300-step tangent warm-up (the recipe's defaults: 2e-5, 1000). On one H200 (~500-770
# TF-sCM steps in 200 s) the 2-step caption was 0.80 at the defaults, 0.86 at lr 5e-5 (the students shipped on
# 2026-12-03) and 0.93 / 0.91 in two runs at 1e-4 (docs/results/shapes_attempt6.md); from attempt 7's packed causal
# teacher 0.94 at 1e-4 (shapes_attempt7.md).
# SF-DMD at lr 2e-5 with 3 critic updates per generator update, batch 16, on rollouts of up to 4x the training
# length (objective.rollout_factor=4), for 600 steps. In attempt 7 (shapes_attempt7.md) 2x rollouts halved the drift
# and caption adherence was best at 100-200 steps; from attempt 10's chain (shapes_attempt10.md, one H200, 48
# prompts every 100 steps) 4x rollouts kept the 2-step caption at 0.93-0.97 to 600 steps (0.90 at 1200) while the
# 4x-length drift fell from 0.49 to 0.30 (2x rollouts: 0.34); 600 steps take ~150 s there.
stage tf-scm "$out/tf-scm" "${SCM_SECONDS:-200}" train.steps=2000 train.eval_every=500 \
    train.teacher="$teachers/causal-teacher/model" optim.lr=1e-4 objective.tangent_warmup=300 $scm_extra
stage sf-dmd "$out/sf-dmd" "${DMD_SECONDS:-400}" train.steps=600 train.eval_every=100 train.batch_size=16 optim.lr=2e-5 \
    objective.critic_steps=3 objective.rollout_factor=4 \
    train.teacher="$teachers/teacher/model" train.init="$out/tf-scm/model" $dmd_extra
