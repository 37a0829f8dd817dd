#!/usr/bin/env bash
# Pilot sweep for the cpu preset on AG News (1 shot/class, 1 step, SL + AL, S = 64, real batch 32 × 128):
# 120 outer steps each (warmup + decay over those 120), validation every 40 steps on 500 held-out
# *training* examples with 2 fresh heads. Selection: best validation accuracy/loss, never the test split.
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--task ag_news --seq-len 64 --max-length 128 --max-steps 120 --val-every 40 --val-size 500 --val-models 2 --epochs 3)
run() { name=$1; shift; [ -d runs/ag_news/$name ] && return 0   # (pilot-eta0.1-random was stopped after its step-80 validation)
        OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python -m ddattn.distill "${COMMON[@]}" --name "$name" "$@"; }
run pilot-eta0.1-random   --inner-lr 0.1 --init random
run pilot-eta0.1-real     --inner-lr 0.1 --init real
run pilot-eta0.3-real-fast --inner-lr 0.3 --init real --lr-inner 0.1 --lr-labels 0.1
run pilot-eta1-real-fast   --inner-lr 1.0 --init real --lr-inner 0.1 --lr-labels 0.1
run pilot-eta0.3-real-fast-l10 --inner-lr 0.3 --init real --lr-inner 0.1 --lr-labels 0.1 --attn-weight 10
run pilot-eta0.3-random-fast --inner-lr 0.3 --init random --lr-inner 0.1 --lr-labels 0.1
