#!/usr/bin/env bash
# One device session's GPU work for the shapes-world recipe: the stream bench alone on the GPU, then a
# training pipeline that runs on in its own process session across the device tool's calls (a warm
# machine keeps its processes' session, runs/ and /tmp between calls; each call is at most 10 minutes). The
# device tool gives an idle machine back after about 30 s, and everything on it is lost: call collect at once.
#   bash scripts/device_round.sh start    # bench stream 1,2,4 steps, compiled (alone), then starts the
#                                         # pipeline, then collects until the call's time is nearly up
#   bash scripts/device_round.sh collect  # waits for the pipeline (at most COLLECT_SECONDS) and collects
# The pipeline, from the shipped teachers (checkpoints/shapes):
#   1. side by side: causal teachers from the shipped teacher at time shifts 3 and 8 (ct-s3, ct-s8), the
#      teacher with the packed codec (2 frames per latent frame; packed), the compiled-blocks GPU test;
#   2. once both causal teachers are done, side by side: TF-sCM -> SF-DMD from the better one (by its
#      final caption adherence) in three settings (st-a, st-b, st-c), and the shipped teacher's committed
#      command again (repro: reproducibility).
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
    local pids=() best
    mkdir -p "$root/packed" "$root/ct-s3" "$root/ct-s8" "$root/repro"
    STAGES=teacher EXTRA="$packed $extra" bash scripts/train_shapes_teachers.sh "$root/packed" > "$root/packed/log.txt" 2>&1 &
    for k in 3 8; do
        STAGES=causal-teacher TEACHER_INIT=$shipped/teacher/model EXTRA="objective.shift=$k $extra" \
            bash scripts/train_shapes_teachers.sh "$root/ct-s$k" > "$root/ct-s$k/log.txt" 2>&1 &
        pids+=($!)
    done
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/models/test_wan.py -k compiled \
        > "$root/gpu_compile_test.txt" 2>&1 || true
    wait "${pids[@]}" || true
    best=$(python3 - "$root" <<'EOF'
import json, pathlib, sys
reports = pathlib.Path(sys.argv[1]).glob("ct-s*/causal-teacher/train_report.json")
score = {r.parent: json.loads(r.read_text())["eval"]["caption_adherence"] for r in reports}
print(max(score, key=score.get) if score else "")
EOF
)
    if [ -n "$best" ]; then
        echo "students from $best" > "$root/students.txt"
        mkdir -p "$root/teachers"
        ln -sfn "$PWD/$shipped/teacher" "$root/teachers/teacher"
        ln -sfn "$PWD/$best" "$root/teachers/causal-teacher"
        # (the script's TF-sCM defaults are st-b's settings since 2026-12-03; st-a is the recipe's defaults)
        students st-a "optim.lr=2e-5 objective.tangent_warmup=1000" "" &
        students st-b "" "" &
        students st-c "optim.lr=1e-4" "optim.lr=2e-5" &
    else
        echo "no causal teacher finished" > "$root/students.txt"
    fi
    STAGES=teacher EXTRA=$extra bash scripts/train_shapes_teachers.sh "$root/repro" > "$root/repro/log.txt" 2>&1 || true
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
    tar -cf "$out/logs.tar" "$root"/*/log.txt "$root"/*.txt 2>/dev/null || true
    grep -h "^trained\|caption_adherence \|direction_accuracy \|long_drift " "$root"/*/log.txt 2>/dev/null || true
    ls "$root"/*/*/train_report.json 2>/dev/null | while read -r r; do
        [ -f "$(dirname "$r")/.sent" ] || echo "not returned yet: $(dirname "$r") (collect again)"
    done
    [ -f "$root/DONE" ] && echo "pipeline done" || echo "pipeline still running"
}

case "$stage" in
    start)
        OUT=$out BENCH_JVP=0 BENCH_EAGER=0 BENCH_TEST=0 timeout "${BENCH_SECONDS:-480}" \
            bash scripts/device_session.sh bench || echo "bench exited $?"
        setsid nohup bash "$0" pipeline > "$root/pipeline.txt" 2>&1 < /dev/null &
        collect $((${CALL_SECONDS:-580} - SECONDS)) ;;
    pipeline) pipeline ;;
    collect) collect "${COLLECT_SECONDS:-570}" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
