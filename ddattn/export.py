"""A fine-tuned classifier in the Hugging Face layout: written by `python -m ddattn.train`, read by
`python -m ddattn.predict`.

    config.json        a BertForSequenceClassification config: the BERT fields (convert.to_hf_config),
                       id2label / label2id from the task's label names, and a `ddattn` block (task,
                       max_length, single or pair text, the run and head seed it was trained from)
    model.safetensors  float32 tensors under Hugging Face's names (convert.to_hf_weights)
    tokenizer.json     the checkpoint's tokenizer, the one the model was trained with

`transformers.BertForSequenceClassification.from_pretrained(DIR)` loads it as it is; `python -m
ddattn.convert --src DIR` reads its encoder back, and `load_exported` the whole classifier.
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from safetensors.torch import save_file

from .convert import convert_weights, read_hf_config, read_hf_weights, to_hf_config, to_hf_weights
from .errors import UserError
from .method.bert import BertConfig, Params

ARCHITECTURE = "BertForSequenceClassification"


@dataclass(frozen=True)
class Classifier:
    """A model that classifies text, with what it needs to read its input and name its outputs."""

    config: BertConfig
    theta: Params  # encoder, pooler and classifier.{weight,bias}
    tokenizer_path: Path
    label_names: Tuple[str, ...]  # class index → name
    max_length: int  # truncation length it was trained with
    is_pair: bool  # inputs are (text a, text b) pairs
    task: str


def hf_config(classifier: Classifier, source: dict) -> dict:
    """The exported config.json: Hugging Face's fields, then ddattn's own block."""
    labels = classifier.label_names
    return {
        "architectures": [ARCHITECTURE],
        **to_hf_config(classifier.config),
        "num_labels": len(labels),
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "torch_dtype": "float32",
        "ddattn": {
            "task": classifier.task,
            "text": "pair" if classifier.is_pair else "single",
            "max_length": classifier.max_length,
            **source,
        },
    }


def refuse_existing(out: Path) -> None:
    """Outputs are never overwritten: an existing `out` is an error."""
    if out.exists():
        raise UserError(f"{out} already exists; nothing was written (choose another --out or remove it)")


def export_classifier(classifier: Classifier, out: Path, source: dict) -> None:
    """Write the three files into `out`, which must not exist: built in a temp folder beside it, then
    renamed, so `out` is complete or absent."""
    refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config(classifier, source), indent=2) + "\n")
        save_file(
            to_hf_weights(classifier.theta, classifier.config),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )  # what transformers expects to find
        shutil.copyfile(classifier.tokenizer_path, tmp / "tokenizer.json")
        refuse_existing(out)  # made meanwhile by someone else
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_exported(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def load_exported(path: Path) -> Classifier:
    """A directory written by `export_classifier` (through convert's readers: the same checks)."""
    config = read_hf_config(path / "config.json")
    values = json.loads((path / "config.json").read_text())
    block, id2label = values.get("ddattn"), values.get("id2label")
    classes = isinstance(id2label, dict) and set(id2label) == set(map(str, range(len(id2label))))
    if not isinstance(block, dict) or not classes:
        raise UserError(
            f"{path / 'config.json'} lacks a ddattn block or an id2label for classes 0 … C−1: "
            "export the classifier with `python -m ddattn.train`"
        )
    labels = tuple(id2label[str(i)] for i in range(len(id2label)))
    theta = convert_weights(read_hf_weights(path), config, num_labels=len(labels))
    return Classifier(
        config, theta, path / "tokenizer.json", labels, block["max_length"], block["text"] == "pair", block["task"]
    )
