#!/usr/bin/env bash
# One device session's GPU work for the shapes-world recipe: a training pipeline that runs on in its own
# process session across the device tool's calls (a warm machine keeps its processes' session, runs/ and /tmp
# between calls; each call is at most 10 minutes). The device tool gives an idle machine back after about
# 30 s, and everything on it is lost: call collect at once.
#   bash scripts/device_round.sh start    # (START_BENCH=1: first the stream bench, compiled, alone) starts the
#                                         # pipeline, then collects until the call's time is nearly up
#   bash scripts/device_round.sh collect  # waits for the pipeline (at most COLLECT_SECONDS) and collects
# The pipeline (the earlier rounds' pipelines are in git history and docs/results/shapes_attempt*.md):
#   1. side by side: two packed-codec teachers from scratch (p1: patch 1, p2: patch 2; TEACHER_SECONDS each),
#      experiment cm-convergence from the shipped causal teacher, and SF-DMD from the shipped TF-sCM on rollouts
#      of the training length (dmd-a) and of twice it (dmd-long);
#   2. the causal teacher from the better packed teacher, then its TF-sCM and SF-DMD students (st).
# A collect call returns, under $OUT, one tar per finished stage folder not returned before (without
# checkpoint.pt and tb/), as many as fit in the tool's 8 files and 64 MiB, and the logs in logs.tar. The start
# call needs the diffusers wheel in .whl/ (carry it; see device_session.sh).
set -euo pipefail
stage=${1:?usage: device_round.sh start|collect}
out=${OUT:-/tmp/out}
root=runs/gpu
mkdir -p "$out" "$root"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} CAUSAL_RCM="python3 -m causal_rcm.cli" PYTHONUNBUFFERED=1
shipped=checkpoints/shapes
extra=${ROUND_EXTRA:-}  # more overrides for every run (e.g. a quick CPU check of this script)
packed="data.codec_frames=2 data.num_frames=4 model.in_dim=96 model.out_dim=96"

students() {  # students NAME SCM_EXTRA DMD_EXTRA: TF-sCM then SF-DMD from $root/teachers into $root/NAME
    mkdir -p "$root/$1"
    EXTRA=$extra SCM_EXTRA=$2 DMD_EXTRA=$3 SCM_SECONDS=${SCM_SECONDS:-200} \
        bash scripts/train_shapes_students.sh "$root/$1" "$root/teachers" > "$root/$1/log.txt" 2>&1
}

pipeline() {
    local best
    local dmd="train.progress=false train.log_every=50 train.ckpt_every=250 train.batch_size=16 data.frames_per_chunk=2"
    dmd+=" train.export_dtype=float16 train.eval_videos=48 train.eval_every=100 train.steps=600 train.max_seconds=480 optim.lr=2e-5"
    dmd+=" objective.critic_steps=3 train.init=$shipped/tf-scm/model train.teacher=$shipped/teacher/model $extra"
    mkdir -p "$root/p1" "$root/p2" "$root/cmc"
    # 1. side by side: two packed-codec teachers from scratch (18 min each), patch 1 (4x the tokens: more spatial
    #    detail for shapes) and patch 2; cm-convergence from the shipped causal teacher (issue #6); SF-DMD from the
    #    shipped TF-sCM at the CPU's settings, on rollouts of the training length and of twice it (issue #7)
    STAGES=teacher TEACHER_SECONDS=${TEACHER_SECONDS:-1080} EXTRA="$packed model.patch_size=[1,1,1] $extra" \
        bash scripts/train_shapes_teachers.sh "$root/p1" > "$root/p1/log.txt" 2>&1 &
    STAGES=teacher TEACHER_SECONDS=${TEACHER_SECONDS:-1080} EXTRA="$packed $extra" \
        bash scripts/train_shapes_teachers.sh "$root/p2" > "$root/p2/log.txt" 2>&1 &
    local teachers=$(jobs -p)
    (timeout "${CM_SECONDS:-1000}" $CAUSAL_RCM experiment cm-convergence -t "$shipped/causal-teacher/model" --steps 600 --eval-every 100 \
        -n 48 -o "$root/cmc/out" optim.lr=1e-4 train.batch_size=64 objective.tangent_warmup=300 data.workers=3 $extra \
        > "$root/cmc/log.txt" 2>&1 || true
     tar -C "$root/cmc" -cf "$root/cm-convergence.tar" --exclude checkpoint.pt --exclude tb --exclude samples --exclude model out log.txt) &
    for name in dmd-a dmd-long; do
        mkdir -p "$root/$name"
        local more=""; [ "$name" = dmd-long ] && more="objective.rollout_frames=16"
        (echo "$CAUSAL_RCM train sf-dmd $dmd train.out_dir=$root/$name/sf-dmd $more" > "$root/$name/command.txt"
         $CAUSAL_RCM train sf-dmd $dmd train.out_dir="$root/$name/sf-dmd" $more > "$root/$name/log.txt" 2>&1 || true) &
    done
    wait $teachers || true
    # 2. the causal teacher from the better packed teacher: direction >= 0.8 first, then caption adherence
    best=$(python3 - "$root" <<'PY'
import json, pathlib, sys
score = {}
for r in pathlib.Path(sys.argv[1]).glob("p*/teacher/train_report.json"):
    e = json.loads(r.read_text())["eval"]
    score[r.parent.parent.name] = (e["direction_accuracy"] >= 0.8, e["caption_adherence"])
print(max(score, key=score.get) if score else "")
PY
)
    echo "causal teacher from ${best:-nothing}" > "$root/choice.txt"
    if [ -n "$best" ]; then
        local patch=""; [ "$best" = p1 ] && patch="model.patch_size=[1,1,1]"
        STAGES=causal-teacher EXTRA="$packed $patch $extra" bash scripts/train_shapes_teachers.sh "$root/$best" >> "$root/$best/log.txt" 2>&1 || true
        # 3. its students (the shipped students' script; TF-sCM at lr 1e-4, the best of attempt 6)
        mkdir -p "$root/st"
        EXTRA="$packed $extra" SCM_EXTRA="optim.lr=1e-4" bash scripts/train_shapes_students.sh "$root/st" "$root/$best" > "$root/st/log.txt" 2>&1 || true
    fi
    wait || true
    touch "$root/DONE"
}

collect() {  # collect SECONDS: wait until the pipeline is done or SECONDS have passed, then pack
    # The device tool returns at most 8 files of 16 MiB, 64 MiB together (on 2026-12-03 a 7-tar return went over the
    # total and one tar stayed behind, then was lost with the machine): a tar is marked sent only if it fits.
    local deadline=$((SECONDS + $1)) dir name size
    local room=$((7 - $(ls "$out" | wc -l)))  # logs.tar is the eighth file
    local bytes=$(( (60 << 20) - $(du -cb "$out" | tail -1 | cut -f1) ))
    while [ ! -f "$root/DONE" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
    for dir in "$root"/*/*/train_report.json; do
        [ -f "$dir" ] || continue
        dir=$(dirname "$dir")
        [ -L "$(dirname "$dir")" ] || [ -L "$dir" ] && continue  # runs/gpu/teachers: links to the teachers used
        name=$(basename "$(dirname "$dir")")-$(basename "$dir")
        [ -f "$dir/.sent" ] && continue
        [ "$room" -gt 0 ] || break
        tar -C "$(dirname "$dir")" -cf "$out/$name.tar" --exclude checkpoint.pt --exclude tb --exclude .sent "$(basename "$dir")"
        size=$(stat -c %s "$out/$name.tar")
        if [ "$size" -gt "$bytes" ]; then rm "$out/$name.tar"; continue; fi  # a smaller one may still fit
        touch "$dir/.sent"
        room=$((room - 1)) bytes=$((bytes - size))
    done
    for dir in "$root"/*.tar; do  # tars the pipeline made itself (e.g. cm-convergence.tar)
        [ -f "$dir" ] && [ ! -f "$dir.sent" ] && [ "$room" -gt 0 ] || continue
        size=$(stat -c %s "$dir")
        [ "$size" -gt "$bytes" ] && continue
        cp "$dir" "$out/" && touch "$dir.sent"
        room=$((room - 1)) bytes=$((bytes - size))
    done
    tar -cf "$out/logs.tar" "$root"/*/log.txt "$root"/*/command.txt "$root"/*.txt 2>/dev/null || true
    grep -h "^trained\|caption_adherence \|direction_accuracy \|long_drift " "$root"/*/log.txt 2>/dev/null || true
    ls "$root"/*/*/train_report.json 2>/dev/null | while read -r r; do
        [ -f "$(dirname "$r")/.sent" ] || echo "not returned yet: $(dirname "$r") (collect again)"
    done
    [ -f "$root/DONE" ] && echo "pipeline done" || echo "pipeline still running"
}

case "$stage" in
    start)
        if [ "${START_BENCH:-0}" = 1 ]; then
            OUT=$out BENCH_JVP=0 BENCH_EAGER=0 BENCH_TEST=0 timeout "${BENCH_SECONDS:-480}" \
                bash scripts/device_session.sh bench || echo "bench exited $?"
        fi
        setsid nohup bash "$0" pipeline > "$root/pipeline.txt" 2>&1 < /dev/null &
        collect $((${CALL_SECONDS:-580} - SECONDS)) ;;
    pipeline) pipeline ;;
    collect) collect "${COLLECT_SECONDS:-570}" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
