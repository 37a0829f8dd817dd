# Sourced by results/table3_queue.sh and results/rerun_cost.sh: a command pinned to one core and one thread
# (CPU=N, THREADS=K change it), and timed by GNU time into a run's resources.tsv, after a line naming the CPU.
pin=(env OMP_NUM_THREADS="${THREADS:-1}" taskset -c "${CPU:-0}")
# "cpu NAME (CAPABILITIES)": machines of one kind differ in CPU, and a wall time compares only on one.
cpu() { local flags; flags=$(grep -m1 '^flags' /proc/cpuinfo)
  echo "cpu $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | sed 's/([RT]M*)//g' | xargs) ($(for f in avx2 avx512f amx_tile avx512_bf16; do
    [[ " $flags " == *" $f "* ]] && echo -n "$f "; done | xargs))"; }
# timed WHAT FILE COMMAND...: appends "cpu ..." and "WHAT WALL_SECONDS PEAK_KB" to FILE.
timed() { local what=$1 out=$2; shift 2; cpu >> "$out"; /usr/bin/time -a -o "$out" -f "$what %e %M" "$@"; }
