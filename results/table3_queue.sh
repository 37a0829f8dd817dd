#!/usr/bin/env bash
# The distillation runs behind results/table3.md (Table 3 and its T > 5 extension), one after the other,
# each evaluated with fresh heads as soon as it is done (100 models; 20 on AG News), its card written and
# its files copied into results/runs (python -m ddattn.publish).
# Each spec: TASK:NAME:FLAGS (flags added to --preset cpu). Pinned to one core (OMP_NUM_THREADS=1, CPU 0,
# or CPU=N) so that development can go on beside it on the other; CPU=0-1 THREADS=2 gives a run both
# cores. Resumable: a run with a checkpoint resumes, a finished one (in runs/ or published in results/runs/,
# which a new checkout has while runs/ is not kept) is skipped. Every distill/evaluate invocation appends "what wall_s peak_rss_kb"
# to runs/TASK/NAME/resources.tsv (GNU time), after a line naming the CPU: wall time, peak memory and CPU
# for the extended table.
# To stop a run, SIGTERM its python process only (pkill -f '^.venv/bin/python -m ddattn.distill'): it checkpoints
# and GNU time still writes its line; killing GNU time itself loses that invocation's line.
set -uo pipefail
cd "$(dirname "$0")/.."
source results/timed.sh || exit 1
for spec in "$@"; do
  IFS=: read -r task name flags <<< "$spec"
  [ -f "results/runs/$task/$name/eval.json" ] && { echo "queue: $task/$name is in results/runs, skipped"; continue; }
  dir=runs/$task/$name; mkdir -p "$dir"
  if ! grep -qs "^done:" "$dir/run.log"; then
    if [ -f "$dir/checkpoint.pt" ]; then args=(--resume "$dir"); else args=(--task "$task" --preset cpu --name "$name" $flags); fi
    timed distill "$dir/resources.tsv" "${pin[@]}" .venv/bin/python -m ddattn.distill "${args[@]}" \
      || { echo "queue: distill $task/$name exited $?"; continue; }
  fi
  n=100; [ "$task" = ag_news ] && n=20
  [ -f "$dir/eval.json" ] || timed evaluate "$dir/resources.tsv" "${pin[@]}" .venv/bin/python -m ddattn.evaluate "$dir" --n-models $n \
    || echo "queue: evaluate $task/$name exited $?"
  .venv/bin/python -m ddattn.card "$dir" || echo "queue: card $task/$name exited $?"
  .venv/bin/python -m ddattn.publish "$dir" || echo "queue: publish $task/$name exited $?"
done
