#!/usr/bin/env bash
# Evaluate each finished run with fresh heads (100 models; 20 on AG News, whose test split has 7,600 texts),
# rewrite its card, then copy its files into results/runs (python -m ddattn.publish). Waits for a run's
# "done:" line. Pinned to one core: CPU (default 1). A failing step is reported and the queue goes on.
set -uo pipefail
cd "$(dirname "$0")/.."
for spec in "$@"; do
  IFS=: read -r task name <<< "$spec"
  until grep -qs "^done:" runs/$task/$name/run.log; do sleep 20; done
  n=100; [ "$task" = ag_news ] && n=20
  [ -f runs/$task/$name/eval.json ] || OMP_NUM_THREADS=1 taskset -c "${CPU:-1}" .venv/bin/python -m ddattn.evaluate runs/$task/$name --n-models $n \
    || echo "queue: evaluate $task/$name exited $?"
  .venv/bin/python -m ddattn.card runs/$task/$name || echo "queue: card $task/$name exited $?"
  .venv/bin/python -m ddattn.publish runs/$task/$name || echo "queue: publish $task/$name exited $?"
done
