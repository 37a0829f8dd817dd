#!/usr/bin/env bash
# Runs a command (a CI run, a timing) with every running distillation and evaluation paused by SIGSTOP, so
# that it has the machine to itself, then resumes them (SIGCONT, also on Ctrl-C). The pause lies inside the
# paused invocation's wall time in its run's resources.tsv, so a line "paused distill|evaluate SECONDS" is
# appended there and `make table` takes it off the distillation's wall time (ddattn/report.py).
#   results/paused.sh make test
set -o pipefail
cd "$(dirname "$0")/.."
declare -A what_of dir_of
for lock in runs/*/*/.lock; do  # the lock file of a run in progress holds its process's pid (ddattn/rundir.py)
  pid=$(cat "$lock" 2>/dev/null) || continue
  what=$(ps -o args= -p "$pid" 2>/dev/null | grep -oE 'ddattn\.(distill|evaluate)') || continue
  what_of[$pid]=${what#ddattn.}
  dir_of[$pid]=$(dirname "$lock")
done
resume() {
  [ ${#what_of[@]} -eq 0 ] && return
  kill -CONT "${!what_of[@]}" 2>/dev/null
  local seconds=$((SECONDS - start)) pid
  for pid in "${!what_of[@]}"; do
    echo "paused ${what_of[$pid]} $seconds" >> "${dir_of[$pid]}/resources.tsv"
    echo "paused.sh: resumed ${dir_of[$pid]} (${what_of[$pid]}, paused $seconds s)" >&2
  done
}
start=$SECONDS
[ ${#what_of[@]} -gt 0 ] && kill -STOP "${!what_of[@]}"
trap resume EXIT
"$@"
