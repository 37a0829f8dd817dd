#!/usr/bin/env bash
# Second pilot round for the cpu preset on AG News, same protocol as ag_news_pilot.sh (120 outer steps,
# validation on 500 held-out *training* examples). Round 1 showed: --init real > random (62.6 vs 40.6 %
# validation accuracy at step 120/80); raising α for η̃ and the labels to 0.1 (η̃_0 0.3 or 1) stays at
# chance. This round varies η̃_0, λ and α one at a time around (η̃_0 0.1, real, α 1e-2, λ 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--task ag_news --seq-len 64 --max-length 128 --max-steps 120 --val-every 40 --val-size 500 --val-models 2 --epochs 3 --init real)
run() { name=$1; shift; [ -d runs/ag_news/$name ] && return 0
        OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m ddattn.distill "${COMMON[@]}" --name "$name" "$@"; }
run pilot-eta0.3-real        --inner-lr 0.3
run pilot-eta0.1-real-l10    --inner-lr 0.1 --attn-weight 10
run pilot-eta0.1-real-lr0.03 --inner-lr 0.1 --lr 0.03
run pilot-eta0.1-real-none   --inner-lr 0.1 --attention-type none
run pilot-eta0.03-real       --inner-lr 0.03
