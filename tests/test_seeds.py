"""Evaluation and validation models are fresh: their heads never coincide with a head the distillation
trained against (the paper's protocol, Sec. 3.1), for any --seed of the run or of the evaluation."""

import itertools

import pytest
import torch

import ddattn.distill
import ddattn.evaluate
from ddattn import checks
from ddattn.errors import UserError
from ddattn.method import evaluation, outer, seeds
from tests.helpers import use_data

RUN_SEEDS = [0, 1, 2, 3, 7, 999, seeds.SEED_LIMIT - 1]


def test_streams_never_share_a_seed():
    indices = list(range(2_000)) + [seeds.INDEX_LIMIT - 1]
    by_stream = {
        stream: {seeds.stream_seed(stream, s, i) for s in RUN_SEEDS for i in indices} for stream in seeds.STREAMS
    }
    for stream, values in by_stream.items():
        assert len(values) == len(RUN_SEEDS) * len(indices), f"{stream}: two (seed, index) pairs collide"
    for a, b in itertools.combinations(by_stream, 2):
        assert not by_stream[a] & by_stream[b], f"streams {a} and {b} share a seed"
    assert max(max(v) for v in by_stream.values()) < 2**32  # all that torch's CPU generator keeps


def test_streams_never_share_a_draw():
    """Distinct seeds are not enough: torch's CPU generator keeps only the low 32 bits of a seed, so the
    numbers themselves are compared — every (stream, --seed, index) starts a different sequence."""
    draws = {
        (stream, s, i): tuple(torch.randn(4, generator=seeds.generator(stream, s, i)).tolist())
        for stream in seeds.STREAMS
        for s in RUN_SEEDS
        for i in [0, 1, 2, 99, seeds.INDEX_LIMIT - 1]
    }
    assert len(set(draws.values())) == len(draws)


def test_the_generator_keeps_only_32_bits_of_a_seed():
    """Why the packing is 32 bits wide (if torch ever keeps all 64, this test says the comment is stale)."""
    same = [torch.randn(3, generator=torch.Generator().manual_seed(seed)) for seed in (5, (1 << 32) + 5)]
    assert torch.equal(*same)


@pytest.mark.parametrize("bad", [-1, seeds.SEED_LIMIT])
def test_out_of_range_seed_is_refused(bad):
    with pytest.raises(UserError, match="--seed"):
        checks.check_seed(bad)
    with pytest.raises(ValueError, match="seed must be in"):
        seeds.stream_seed("training-head", bad)


def test_distill_and_evaluate_draw_disjoint_heads(tmp_path, mrpc_data, monkeypatch):
    """A tiny distillation and evaluation with the same --seed: record every head each one draws."""
    use_data(tmp_path, mrpc_data)
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DDATTN_DATA_DIR", str(tmp_path / "data"))
    drawn = {"training": [], "validation or evaluation": []}

    def recorder(kind, original):
        def fresh_model(pretrained, config, num_classes, seed):
            theta = original(pretrained, config, num_classes, seed)
            drawn[kind].append(tuple(theta["classifier.weight"].flatten().tolist()))
            return theta

        return fresh_model

    monkeypatch.setattr(outer, "fresh_model", recorder("training", outer.fresh_model))
    monkeypatch.setattr(evaluation, "fresh_model", recorder("validation or evaluation", evaluation.fresh_model))
    ddattn.distill.main(
        [
            "--task",
            "mrpc",
            "--train-limit",
            "80",
            "--val-size",
            "16",
            "--real-batch-size",
            "16",
            "--seq-len",
            "8",
            "--max-length",
            "16",
            "--epochs",
            "1",
            "--val-models",
            "3",
            "--val-every",
            "2",
            "--seed",
            "0",
            "--name",
            "heads",
        ]
    )
    validation_heads = list(drawn["validation or evaluation"])
    ddattn.evaluate.main([str(tmp_path / "runs" / "mrpc" / "heads"), "--n-models", "5", "--seed", "0"])
    evaluation_heads = drawn["validation or evaluation"][len(validation_heads) :]

    assert len(drawn["training"]) == 4 and len(set(validation_heads)) == 3 and len(evaluation_heads) == 5
    assert not set(drawn["training"]) & set(validation_heads)
    assert not set(drawn["training"]) & set(evaluation_heads)
    assert not set(validation_heads) & set(evaluation_heads)
