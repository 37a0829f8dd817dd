"""Shared fixtures: a tiny random BERT for fast exact tests, and the golden fixture's location."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddattn.method.bert import BertConfig, init_classifier, param_shapes

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("DDATTN_GOLDEN", REPO.parent / "shared" / "fixtures" / "minilm_golden.safetensors"))

TINY = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=32)


def tiny_theta(config: BertConfig = TINY, num_classes: int = 2, seed: int = 0, dtype=torch.float64):
    """Random parameters for `config`: weights N(0, 0.3²) so every nonlinearity is exercised, LayerNorm ≈ 1."""
    g = torch.Generator().manual_seed(seed)
    theta = {}
    for name, shape in param_shapes(config).items():
        value = torch.randn(shape, generator=g, dtype=dtype) * 0.3
        theta[name] = value + 1.0 if name.endswith("norm.weight") else value
    theta.update(init_classifier(config, num_classes, g, dtype=dtype))
    theta["classifier.weight"] *= 10   # a head large enough that logits depend on the input
    return theta


@pytest.fixture
def tiny():
    return TINY, tiny_theta()


@pytest.fixture(scope="session")
def golden_path():
    if not GOLDEN.is_file():
        pytest.fail(f"golden fixture {GOLDEN} not found; set DDATTN_GOLDEN or put ../shared beside the repo")
    return GOLDEN


@pytest.fixture(scope="session")
def minilm():
    """The converted default checkpoint in float64 (`make test` converts it first)."""
    from ddattn.files import load_pretrained
    from ddattn.paths import weights_dir

    path = weights_dir() / "minilm-l6"
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"{path} is missing: run `make weights` (python -m ddattn.convert) first")
    return load_pretrained(path, dtype=torch.float64)


@pytest.fixture(scope="session")
def sst2_data(tmp_path_factory):
    """A data directory with SST-2 (copied from ../shared/data by `python -m ddattn.fetch`)."""
    path = tmp_path_factory.mktemp("data")
    done = subprocess.run([sys.executable, "-m", "ddattn.fetch", "--task", "sst2", "--data-dir", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path
