"""Evaluation and validation models are fresh: their heads never coincide with a head the distillation
trained against (the paper's protocol, Sec. 3.1), for any --seed of the run or of the evaluation."""

import itertools
import subprocess
import sys

import pytest

import ddattn.distill
import ddattn.evaluate
from ddattn import seeds
from ddattn.errors import UserError
from tests.conftest import REPO


def test_streams_never_share_a_seed():
    run_seeds = [0, 1, 2, 3, 7919, 10_000, seeds.SEED_LIMIT - 1]
    indices = list(range(2_000)) + [seeds.INDEX_LIMIT - 1]
    by_stream = {stream: {seeds.stream_seed(stream, s, i) for s in run_seeds for i in indices}
                 for stream in seeds.STREAMS}
    for stream, values in by_stream.items():
        assert len(values) == len(run_seeds) * len(indices), f"{stream}: two (seed, index) pairs collide"
    for a, b in itertools.combinations(by_stream, 2):
        assert not by_stream[a] & by_stream[b], f"streams {a} and {b} share a seed"
    assert max(max(v) for v in by_stream.values()) < 2 ** 64     # what torch.Generator.manual_seed takes


@pytest.mark.parametrize("bad", [-1, seeds.SEED_LIMIT])
def test_out_of_range_seed_is_refused(bad):
    with pytest.raises(UserError, match="--seed"):
        seeds.stream_seed("training-head", bad)


def test_distill_and_evaluate_draw_disjoint_heads(tmp_path, monkeypatch):
    """A tiny distillation and evaluation with the same --seed: record every head seed each one draws."""
    done = subprocess.run([sys.executable, "-m", "ddattn.fetch", "--task", "mrpc", "--data-dir", str(tmp_path / "data")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DDATTN_DATA_DIR", str(tmp_path / "data"))
    drawn = {"training": [], "validation or evaluation": []}

    def recorder(kind, original):
        def fresh_model(pretrained, config, num_classes, seed):
            drawn[kind].append(seed)
            return original(pretrained, config, num_classes, seed)
        return fresh_model

    monkeypatch.setattr(ddattn.distill, "fresh_model", recorder("training", ddattn.distill.fresh_model))
    monkeypatch.setattr(ddattn.evaluate, "fresh_model", recorder("validation or evaluation", ddattn.evaluate.fresh_model))
    ddattn.distill.main(["--task", "mrpc", "--train-limit", "80", "--val-size", "16", "--real-batch-size", "16",
                         "--seq-len", "8", "--max-length", "16", "--epochs", "1", "--val-models", "3",
                         "--val-every", "2", "--seed", "0", "--name", "heads"])
    validation_heads = list(drawn["validation or evaluation"])
    ddattn.evaluate.main([str(tmp_path / "runs" / "mrpc" / "heads"), "--n-models", "5", "--seed", "0"])
    evaluation_heads = drawn["validation or evaluation"][len(validation_heads):]

    assert len(drawn["training"]) == 4 and len(set(validation_heads)) == 3 and len(evaluation_heads) == 5
    assert not set(drawn["training"]) & set(validation_heads)
    assert not set(drawn["training"]) & set(evaluation_heads)
    assert not set(validation_heads) & set(evaluation_heads)
