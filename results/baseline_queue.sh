#!/usr/bin/env bash
# The baselines behind results/table2.md, one after the other on CPU 1 (beside the distillations on CPU 0):
# each spec is BASELINE:TASK[:N_MODELS[:FLAGS]], run as python -m ddattn.baselines BASELINE --task TASK
# [--n-models N] [FLAGS], then copied into results/runs (python -m ddattn.publish). A `full` run that was
# killed resumes from its finished candidates.
set -euo pipefail
cd "$(dirname "$0")/.."
for spec in "$@"; do
  IFS=: read -r baseline task n flags <<< "$spec"
  extra=(); [ -n "${n:-}" ] && extra=(--n-models "$n")
  [ -f runs/$task/$baseline/eval.json ] || OMP_NUM_THREADS=1 taskset -c "${CPU:-1}" .venv/bin/python -m ddattn.baselines "$baseline" --task "$task" "${extra[@]}" ${flags:-}
  .venv/bin/python -m ddattn.publish runs/$task/$baseline
done
