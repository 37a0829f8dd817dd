"""Many models at once in evaluation (evaluation.predict_models): the same predictions as one at a time.

Real MiniLM in fp32 and a distilled set whose models' predictions vary from example to example and
from model to model (results/runs/sst2/cpu-sl-al, dev 77 %), on the first 64 SST-2 dev sentences."""

import pytest
import torch

from ddattn import checks, evaluate, rundir, tasks
from ddattn import data as taskdata
from ddattn.errors import UserError
from ddattn.files import load_pretrained
from ddattn.method import evaluation
from ddattn.paths import weights_dir
from tests.helpers import REPO

RUN = REPO / "results" / "runs" / "sst2" / "cpu-sl-al"
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def setting(sst2_data):
    """(config, pretrained fp32, D̃, the first 64 SST-2 dev rows as one-length batches of at most 8)."""
    model_dir = weights_dir() / "minilm-l6"
    if not (model_dir / "model.safetensors").is_file():
        pytest.fail(f"{model_dir} is missing: run `make weights` (python -m ddattn.convert) first")
    settings, distilled = rundir.load_run(RUN)
    config, pretrained = load_pretrained(model_dir)
    split = taskdata.load_split(
        tasks.get_task("sst2"), "eval", model_dir / "tokenizer.json", settings["max_length"], str(sst2_data)
    )
    batches = taskdata.eval_batches(split, 8, indices=torch.arange(64), one_length=True)
    return config, pretrained, distilled, batches


@pytest.fixture(scope="module")
def trained(setting):
    config, pretrained, distilled, _ = setting
    return [evaluation.trained_model(pretrained, config, distilled, seed) for seed in SEEDS]


def test_models_at_once_predict_what_one_at_a_time_predicts(setting, trained):
    config, _, _, batches = setting
    one = [evaluation.predict(theta, config, batches) for theta in trained]
    losses, predictions, labels = evaluation.predict_models(trained, config, batches)
    assert predictions.shape == (len(SEEDS), 64)
    assert torch.equal(predictions, torch.stack([p for _, p, _ in one]))
    assert torch.equal(labels, one[0][2])
    assert losses == pytest.approx([loss for loss, _, _ in one], rel=1e-5)
    for p in predictions:  # a case that can fail: no model answers one class
        assert 0.2 < p.double().mean() < 0.8
    assert not all(torch.equal(predictions[0], p) for p in predictions[1:])  # and the models differ


def test_evaluate_distilled_in_chunks_matches_one_at_a_time(setting):
    """Three models two at a time (a chunk of two, then one): the same runs, in seed order, as one at a time."""
    config, pretrained, distilled, batches = setting
    runs = {
        k: evaluation.evaluate_distilled(
            pretrained, config, distilled, lambda: batches, SEEDS, ["accuracy"], models_at_once=k
        )
        for k in (1, 2)
    }
    assert [r["seed"] for r in runs[2]] == SEEDS
    for one, many in zip(runs[1], runs[2]):
        assert many["accuracy"] == one["accuracy"]
        assert many["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_one_length_batches_have_no_padding_and_keep_the_sorted_order(setting):
    _, _, _, batches = setting
    assert all(batch["attention_mask"].all() and len(batch["labels"]) <= 8 for batch in batches)
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert widths == sorted(widths) and len(set(widths)) > 1
    assert sum(len(batch["labels"]) for batch in batches) == 64


def test_models_at_once_setting():
    cpu = torch.device("cpu")
    assert evaluation.choose_models_at_once("auto", cpu, {}, None, [], 100) == 1  # a CPU: one at a time
    assert evaluation.choose_models_at_once("8", cpu, {}, None, [], 3) == 3  # never more than the models
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(UserError, match="--models-at-once must be auto or a whole number"):
            checks.check_models_at_once(bad)
    with pytest.raises(UserError, match="--models-at-once"):
        evaluate.main([str(RUN), "--models-at-once", "0"])


def test_each_batch_says_from_the_host_whether_it_is_padded(sst2_data):
    """`padded` (data.EvalBatch) is what the mask says, so `predict` drops exactly the masks of unpadded
    batches without asking the device; sorted pairs of SST-2 dev rows hold both kinds."""
    tokenizer = weights_dir() / "minilm-l6" / "tokenizer.json"
    split = taskdata.load_split(tasks.get_task("sst2"), "eval", tokenizer, 128, str(sst2_data))
    batches = taskdata.eval_batches(split, 2, indices=torch.arange(64))
    kinds = [batch.padded for batch in batches]
    assert kinds == [not bool(batch["attention_mask"].all()) for batch in batches] and len(set(kinds)) == 2
