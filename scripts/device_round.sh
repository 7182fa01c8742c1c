#!/usr/bin/env bash
# One device session's GPU work for the shapes-world recipe: a training pipeline that runs on in its own
# process session across the device tool's calls (a warm machine keeps its processes' session, runs/ and /tmp
# between calls; each call is at most 10 minutes). The device tool gives an idle machine back after about
# 30 s, and everything on it is lost: call collect at once.
#   bash scripts/device_round.sh start    # (START_BENCH=1: first the stream bench, compiled, alone) starts the
#                                         # pipeline, then collects until the call's time is nearly up
#   bash scripts/device_round.sh collect  # waits for the pipeline (at most COLLECT_SECONDS) and collects
#   bash scripts/device_round.sh ablation # init-ablation alone, in the foreground (device_session.sh ablation uses it)
#   CHAIN_TEACHER=DIR bash scripts/device_round.sh chain  # a call of its own: the causal teacher and its students
#                                         # from a carried teacher run folder (CAUSAL_SECONDS, SCM_SECONDS, DMD_SECONDS)
#   bash scripts/device_round.sh students # a call of its own: the students script from the shipped teachers
#                                         # (checkpoints/shapes), then each student's oracle evaluation on EVAL_VIDEOS
#                                         # prompts (2 steps with 4x rollouts at its own window and at window 4, 1 step)
# The pipeline (the earlier rounds' pipelines are in git history and docs/results/shapes_attempt*.md; attempt 7's
# at commit 3938230):
#   1. side by side: the packed-codec teacher from scratch twice (ship, and repro: the same command again, for
#      reproducibility; TEACHER_SECONDS each);
#   2. the causal teacher from ship's teacher (CAUSAL_SECONDS), then its TF-sCM and SF-DMD students (st).
#   ABLATION=1: also, from the start, `experiment init-ablation` from the shipped chain (checkpoints/shapes) beside
#   them, 6 runs at a time (ABLATION_CM_STEPS, ABLATION_DMD_STEPS; the students script's settings); its folder
#   comes back as ablation.tar (without weights) once it is done.
# In all ~1550 s of a device session's 1800 (a machine's start took ~180 s on 2026-12-03): collect at once after
# each call. SF-DMD (600 steps, 4x rollouts) takes ~150 s there (shapes_attempt10.md).
# A collect call returns (packing as stages finish), under $OUT, one tar per finished stage folder not returned before (without
# checkpoint/ and tb/), as many as fit in the tool's 8 files and 64 MiB, and the logs in logs.tar. The start
# call needs the diffusers wheel in .whl/ (carry it; see device_session.sh).
set -euo pipefail
stage=${1:?usage: device_round.sh start|collect|chain}
out=${OUT:-/tmp/out}
root=runs/gpu
mkdir -p "$out" "$root"
source "$(dirname "$0")/device_env.sh"
extra=${ROUND_EXTRA:-}  # more overrides for every run (e.g. a quick CPU check of this script)
packed="data.codec_frames=2 data.num_frames=4 model.in_dim=96 model.out_dim=96"  # the ablation's world: configs/shapes/world.json

pipeline() {
    mkdir -p "$root/ship" "$root/repro"
    # 1. side by side: the packed-codec teacher (patch 2) twice, the run to ship and its reproducibility rerun, with
    #    nothing else on the GPU but the ablation when asked for (attempt 9: 1080 s, the ablation beside them for
    #    744 s, 23100 steps, caption 0.906 on 192 prompts for both: shapes_attempt9.md)
    for name in ship repro; do
        STAGES=teacher TEACHER_SECONDS=${TEACHER_SECONDS:-1080} EXTRA="$extra" \
            bash scripts/train_shapes_teachers.sh "$root/$name" > "$root/$name/log.txt" 2>&1 &
    done
    local teachers=$(jobs -p)
    [ "${ABLATION:-0}" = 1 ] && ablation &
    wait $teachers || true
    # 2. the causal teacher from the teacher to ship, then its students
    causal_and_students
    wait || true
    touch "$root/DONE"
}

ablation() {  # experiment init-ablation from the shipped chain, into runs/gpu-ablation (packed as one tar when done)
    local dir=runs/gpu-ablation
    mkdir -p "$dir"
    $CAUSAL_RCM experiment init-ablation -t checkpoints/shapes/causal-teacher/model --dmd-teacher checkpoints/shapes/teacher/model \
        --cm-steps "${ABLATION_CM_STEPS:-600}" --dmd-steps "${ABLATION_DMD_STEPS:-200}" --dmd-lr 2e-5 -n "${ABLATION_VIDEOS:-48}" \
        --jobs "${ABLATION_JOBS:-6}" -o "$dir/init-ablation" $packed train.batch_size=32 data.frames_per_chunk=2 \
        optim.lr=1e-4 scm.tangent_warmup=300 dmd.critic_steps=3 dmd.rollout_factor=2 data.workers=2 $extra \
        > "$dir/log.txt" 2>&1 || true
    touch "$dir/DONE"
}

causal_and_students() {  # the causal teacher from $root/ship/teacher, then its students (the scripts' settings) in st/
    STAGES=causal-teacher CAUSAL_SECONDS=${CAUSAL_SECONDS:-120} EXTRA="$extra" \
        bash scripts/train_shapes_teachers.sh "$root/ship" >> "$root/ship/log.txt" 2>&1 || true
    if [ -f "$root/ship/causal-teacher/model/model.safetensors" ]; then
        mkdir -p "$root/st"
        EXTRA="$extra" SCM_SECONDS=${SCM_SECONDS:-150} bash scripts/train_shapes_students.sh "$root/st" "$root/ship" \
            > "$root/st/log.txt" 2>&1 || true
    fi
}

pack() {  # one tar under $OUT per finished stage folder not returned before, as many as fit
    # The device tool returns at most 8 files of 16 MiB, 64 MiB together (on 2026-12-03 a 7-tar return went over the
    # total and one tar stayed behind, then was lost with the machine): a tar is marked sent only if it fits.
    local dir name size
    local room=$((7 - $(ls "$out" | grep -cv '^logs.tar$')))  # logs.tar is the eighth file
    local bytes=$(( (60 << 20) - $(du -cb "$out" | tail -1 | cut -f1) ))
    for dir in "$root"/*/*/train_report.json; do
        [ -f "$dir" ] || continue
        dir=$(dirname "$dir")
        [ -L "$(dirname "$dir")" ] || [ -L "$dir" ] && continue  # links to the teachers used
        name=$(basename "$(dirname "$dir")")-$(basename "$dir")
        [ -f "$dir/.sent" ] && continue
        [ "$room" -gt 0 ] || break
        tar -C "$(dirname "$dir")" -cf "$out/$name.tar" --exclude checkpoint --exclude tb --exclude .sent "$(basename "$dir")"
        size=$(stat -c %s "$out/$name.tar")
        if [ "$size" -gt "$bytes" ]; then rm "$out/$name.tar"; continue; fi  # a smaller one may still fit
        touch "$dir/.sent"
        room=$((room - 1)) bytes=$((bytes - size))
    done
    local ab=runs/gpu-ablation
    if [ -f "$ab/DONE" ] && [ ! -f "$ab/.sent" ] && [ "$room" -gt 0 ]; then
        tar -cf "$out/ablation.tar" --exclude checkpoint --exclude tb --exclude model --exclude samples "$ab" && touch "$ab/.sent"
        room=$((room - 1))
    fi
    tar -cf "$out/logs.tar" runs/gpu-ablation/log.txt runs/gpu-ablation/init-ablation/*/log.txt "$root"/*/log.txt "$root"/*/command.txt \
        "$root"/*.txt "$root"/*/evals/*.json 2>/dev/null || true
}

collect() {  # collect SECONDS: wait until the pipeline is done or SECONDS have passed, packing as stages finish
    # (packing on the way: the files under $OUT come back even when the call is stopped at its limit)
    local deadline=$((SECONDS + $1))
    while { [ ! -f "$root/DONE" ] || { [ "${ABLATION:-0}" = 1 ] && [ ! -f runs/gpu-ablation/.sent ]; }; } \
        && [ "$SECONDS" -lt "$deadline" ]; do pack; sleep 10; done
    pack
    grep -h "^trained\|caption_adherence \|direction_accuracy \|long_drift " "$root"/*/log.txt 2>/dev/null || true
    { ls "$root"/*/*/train_report.json 2>/dev/null || true; } | while read -r r; do
        [ -L "$(dirname "$r")" ] || [ -f "$(dirname "$r")/.sent" ] || echo "not returned yet: $(dirname "$r") (collect again)"
    done
    [ -f "$root/DONE" ] && echo "pipeline done" || echo "pipeline still running"
}

chain() {  # the causal teacher and its students from a given teacher (CHAIN_TEACHER, a folder with model/)
    local teacher=${CHAIN_TEACHER:?set CHAIN_TEACHER to a teacher run folder}
    mkdir -p "$root/ship"
    ln -sfn "$(realpath "$teacher")" "$root/ship/teacher"
    causal_and_students
    touch "$root/DONE"
}

students() {  # the students script from the shipped teachers into st/, then 192-prompt evaluations into st/evals/
    mkdir -p "$root/st/evals"
    EXTRA="$extra" bash scripts/train_shapes_students.sh "$root/st" checkpoints/shapes > "$root/st/log.txt" 2>&1 || true
    local name model n=${EVAL_VIDEOS:-192}
    for name in tf-scm sf-dmd; do
        model=$root/st/$name/model
        [ -f "$model/model.safetensors" ] || continue
        $CAUSAL_RCM eval -c "$model" -n "$n" --steps 2 --drift 4 --json "$root/st/evals/$name-2step.json" >> "$root/st/log.txt" 2>&1 || true
        $CAUSAL_RCM eval -c "$model" -n "$n" --steps 2 --drift 4 --window 4 --json "$root/st/evals/$name-2step-window4.json" >> "$root/st/log.txt" 2>&1 || true
        $CAUSAL_RCM eval -c "$model" -n "$n" --steps 1 --json "$root/st/evals/$name-1step.json" >> "$root/st/log.txt" 2>&1 || true
    done
    touch "$root/DONE"
}

case "$stage" in
    start)
        if [ "${START_BENCH:-0}" = 1 ]; then
            OUT=$out BENCH_JVP=0 BENCH_EAGER=0 BENCH_TEST=0 timeout "${BENCH_SECONDS:-480}" \
                bash scripts/device_session.sh bench || echo "bench exited $?"
        fi
        setsid nohup bash "$0" pipeline > "$root/pipeline.txt" 2>&1 < /dev/null &
        collect $((${CALL_SECONDS:-580} - SECONDS)) ;;
    chain)  # a call of its own: CHAIN_TEACHER=DIR bash scripts/device_round.sh chain (packs as stages finish)
        setsid nohup bash "$0" chain-run > "$root/pipeline.txt" 2>&1 < /dev/null &
        collect $((${CALL_SECONDS:-580} - SECONDS)) ;;
    chain-run) chain ;;
    students)  # a call of its own (packs as stages finish; the evaluations come back in logs.tar)
        setsid nohup bash "$0" students-run > "$root/pipeline.txt" 2>&1 < /dev/null &
        collect $((${CALL_SECONDS:-580} - SECONDS)) ;;
    students-run) students ;;
    pipeline) pipeline ;;
    ablation) ablation ;;  # alone, in the foreground (e.g. a CPU check with ROUND_EXTRA)
    collect) collect "${COLLECT_SECONDS:-570}" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
