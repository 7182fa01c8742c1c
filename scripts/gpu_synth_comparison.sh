#!/usr/bin/env bash
# Issue #22 item 3 in one device call (under 10 min on one GPU): scripts/synth_comparison.sh's steps, the two arms
# trained side by side (the same contention and the same time guards for both), then the report. The teacher's
# shards (~800 MB) stay in WORK (/tmp/synth), off $OUT. Under $OUT: comparison.md, each stage's command.txt,
# train_report.json, metrics.jsonl, eval.json and logs, the step logs, and the two SF-DMD students in models.tar.
# Time guards: CT_SECONDS / SCM_SECONDS / DMD_SECONDS (default here 75 / 100 / 150 s); see synth_comparison.sh.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
work=${WORK:-/tmp/synth} s="$(dirname "$0")/synth_comparison.sh"
export CT_SECONDS=${CT_SECONDS:-75} SCM_SECONDS=${SCM_SECONDS:-100} DMD_SECONDS=${DMD_SECONDS:-150}
start=$SECONDS
bash "$s" "$work" synth > "$OUT/synth.log" 2>&1 || { tail -20 "$OUT/synth.log"; exit 1; }
echo "synth: $((SECONDS - start)) s" | tee "$OUT/times.txt"
bash "$s" "$work" synthetic > "$OUT/synthetic.log" 2>&1 &
bash "$s" "$work" renders > "$OUT/renders.log" 2>&1 &
wait
echo "arms: $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
bash "$s" "$work" report 2>&1 | tee "$OUT/report.log"
echo "report: $((SECONDS - start)) s" | tee -a "$OUT/times.txt"
cp "$work/comparison.md" "$work/command.txt" "$work/shards/command.txt" "$OUT/" 2>/dev/null
for a in renders synthetic; do
    for stage in causal-teacher tf-scm sf-dmd; do
        mkdir -p "$OUT/$a/$stage"
        cp "$work/$a/$stage"/{command.txt,train_report.json,metrics.jsonl,eval.json,eval.log} "$OUT/$a/$stage/" 2>/dev/null
    done
done
tar cf "$OUT/models.tar" -C "$work" renders/sf-dmd/model synthetic/sf-dmd/model
