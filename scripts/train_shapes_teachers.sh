#!/usr/bin/env bash
# Train the shipped shapes-world teachers: the bidirectional teacher, then the causal teacher from it.
# Usage: scripts/train_shapes_teachers.sh OUT_DIR. Their settings live in configs/shapes/{teacher,causal-teacher}.json
# (each stops at its step count or its time guard, train.max_seconds); TEACHER_SECONDS / CAUSAL_SECONDS override the
# guards, EXTRA adds overrides to both (e.g. for a quick check), STAGES=teacher trains the teacher alone and
# TEACHER_INIT names another teacher to start the causal one from. Each stage folder records its exact command in
# command.txt. To ship them, copy OUT_DIR/teacher and OUT_DIR/causal-teacher without checkpoint/ and tb/ to
# checkpoints/shapes/.
set -euo pipefail
out=${1:?usage: train_shapes_teachers.sh OUT_DIR}
cli=${CAUSAL_RCM:-causal-rcm}
configs=$(cd "$(dirname "$0")/../configs/shapes" && pwd)
extra=${EXTRA:-}
stages=${STAGES:-teacher causal-teacher}
teacher_init=${TEACHER_INIT:-$out/teacher/model}

stage() {  # stage RECIPE DIR OVERRIDES...
    local recipe=$1 dir=$2; shift 2
    local command="$cli train $recipe --config $configs/$recipe.json train.out_dir=$dir $* $extra"
    mkdir -p "$dir"
    echo "$command" > "$dir/command.txt"
    $command
}

if [[ " $stages " == *" teacher "* ]]; then
    stage teacher "$out/teacher" ${TEACHER_SECONDS:+train.max_seconds=$TEACHER_SECONDS}
fi
if [[ " $stages " == *" causal-teacher "* ]]; then
    stage causal-teacher "$out/causal-teacher" train.init="$teacher_init" ${CAUSAL_SECONDS:+train.max_seconds=$CAUSAL_SECONDS}
fi
