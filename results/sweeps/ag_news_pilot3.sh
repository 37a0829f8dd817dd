#!/usr/bin/env bash
# Third pilot round (same protocol as ag_news_pilot.sh). Round 2 so far: η̃_0 = 0.3 stays at chance at step 40
# with η̃ pushed down (stopped there). Here: no attention labels, a larger α, a smaller η̃_0, and attention
# labels initialised to the pretrained model's own [CLS] attention (--attn-init model: the KL term starts at 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--task ag_news --seq-len 64 --max-length 128 --max-steps 120 --val-every 40 --val-size 500 --val-models 2 --epochs 3 --init real)
run() { name=$1; shift; [ -d runs/ag_news/$name ] && return 0
        OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m ddattn.distill "${COMMON[@]}" --name "$name" "$@"; }
run pilot-eta0.1-real-none   --inner-lr 0.1 --attention-type none
run pilot-eta0.1-real-amodel --inner-lr 0.1 --attn-init model
run pilot-eta0.1-real-amodel-l10 --inner-lr 0.1 --attn-init model --attn-weight 10
run pilot-eta0.1-real-lr0.03 --inner-lr 0.1 --lr 0.03
run pilot-eta0.03-real       --inner-lr 0.03
