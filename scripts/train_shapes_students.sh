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
common="train.progress=false train.log_every=50 train.ckpt_every=250 train.batch_size=32 data.frames_per_chunk=2 train.export_dtype=float16"
extra=${EXTRA:-}  # more overrides for both stages
scm_extra=${SCM_EXTRA:-} dmd_extra=${DMD_EXTRA:-}  # ... for one stage (e.g. SCM_EXTRA="optim.lr=5e-5")

stage() {  # stage RECIPE DIR SECONDS OVERRIDES...
    local recipe=$1 dir=$2 seconds=$3; shift 3
    local command="$cli train $recipe $common train.out_dir=$dir train.max_seconds=$seconds $* $extra"
    mkdir -p "$dir"
    echo "$command" > "$dir/command.txt"
    $command
}

# The recipes' learning rates (2e-5 TF-sCM, 1e-5 SF-DMD). Not the CPU quickstart's 1e-4: in the GPU
# cm-convergence of 2026-12-02 (docs/results/cm_convergence_gpu_2026-12-02.md) TF-sCM at 1e-4, batch 64 and
# a 300-step tangent warm-up fell to 2-step caption adherence 0.23 in 600 steps.
stage tf-scm "$out/tf-scm" "${SCM_SECONDS:-200}" train.steps=2000 train.eval_every=500 \
    train.teacher="$teachers/causal-teacher/model" $scm_extra
stage sf-dmd "$out/sf-dmd" "${DMD_SECONDS:-190}" train.steps=1000 train.eval_every=250 \
    train.teacher="$teachers/teacher/model" train.init="$out/tf-scm/model" $dmd_extra
