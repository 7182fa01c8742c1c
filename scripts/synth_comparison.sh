#!/usr/bin/env bash
# The shapes world's miniature of the paper's "synthetic data only" claim: the students of the full recipe (causal
# teacher -> TF-sCM -> SF-DMD) trained on the shipped teacher's own samples (`causal-rcm synth`) against the same
# students trained on the world's renders, with the same settings and budgets, scored by the oracle.
#
# Usage: scripts/synth_comparison.sh OUT STEP, where STEP is one of
#   synth      OUT/prompts.txt (`causal-rcm data prompts`) and the teacher's samples of them in OUT/shards
#   synthetic  the three stages on OUT/shards (configs/shapes/synthetic/*.json) in OUT/synthetic
#   renders    the same three stages on the world's renders (configs/shapes/*.json) in OUT/renders
#   report     `causal-rcm eval` of every stage of both arms, and OUT/comparison.md (a table of the oracle's metrics)
# Every step resumes: a command stopped by a time limit continues when run again (training time guards count the
# time of every segment). Settings: PROMPTS (prompts, and videos, 16384), SYNTH_STEPS (teacher Euler steps; default
# the teacher's 50), CT_SECONDS / SCM_SECONDS / DMD_SECONDS (each stage's time guard, 120 / 150 / 240 s), VIDEOS
# (oracle evaluation prompts, 48), EXTRA (overrides for every training stage), TEACHERS (the shipped checkpoints).
# Each stage folder records its exact command in command.txt.
set -euo pipefail
out=${1:?usage: synth_comparison.sh OUT synth|synthetic|renders|report}
step=${2:?usage: synth_comparison.sh OUT synth|synthetic|renders|report}
cli=${CAUSAL_RCM:-causal-rcm}
configs=$(cd "$(dirname "$0")/../configs/shapes" && pwd)
teachers=${TEACHERS:-checkpoints/shapes}
prompts=${PROMPTS:-16384}
videos=${VIDEOS:-48}
extra=${EXTRA:-}

run() {  # run DIR COMMAND...: record the command in DIR/command.txt, then run it
    local dir=$1; shift
    mkdir -p "$dir"
    echo "$*" > "$dir/command.txt"
    "$@"
}

arm() {  # arm NAME CONFIGS [OVERRIDES...]: causal teacher, TF-sCM, SF-DMD
    local dir=$out/$1 conf=$2; shift 2
    run "$dir/causal-teacher" $cli train causal-teacher --config "$conf/causal-teacher.json" train.out_dir="$dir/causal-teacher" \
        train.init="$teachers/teacher/model" train.max_seconds="${CT_SECONDS:-120}" "$@" $extra
    run "$dir/tf-scm" $cli train tf-scm --config "$conf/tf-scm.json" train.out_dir="$dir/tf-scm" \
        train.teacher="$dir/causal-teacher/model" train.max_seconds="${SCM_SECONDS:-150}" "$@" $extra
    run "$dir/sf-dmd" $cli train sf-dmd --config "$conf/sf-dmd.json" train.out_dir="$dir/sf-dmd" \
        train.teacher="$teachers/teacher/model" train.init="$dir/tf-scm/model" train.max_seconds="${DMD_SECONDS:-240}" "$@" $extra
}

case $step in
synth)
    run "$out" $cli data prompts -c "$teachers/teacher/model" -n "$prompts" -o "$out/prompts.txt"
    run "$out/shards" $cli synth -t "$teachers/teacher/model" -p "$out/prompts.txt" -o "$out/shards" \
        --batch-size 256 --per-shard 1024 --no-progress ${SYNTH_STEPS:+--steps $SYNTH_STEPS}
    ;;
synthetic) arm synthetic "$configs/synthetic" data.shards="$out/shards" ;;
renders) arm renders "$configs" ;;
report)
    for a in renders synthetic; do  # the six evaluations side by side (a GPU is mostly idle on one)
        for stage in causal-teacher tf-scm sf-dmd; do
            $cli eval -c "$out/$a/$stage/model" -n "$videos" --json "$out/$a/$stage/eval.json" > "$out/$a/$stage/eval.log" 2>&1 &
        done
    done
    wait
    python3 - "$out" "$prompts" <<'EOF'
import json, sys
from pathlib import Path

out, prompts = Path(sys.argv[1]), sys.argv[2]
keys = ["caption_adherence", "direction_accuracy", "temporal_consistency", "background_residual", "colour_error", "edge_sharpness"]
rows = ["| stage | data | steps | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
for stage in ("causal-teacher", "tf-scm", "sf-dmd"):
    for arm, data in (("renders", "renders"), ("synthetic", f"teacher samples ({prompts})")):
        metrics = json.loads((out / arm / stage / "eval.json").read_text())
        steps = json.loads((out / arm / stage / "train_report.json").read_text())["steps"]
        rows.append(f"| {stage} | {data} | {steps} | " + " | ".join(f"{metrics.get(k, float('nan')):.3f}" for k in keys) + " |")
(out / "comparison.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF
    ;;
*) echo "unknown step $step: synth, synthetic, renders or report" >&2; exit 2 ;;
esac
