#!/usr/bin/env bash
# The distillation runs behind results/table2.md, one after the other (the cpu preset; 1 shot, 1 step).
# Each run: python -m ddattn.distill --task TASK --preset cpu [label/attention flags] --name NAME
# Pinned to one core (OMP_NUM_THREADS=1, CPU 0) so that evaluations can run beside it on the other core.
set -euo pipefail
cd "$(dirname "$0")/.."
distill() { task=$1 name=$2; shift 2; grep -qs "^done:" runs/$task/$name/run.log && return 0
            resume=(); [ -f runs/$task/$name/checkpoint.pt ] && resume=(--resume runs/$task/$name)
            if [ ${#resume[@]} -gt 0 ]; then set -- "${resume[@]}"; else set -- --task "$task" --preset cpu --name "$name" "$@"; fi
            OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m ddattn.distill "$@"; }
for spec in "$@"; do
  IFS=: read -r task name flags <<< "$spec"
  distill "$task" "$name" $flags
done
