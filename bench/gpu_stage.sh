#!/usr/bin/env bash
# Stage bench/gpu_check.sh for a lent GPU machine (the device tool), from this checkout, everything committed:
#   bash bench/gpu_stage.sh
# A device call sends the checkout's tracked and untracked-not-ignored files and the ignored paths it
# carries, 64 MiB in all, and nothing beside the checkout: not ../shared, and not the converted MiniLM
# (87 MB in float32). So this script
#   1. writes weights/minilm-l6-bf16: MiniLM with its tensors in bfloat16 (43 MiB; load_pretrained reads
#      them as float32, so there it is MiniLM rounded to bf16: the same shapes, ops and speed), which
#      gpu_check.sh puts in place of weights/minilm-l6 where that is missing;
#   2. fills data/mrpc (from ../shared/data);
#   3. makes the branch gpu-slim, this commit without results/ (77 MB of published runs, more than the
#      limit alone), without touching the working tree or the current branch;
#   4. prints what will travel and the three steps of the call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LIMIT_MIB=64
fail() { echo "error: $*" >&2; exit 1; }
[ -f weights/minilm-l6/model.safetensors ] || fail "weights/minilm-l6 is missing; run make weights first"
if git rev-parse -q --verify gpu-slim >/dev/null && [[ "$(git log -1 --format=%s gpu-slim)" != gpu-slim:* ]]; then
  fail "the branch gpu-slim holds commits of its own (not this script's); move them elsewhere first"
fi
git diff --quiet HEAD -- . ':!results' || echo "warning: uncommitted changes: gpu-slim is made of the last commit"

"$PY" - <<'PY'                                                                                     # 1
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

source, target = Path("weights/minilm-l6"), Path("weights/minilm-l6-bf16")
target.mkdir(exist_ok=True)
for name in ("config.json", "tokenizer.json"):
    shutil.copy(source / name, target / name)
tensors = load_file(source / "model.safetensors")
save_file({name: t.to(torch.bfloat16) for name, t in tensors.items()}, target / "model.safetensors")
PY
"$PY" -m ddattn.fetch --task mrpc > /dev/null                                                    # 2

index=$(mktemp -u); trap 'rm -f "$index"' EXIT                                                     # 3
GIT_INDEX_FILE=$index git read-tree HEAD
GIT_INDEX_FILE=$index git rm -r -q --cached --ignore-unmatch results
tree=$(GIT_INDEX_FILE=$index git write-tree)
head=$(git rev-parse HEAD)
slim=$(git -c user.name="$(git config user.name || echo gpu_stage)" -c user.email="$(git config user.email || echo gpu_stage@localhost)" \
  commit-tree "$tree" -p "$head" -m "gpu-slim: ${head:0:7} without results/, for a device call (bench/gpu_stage.sh)")
git branch -f gpu-slim "$slim"
back=$(git symbolic-ref -q --short HEAD || echo "--detach $head")

mib() { awk '{ s += $1 } END { printf "%.1f", s / 1048576 }'; }                                  # 4
tracked=$(git ls-tree -r -l gpu-slim | awk '$2 == "blob" { print $4 }' | mib)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -b | cut -f1 | mib)
carried=$(du -b weights/minilm-l6-bf16/* data/mrpc/* | cut -f1 | mib)
total=$(echo "$tracked $untracked $carried" | awk '{ printf "%.1f", $1 + $2 + $3 }')
echo "travels: gpu-slim's files $tracked MiB + untracked $untracked MiB + carried $carried MiB = $total MiB (limit $LIMIT_MIB MiB)"
if awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN { exit !(t > l) }'; then
  fail "more than the limit would travel; commit or ignore untracked files"
fi
cat <<STEPS
Then, in this checkout:
  1. git switch gpu-slim           (results/ leaves the working tree; it stays in the commits)
  2. the device tool's run, timeout_s 540, carry ["weights/minilm-l6-bf16", "data/mrpc"], command:
     export DDATTN_COMMIT=$head; timeout 480 bash bench/gpu_check.sh > \$OUT/gpu_check.log 2>&1; s=\$?; tar czf \$OUT/cuda.tgz --exclude=checkpoint.pt bench/results/cuda-*-[0-9]*; exit \$s
  3. git switch $back       (back; results/ returns), then unpack cuda.tgz here and commit it
STEPS
