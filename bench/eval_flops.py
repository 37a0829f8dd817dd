"""FLOPs of scoring one model on an evaluation split: the reference evaluator against ddattn's.
`python bench/eval_flops.py RUN [RUN ...]` (bench/README.md, "Many models at once").

A matmul of (m × k) by (k × n) counts 2mkn. Per layer and sequence of S tokens (hidden D, FFN I):
queries, attention output and FFN on the rows the layer computes (all S, or [CLS] only in ddattn's last
layer), keys and values on all S rows, and q kᵀ and P v (2 · rows · S · D). The reference runs 6 full
layers over the split in file order, 128 per batch, each padded to its longest row rounded up to 8;
ddattn 5 full layers and the [CLS]-only last one over batches of 64 sorted by length, as wide as their
longest row (distill's validation) or of one length each (`python -m ddattn.evaluate`)."""

import sys
from pathlib import Path

from ddattn import data as taskdata
from ddattn import reference, tasks
from ddattn.data import eval_batches
from ddattn.files import read_bert_config
from ddattn.method.bert import BertConfig
from ddattn.paths import resolve_checkpoint
from ddattn.rundir import load_run


def layer_flops(c: BertConfig, B: int, S: int, query_rows: int) -> int:
    D, I = c.hidden_size, c.intermediate_size
    return 2 * B * (query_rows * (2 * D * D + 2 * D * I) + S * 2 * D * D + query_rows * S * 2 * D)


def scoring_flops(c: BertConfig, batches, cls_only_last: bool) -> int:
    total = 0
    for batch in batches:
        B, S = batch["input_ids"].shape
        total += sum(
            layer_flops(c, B, S, 1 if cls_only_last and i == c.num_layers - 1 else S) for i in range(c.num_layers)
        )
    return total


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
