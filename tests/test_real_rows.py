"""Which training rows feed the outer loss and the held-out slice: --balance-classes, --real-rows and
--held-out sentences, as a distillation uses them (data.py holds the functions, test_data.py their cases)."""

import pytest
import torch

from ddattn import data, distill, tasks
from ddattn.settings import load_or_start
from tests.helpers import TINY_RUN, cli_error


def distillation(argv):
    """A Distillation set up from `argv` (model, data, D̃), its run released at once: nothing is stepped."""
    args, run, checkpoint = load_or_start(argv)
    try:
        return distill.Distillation(args, run, checkpoint)
    finally:
        run.release()


def test_balanced_real_batches_hold_both_classes_equally(env):
    loop = distillation([*TINY_RUN, "--balance-classes", "--name", "balanced"])
    labels = loop.train.labels
    assert loop.total_steps == 2 and len(loop.train_idx) == 48
    assert labels[loop.train_idx].float().mean() > 0.6  # MRPC: most pairs are paraphrases
    for s in range(6):  # three epochs' worth of batches: each from the epoch's own order
        rows = torch.cat([batch["labels"] for batch in loop.real_batch(s)])
        assert torch.bincount(rows, minlength=2).tolist() == [4, 4], s
    plain = distillation([*TINY_RUN, "--name", "plain"])
    assert torch.equal(plain.train_idx, loop.train_idx)  # the same slice, only the batches differ
    assert not all(
        torch.equal(a["labels"], b["labels"]) for s in range(2) for a, b in zip(plain.real_batch(s), loop.real_batch(s))
    )


SENTENCES = [f"the {w} film number {i} is {'fine' if i % 2 else 'dull'} ." for i, w in enumerate(["new", "old"] * 12)]


@pytest.fixture
def phrases(tmp_path, monkeypatch):
    """A single-text task in SST-2's form: 24 sentences, and after each two phrases of its own cut from it."""
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path / "runs"))
    rows = []
    for i, sentence in enumerate(SENTENCES):
        words, label = sentence.split(), "good" if i % 2 else "bad"
        rows += [f"{sentence},{label}", f"{' '.join(words[2:5])},{label}", f"{' '.join(words[3:6])},{label}"]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("text,label\n" + "\n".join(rows[:12]) + "\n")
    custom = [
        "--task",
        "custom",
        "--train-file",
        str(tmp_path / "train.csv"),
        "--eval-file",
        str(tmp_path / "test.csv"),
    ]
    return [*custom, "--text-columns", "text", "--label-column", "label", "--labels", "bad,good"]


def test_a_held_out_slice_of_whole_sentences_leaves_their_phrases_out(phrases):
    small = ["--seq-len", "8", "--max-length", "16", "--real-batch-size", "4", "--val-size", "6", "--val-models", "1"]
    loop = distillation([*phrases, *small, "--held-out", "sentences", "--name", "held-out"])
    texts = [e.text_a for e in tasks.read_examples(loop.task, "train")]
    held = {texts[i] for i in loop.val_idx}
    assert len(held) == 6 and held <= set(SENTENCES)
    assert len(loop.train_idx) == 72 - 6 * 3  # the 6 sentences and their 12 phrases are out
    for i in loop.train_idx.tolist():
        assert not any(f" {texts[i]} " in f" {sentence} " for sentence in held), texts[i]  # whole words
    only = distillation([*phrases, *small, "--held-out", "sentences", "--real-rows", "sentences", "--name", "only"])
    assert {texts[i] for i in only.train_idx} == set(SENTENCES) - held
    assert torch.equal(only.val_idx, loop.val_idx)
    random = distillation([*phrases, *small, "--real-rows", "sentences", "--name", "random-slice"])
    assert set(random.train_idx.tolist()) <= set(data.whole_rows(texts).tolist())


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--held-out", "sentences"], "need a single-text task; mrpc has pairs"),
        (["--real-rows", "sentences"], "need a single-text task"),
        (["--balance-classes", "--real-batch-size", "1"], "--balance-classes needs --real-batch-size ≥ 2"),
    ],
)
def test_impossible_row_choices_are_one_line(env, capsys, flags, expected):
    assert expected in cli_error(distill.main, [*TINY_RUN, *flags, "--name", "refused"], capsys)
