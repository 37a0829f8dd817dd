#!/usr/bin/env bash
# The cost of a published run whose distillation predates the record of wall time and peak memory that
# results/table3_queue.sh keeps: distil it again on one core under GNU time (results/timed.sh) and add the
# figures to results/runs/TASK/NAME/resources.tsv after a line "rerun COMMIT same|other", which `make table`
# shows beside the CPU (ddattn/report.py).
# Each spec: TASK:NAME:FLAGS, the flags (after --preset cpu) that repeat the published run's settings; they are
# checked against its config.json before anything runs. The re-run is runs/TASK/NAME-rerun, resumable like any
# run (stop it as table3_queue.sh says). "same": its distilled_best.safetensors is byte-identical to the
# published one, so the figures are that run's; "other": the code or the CPU (another CPU's matmul kernels round
# differently, and 300 outer steps carry a 1e-7 difference into other data) has changed the run's numbers since,
# and the figures are the configuration's, on this code and CPU.
#   CPU=1 results/rerun_cost.sh "sst2:cpu-sl-al:--lr 0.01 --held-out random"
set -uo pipefail
cd "$(dirname "$0")/.."
source results/timed.sh
for spec in "$@"; do
  IFS=: read -r task name flags <<< "$spec"
  published=results/runs/$task/$name rerun=runs/$task/$name-rerun
  [ -f "$published/config.json" ] || { echo "rerun: $published/config.json is missing: TASK:NAME names no published run"; continue; }
  grep -qs "^distill " "$published/resources.tsv" && { echo "rerun: $published has its figures, skipped"; continue; }
  .venv/bin/python - "$published/config.json" --task "$task" --preset cpu $flags <<'PY' || continue
import json, sys
from dataclasses import asdict
from ddattn import settings
saved = {**settings.ADDED_LATER, **json.load(open(sys.argv[1]))}
given = asdict(settings.from_flags(settings.parse_flags(sys.argv[2:])))
differ = [f"{k} {given.get(k)!r} (saved: {v!r})" for k, v in saved.items() if k != "name" and given.get(k) != v]
if differ:
    sys.exit(f"rerun: the flags do not repeat {sys.argv[1]}: {'; '.join(differ)}")
PY
  if ! grep -qs "^done:" "$rerun/run.log"; then
    if [ -f "$rerun/checkpoint.pt" ]; then args=(--resume "$rerun"); else args=(--task "$task" --preset cpu --name "$name-rerun" $flags); fi
    mkdir -p "$rerun"; [ -f "$rerun/commit" ] || git rev-parse --short HEAD > "$rerun/commit"  # the code that starts it
    timed distill "$rerun/resources.tsv" "${pin[@]}" .venv/bin/python -m ddattn.distill "${args[@]}" \
      || { echo "rerun: distill $rerun exited $?"; continue; }
  fi
  cmp -s "$rerun/distilled_best.safetensors" "$published/distilled_best.safetensors" && data=same || data=other
  { echo "rerun $(cat "$rerun/commit") $data"; cat "$rerun/resources.tsv"; } >> "$published/resources.tsv"
  echo "rerun: $published/resources.tsv has the figures of $rerun ($data distilled data)"
done
