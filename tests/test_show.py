"""`python -m ddattn.show` on the tiny distillation run (the `tiny_run` fixture), and on copies of it whose
contents are known."""

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from ddattn import show
from ddattn.files import load_distilled, load_pretrained, save_distilled
from ddattn.method.distilled import DistilledData
from ddattn.paths import weights_dir
from tests.helpers import cli_error

WORDS = ["the", "cat", "sat", "on", "a", "mat", "today", "."]


def copy_with(run: Path, target: Path, config: dict = None, **tensors) -> Path:
    """A copy of the run whose distilled_best has some tensors replaced (None: removed) or config fields changed."""
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("*.png", "checkpoint.pt"))
    data = load_distilled(run / "distilled_best.safetensors")
    merged = {k: v for k, v in {**data.tensors(), **tensors}.items() if v is not None}
    save_distilled(DistilledData(replace(data.config, **(config or {})), merged), target / "distilled_best.safetensors")
    return target


def test_text_names_every_sample_its_label_and_eta(tiny_run, capsys):
    show.main([str(tiny_run)])
    out = capsys.readouterr().out
    data = load_distilled(tiny_run / "distilled_best.safetensors")
    assert "sample 0 · class 0 (not_equivalent)" in out and "sample 1 · class 1 (equivalent)" in out
    assert out.count("nearest tokens") == 2
    assert f"η̃ = softplus(lr_raw): step 1: {torch.nn.functional.softplus(data.lr_raw[0]).item():.5g}" in out
    soft = torch.softmax(data.label_logits[0], -1).tolist()  # soft labels: softmax of the logits
    assert f"label ỹ: not_equivalent {soft[0]:.3f}, equivalent {soft[1]:.3f}" in out
    png = tiny_run / "attention_labels.png"
    assert f"attention labels of sample 0: {png}" in out
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nearest_tokens_of_real_word_embeddings_are_those_words(tiny_run, tmp_path, capsys):
    """x̃ set to (scaled) rows of the word-embedding matrix: cosine similarity finds exactly those tokens."""
    tokenizer = Tokenizer.from_file(str(weights_dir() / "minilm-l6" / "tokenizer.json"))
    ids = [tokenizer.token_to_id(w) for w in WORDS]
    assert None not in ids
    _, theta = load_pretrained(weights_dir() / "minilm-l6")
    x = theta["embeddings.word"][ids] * 3.0  # (8, D): cosine ignores the scale
    copy = copy_with(tiny_run, tmp_path / "words", x=torch.stack([x, x.flip(0)]))
    show.main([str(copy), "--top", "2", "--png", str(tmp_path / "a.png")])
    out = capsys.readouterr().out
    assert "nearest tokens (mean cosine 1.000): " + " ".join(WORDS) in out
    assert "nearest tokens (mean cosine 1.000): " + " ".join(reversed(WORDS)) in out
    assert "       1: cat 1.000, " in out  # --top 2: per position
    assert (tmp_path / "a.png").is_file() and not (copy / "attention_labels.png").exists()


def test_hard_labels_are_shown_as_stored_and_no_attention_labels_no_png(tiny_run, tmp_path, capsys):
    copy = copy_with(
        tiny_run,
        tmp_path / "hl",
        config={"label_type": "hard", "attention_type": "none"},
        attn_logits=None,
        label_logits=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    )
    show.main([str(copy)])
    out = capsys.readouterr().out
    assert "label ỹ: not_equivalent 1.000, equivalent 0.000" in out and "no attention labels" in out
    assert not (copy / "attention_labels.png").exists()


def test_all_query_attention_labels_draw_the_cls_row(tiny_run):
    data = load_distilled(tiny_run / "distilled_best.safetensors")
    M, L, H, S = data.attn_logits.shape
    logits = torch.randn(M, L, H, S, S)
    full = DistilledData(replace(data.config, attention_type="all"), {**data.tensors(), "attn_logits": logits})
    assert torch.allclose(show.attention_labels(full, 1), torch.softmax(logits[1, :, :, 0], -1))


def test_without_matplotlib_one_line_and_no_png(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    show.main([str(tiny_run), "--png", str(tmp_path / "none.png")])
    out = capsys.readouterr().out
    assert "pip install matplotlib" in out and not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sample", "2"], "--sample must be between 0 and 1"),
        (["--top", "0"], "--top must be between 1"),
        (["--which", "worst"], "invalid choice"),
    ],
)
def test_bad_input_is_one_error_line(tiny_run, capsys, argv, message):
    assert message in cli_error(show.main, [str(tiny_run), *argv], capsys)


def test_not_a_run_is_one_error_line(tmp_path, capsys):
    assert "is missing" in cli_error(show.main, [str(tmp_path)], capsys)
