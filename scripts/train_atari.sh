#!/usr/bin/env bash
# Train an Atari world-model chain from shards of `causal-rcm collect`: the bidirectional teacher, the causal
# teacher from it, TF-sCM from the causal teacher, SF-DMD from TF-sCM matching the teacher (all with actions).
# Usage: scripts/train_atari.sh OUT_DIR SHARDS [GAME], e.g. scripts/train_atari.sh /tmp/breakout shards/breakout breakout
# (GAME names the folder of configs/atari/, default breakout).
# Settings live in configs/atari/GAME/{teacher,causal-teacher,tf-scm,sf-dmd}.json (each stops at its step count or
# its time guard, train.max_seconds); STAGES picks stages (default all four, in order), EXTRA adds overrides to each
# (e.g. a quick check). Each stage folder records its exact command in command.txt. To ship a chain, copy each
# stage folder without checkpoint/ and tb/ to checkpoints/atari/GAME/.
set -euo pipefail
out=${1:?usage: train_atari.sh OUT_DIR SHARDS [GAME]}
shards=${2:?usage: train_atari.sh OUT_DIR SHARDS [GAME]}
game=${3:-breakout}
cli=${CAUSAL_RCM:-causal-rcm}
configs=$(cd "$(dirname "$0")/../configs/atari/$game" && pwd)
extra=${EXTRA:-}
stages=${STAGES:-teacher causal-teacher tf-scm sf-dmd}

stage() {  # stage RECIPE OVERRIDES...
    local recipe=$1; shift
    [[ " $stages " == *" $recipe "* ]] || return 0
    local command="$cli train $recipe --config $configs/$recipe.json data.shards=$shards train.out_dir=$out/$recipe $* $extra"
    mkdir -p "$out/$recipe"
    echo "$command" > "$out/$recipe/command.txt"
    $command
}

stage teacher
stage causal-teacher train.init="$out/teacher/model"
stage tf-scm train.teacher="$out/causal-teacher/model"
stage sf-dmd train.teacher="$out/teacher/model" train.init="$out/tf-scm/model"
