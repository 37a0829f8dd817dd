#!/usr/bin/env bash
# The GPU check of issue 25, one script: on a GPU machine, from a checkout with ../shared beside it,
#   bash bench/gpu_check.sh            → bench/results/cuda-<gpu>-<date>.md (and the JSON/PNG of each step)
#   bash bench/gpu_check.sh --dry-run  → every step on the CPU at tiny sizes, into a temporary folder (CI)
# Steps: (1) one outer step against the reference with op and host-sync counts, T ∈ {1, 4}, both exact
# modes, MiniLM and (2) the bert-base shape (random weights), S = 512; (3) the memory sweep in T (recompute,
# T up to 32); (4) evaluation throughput on MRPC dev; (5) a 200-step gpu-preset MRPC distillation, timed.
# Needs: python3 with torch (a CUDA build on the GPU machine: the lent machines' image has one; elsewhere
# `pip install torch` picks one), safetensors, tokenizers, tqdm; the converted checkpoint weights/minilm-l6
# (`make weights`; on a lent machine, which can take 64 MiB in all, the bf16 copy that bench/gpu_stage.sh makes,
# put in its place here) and data/mrpc (copied from ../shared/data by step 0, or carried). Budget: ≤ 8 min on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ "${1:-}" = "--dry-run" ]; then
  dry=1; out=$(mktemp -d); device=cpu
  S=8; T_REF=1; T_SWEEP="1 2"; BASE_T=1; EVAL=(--eval-limit 16 --n-models 1 --matmul-size 128); STEPS=2; REPEAT=1
  # every step, small and in few processes: one mode, a tiny real batch, a small peak reading, the rows run in the
  # bench's own process, the bert-base shape at 1 of its layers; the distillation with tiny batches and validation
  SMALL=(--mode recompute --matmul-size 128 --threads 1 --real-batch 4 --real-len 16 --in-process)
  SHAPE=(--model-shape bert-base --layers 1); TINY=(--real-batch-size 4 --val-size 8 --val-models 1 --seq-len 8)
else
  dry=0; device=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device visible; use --dry-run on a CPU')"
  S=512; T_REF="1 4"; T_SWEEP="1 2 4 8 16 32"; BASE_T="1 4"; EVAL=(--n-models 100); STEPS=200; REPEAT=3
  SMALL=(); SHAPE=(--model-shape bert-base); TINY=()
  gpu=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
  out=bench/results/cuda-$gpu-$(date +%Y%m%d); mkdir -p "$out"
fi
report=$out.md; [ $dry = 1 ] && report=$out/report.md
weights=""
if [ ! -f weights/minilm-l6/model.safetensors ] && [ -f weights/minilm-l6-bf16/model.safetensors ]; then
  cp -r weights/minilm-l6-bf16 weights/minilm-l6                               # carried: bench/gpu_stage.sh
  weights="MiniLM's tensors were carried in bfloat16 (bench/gpu_stage.sh) and are read as float32."
fi
bench() { local name=$1; shift; echo "== $name: python -m ddattn.bench $*"
          "$PY" -m ddattn.bench --device $device --no-plot --json "$out/$name.json" "$@"; }
section() { printf '\n## %s\n\n`%s`\n\n' "$1" "$2" >> "$report"; cat "$out/$3.md" >> "$report"; }
start=$(date +%s)
printf '# GPU check (%s, %s)\n\nDevice: %s. Commit %s. Written by bench/gpu_check.sh%s.\n' "$(date -u +%F)" \
  "$([ $dry = 1 ] && echo 'dry run on the CPU, tiny sizes' || echo 'S = 512')" \
  "$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')")" \
  "${DDATTN_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" "$([ $dry = 1 ] && echo ' --dry-run')" > "$report"
[ -z "$weights" ] || printf '%s\n' "$weights" >> "$report"

"$PY" -m ddattn.fetch --task mrpc >/dev/null                                   # 0: data/mrpc from ../shared
bench minilm --reference --ops --seq-len $S --steps $T_REF --repeat $REPEAT "${SMALL[@]}"      # 1
section "One outer step, MiniLM, against the reference" "bench --reference --ops --seq-len $S --steps $T_REF" minilm
bench bert-base "${SHAPE[@]}" --reference --ops --seq-len $S --steps $BASE_T --repeat $REPEAT "${SMALL[@]}"   # 2
section "One outer step, bert-base shape (random weights)" "bench --model-shape bert-base --reference --ops" bert-base
bench sweep --mode recompute --seq-len $S --steps $T_SWEEP --repeat 1 "${SMALL[@]}"            # 3
section "Memory in T (recompute)" "bench --mode recompute --seq-len $S --steps $T_SWEEP" sweep
echo "== eval"                                                                   # 4
"$PY" -m ddattn.bench --eval --task mrpc --device $device --json "$out/eval.json" "${EVAL[@]}"
section "Evaluation throughput, MRPC dev" "bench --eval --task mrpc ${EVAL[*]}" eval
echo "== distill"                                                                # 5
runs=$out/runs; t0=$(date +%s)
DDATTN_RUNS_DIR=$runs "$PY" -m ddattn.distill --task mrpc --preset gpu --max-steps $STEPS --val-every $STEPS \
  --device $device --name gpu-check "${TINY[@]}" > "$out/distill.log" 2>&1
printf '\n## %s-step gpu-preset MRPC distillation\n\n%s s wall, log: %s\n\n```\n%s\n```\n' "$STEPS" \
  "$(( $(date +%s) - t0 ))" "$out/distill.log" "$(grep -v '%|' "$out/distill.log" | tail -4)" >> "$report"
printf '\nTotal: %s s.\n' "$(( $(date +%s) - start ))" >> "$report"
echo "wrote $report"
