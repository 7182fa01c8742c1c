#!/usr/bin/env bash
# Issue #22 item 3 on one GPU: scripts/synth_comparison.sh's steps, the two arms
# trained side by side (the same contention and the same time guards for both), then the report: 10.3 min on an H100
# (synth 120 s, the arms 454 s, the report 44 s), so under a 10-minute limit run `synth_comparison.sh WORK report`
# in a second call on the same machine (WORK survives while it is held). The teacher's
# shards (~800 MB) stay in WORK (/tmp/synth), off $OUT. Under $OUT: comparison.md; results.tar with each stage's command.txt,
# train_report.json, metrics.jsonl, eval.json and eval log; the step logs; the two SF-DMD students in models.tar.
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
cp "$work/comparison.md" "$OUT/" 2>/dev/null
# One archive of the small files (the device returns a handful of files a call): commands, reports, metrics, evals.
(cd "$work" && tar cf "$OUT/results.tar" command.txt shards/command.txt comparison.md \
    {renders,synthetic}/{causal-teacher,tf-scm,sf-dmd}/{command.txt,train_report.json,metrics.jsonl,eval.json,eval.log})
tar cf "$OUT/models.tar" -C "$work" renders/sf-dmd/model synthetic/sf-dmd/model
