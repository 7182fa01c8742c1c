#!/usr/bin/env bash
# Distil the shipped shapes-world students from the shipped teachers with the full recipe: TF-sCM from the causal
# teacher, then SF-DMD (matching the bidirectional teacher) from the TF-sCM student.
# Usage: scripts/train_shapes_students.sh OUT_DIR [TEACHERS_DIR] (TEACHERS_DIR defaults to checkpoints/shapes).
# Their settings live in configs/shapes/{tf-scm,sf-dmd}.json (each stops at its step count or its time guard,
# train.max_seconds); SCM_SECONDS / DMD_SECONDS override the guards, EXTRA adds overrides to both stages and
# SCM_EXTRA / DMD_EXTRA to one. Each stage folder records its exact command in command.txt. To ship them, copy
# OUT_DIR/tf-scm and OUT_DIR/sf-dmd without checkpoint/ and tb/ to checkpoints/shapes/.
set -euo pipefail
out=${1:?usage: train_shapes_students.sh OUT_DIR [TEACHERS_DIR]}
teachers=${2:-checkpoints/shapes}
cli=${CAUSAL_RCM:-causal-rcm}
configs=$(cd "$(dirname "$0")/../configs/shapes" && pwd)
extra=${EXTRA:-}
scm_extra=${SCM_EXTRA:-} dmd_extra=${DMD_EXTRA:-}

stage() {  # stage RECIPE DIR OVERRIDES...
    local recipe=$1 dir=$2; shift 2
    local command="$cli train $recipe --config $configs/$recipe.json train.out_dir=$dir $* $extra"
    mkdir -p "$dir"
    echo "$command" > "$dir/command.txt"
    $command
}

stage tf-scm "$out/tf-scm" train.teacher="$teachers/causal-teacher/model" ${SCM_SECONDS:+train.max_seconds=$SCM_SECONDS} $scm_extra
stage sf-dmd "$out/sf-dmd" train.teacher="$teachers/teacher/model" train.init="$out/tf-scm/model" \
    ${DMD_SECONDS:+train.max_seconds=$DMD_SECONDS} $dmd_extra
