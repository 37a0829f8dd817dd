#!/usr/bin/env bash
# The cost of a published run whose distillation predates the record of wall time and peak memory that
# results/table3_queue.sh keeps: distil it again on one core under GNU time (results/timed.sh) and add the
# figures to results/runs/TASK/NAME/resources.tsv after a line "rerun COMMIT same|other", which `make table`
# shows beside the CPU (ddattn/report.py).
# Each spec: TASK:NAME:FLAGS, the flags (after --preset cpu) that repeat the published run's settings; they are
# checked against its config.json before anything runs, and so is a re-run's own config.json when it resumes.
# The re-run is runs/TASK/NAME-rerun, resumable like any run (stop it as table3_queue.sh says). "same": its
# distilled_best.safetensors is byte-identical to the published one, so the run is the published one's (its
# time is still this CPU's); "other": the code or the CPU (another CPU's matmul kernels round differently, and
# hundreds of outer steps carry a 1e-7 difference into other data) has changed the run's numbers since, and
# the figures are the configuration's, on this code and CPU.
#   CPU=1 results/rerun_cost.sh "sst2:cpu-sl-al:--lr 0.01 --held-out random"
set -uo pipefail
cd "$(dirname "$0")/.."
source results/timed.sh || exit 1
for spec in "$@"; do
  IFS=: read -r task name flags <<< "$spec"
  published=results/runs/$task/$name rerun=runs/$task/$name-rerun
  [ -f "$published/config.json" ] || { echo "rerun: $published/config.json is missing: TASK:NAME names no published run"; continue; }
  grep -qs "^distill " "$published/resources.tsv" && { echo "rerun: $published has its figures, skipped"; continue; }
  .venv/bin/python - "$published/config.json" "$rerun/config.json" --task "$task" --preset cpu $flags <<'PY' || continue
import sys
from dataclasses import asdict
from pathlib import Path
from ddattn import settings
from ddattn.errors import UserError

def differences(values: dict, saved: dict) -> str:
    """The saved settings that `values` does not repeat."""
    names = [k for k in settings.DEFAULTS if k != "name" and values.get(k) != saved[k]]
    return "; ".join(f"{k} {values.get(k)!r} (saved: {saved[k]!r})" for k in names)

published, rerun = Path(sys.argv[1]), Path(sys.argv[2])
try:
    saved = settings.read_saved_settings(published)  # an older run's, completed as --resume completes it
    given = asdict(settings.from_flags(settings.parse_flags(sys.argv[3:])))
    rerun_saved = settings.read_saved_settings(rerun) if rerun.is_file() else None
except UserError as e:
    sys.exit(f"rerun: {e}")
if problems := differences(given, saved):
    sys.exit(f"rerun: the flags do not repeat {published}: {problems}")
if rerun_saved and (problems := differences(rerun_saved, saved)):
    sys.exit(f"rerun: {rerun.parent} is not a re-run of {published}: {problems}")
PY
  if ! grep -qs "^done:" "$rerun/run.log"; then
    mkdir -p "$rerun"
    if [ -f "$rerun/checkpoint.pt" ]; then args=(--resume "$rerun"); else
      args=(--task "$task" --preset cpu --name "$name-rerun" $flags)  # afresh: no figures of an abandoned start
      rm -f "$rerun/resources.tsv"; git rev-parse --short HEAD > "$rerun/commit"  # the code that starts it
    fi
    timed distill "$rerun/resources.tsv" "${pin[@]}" .venv/bin/python -m ddattn.distill "${args[@]}" \
      || { echo "rerun: distill $rerun exited $?"; continue; }
  fi
  if [ ! -f "$rerun/distilled_best.safetensors" ] || ! grep -qs "^distill " "$rerun/resources.tsv"; then
    echo "rerun: $rerun has no distilled data or no figures (finished outside this script?): nothing added"; continue
  fi
  cmp -s "$rerun/distilled_best.safetensors" "$published/distilled_best.safetensors" && data=same || data=other
  { echo "rerun $(cat "$rerun/commit") $data"; cat "$rerun/resources.tsv"; } >> "$published/resources.tsv"
  echo "rerun: $published/resources.tsv has the figures of $rerun ($data distilled data)"
done
