"""FLOPs of scoring one model on an evaluation split: the reference evaluator against ddattn's.
`python bench/eval_flops.py RUN [RUN ...]` (bench/README.md, "Many models at once").

Counted by `bench_eval.scoring_flops` (what `python -m ddattn.bench --eval` also reports). The reference
runs every layer over the split in file order, 128 per batch, each padded to its longest row rounded up to
8; ddattn all but the last layer and the [CLS]-only last one over batches of 64 sorted by length, as wide
as their longest row (distill's validation) or of one length each (`python -m ddattn.evaluate`)."""

import sys
from pathlib import Path

from ddattn import data as taskdata
from ddattn import reference, tasks
from ddattn.bench_eval import scoring_flops
from ddattn.data import eval_batches
from ddattn.files import read_bert_config
from ddattn.paths import resolve_checkpoint
from ddattn.rundir import load_run

for run in map(Path, sys.argv[1:]):
    settings, _ = load_run(run)
    model_dir = resolve_checkpoint(settings["model"])
    config = read_bert_config(model_dir / "config.json")
    split = taskdata.load_split(
        tasks.task_from_settings(settings),
        "eval",
        model_dir / "tokenizer.json",
        settings["max_length"],
        settings.get("data_dir"),
    )
    ref = scoring_flops(config, taskdata.batches(split, reference.EVAL_BATCH_SIZE), cls_only_last=False)
    padded = scoring_flops(config, eval_batches(split, 64), cls_only_last=True)
    one_length = scoring_flops(config, eval_batches(split, 64, one_length=True), cls_only_last=True)
    print(
        f"{run} ({len(split)} examples): reference {ref / 1e9:.0f} GFLOP; ddattn {padded / 1e9:.0f} "
        f"(sorted, padded: reference ÷ ddattn {ref / padded:.2f}), {one_length / 1e9:.0f} "
        f"(one length per batch: {ref / one_length:.2f})"
    )
