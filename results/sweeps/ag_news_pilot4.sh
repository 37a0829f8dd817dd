#!/usr/bin/env bash
# Fourth pilot round (same protocol as ag_news_pilot.sh), after round 3: no attention labels beats random-init
# attention labels at 120 steps (75.8 vs 62.6 %), so attention labels start from the model's own attention
# (--attn-init model); here, with η̃ free to grow faster (α for η̃ only) and with a larger λ.
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--task ag_news --seq-len 64 --max-length 128 --max-steps 120 --val-every 40 --val-size 500 --val-models 2 --epochs 3 --init real)
run() { name=$1; shift; [ -d runs/ag_news/$name ] && return 0
        OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m ddattn.distill "${COMMON[@]}" --name "$name" "$@"; }
run pilot-eta0.1-real-amodel-lrinner0.1 --inner-lr 0.1 --attn-init model --lr-inner 0.1
run pilot-eta0.1-real-amodel-l10 --inner-lr 0.1 --attn-init model --attn-weight 10
