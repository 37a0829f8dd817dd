#!/usr/bin/env bash
# Peak memory of a distillation against T (issue 26's target: T = 16 within 1.5× of T = 1, recompute mode).
# One task (TASK, default sst2), the cpu preset, different distilled data at each step (one sample per class
# per step, as Table 3's extended rows), T = 1, 2, 4, 8, 16: two outer steps and one validation each. The
# real batches are the same at every T (their order is seeded apart from T), so the T's compare like with
# like; a full run peaks higher at every T, at its widest real batch (each is as wide as its longest row:
# AG News, T = 1, 3 shots: 1401 MB after 1 outer step, 1528 after 60, 1622 after 420), which the runs' own
# peaks in table3.md's extended table show. Peak resident set of the process (GNU time %M) into
# results/memory_T.tsv ("task T peak_mb code"), memory only: times here are not measurements (the
# machine may be busy). Flags of the task's Table 3 rows go in FLAGS (AG News: FLAGS="--lr 0.03").
# Usage: [TASK=ag_news] [FLAGS=...] results/memory_T.sh [LABEL]   (LABEL: which code ran, default the commit)
set -euo pipefail
cd "$(dirname "$0")/.."
task=${TASK:-sst2}
label=${1:-$(git rev-parse --short HEAD)}
out=results/memory_T.tsv
[ -f "$out" ] || echo -e "task\tT\tpeak_mb\tcode" > "$out"
runs=$(mktemp -d)
for T in 1 2 4 8 16; do
  flags=(--task "$task" --preset cpu ${FLAGS:-} --max-steps 2 --val-every 2 --name "memory-T$T")
  [ "$T" = 1 ] || flags+=(--steps "$T" --shots "$T" --data-per-step different --lr-eta 0.01)
  DDATTN_RUNS_DIR="$runs" OMP_NUM_THREADS=1 taskset -c "${CPU:-1}" /usr/bin/time -o "$runs/time" -f "%M" \
    .venv/bin/python -m ddattn.distill "${flags[@]}" > "$runs/log" 2>&1 || { tail -3 "$runs/log"; exit 1; }
  echo -e "$task\t$T\t$(( $(cat "$runs/time") / 1024 ))\t$label" | tee -a "$out"
done
rm -rf "$runs"
