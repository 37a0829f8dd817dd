"""Shared fixtures (the plain helpers are in tests/helpers.py): the tiny random BERT, the golden fixture,
MiniLM, task data, and the runs that several test files read."""

from pathlib import Path

import pytest
import torch

from ddattn.files import load_pretrained
from tests.helpers import GOLDEN, TINY, fetch, make_tiny_run, small_mrpc, tiny_theta


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

    from ddattn.paths import weights_dir

    path = weights_dir() / "minilm-l6"
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"{path} is missing: run `make weights` (python -m ddattn.convert) first")
    return load_pretrained(path, dtype=torch.float64)


@pytest.fixture(scope="session")
def sst2_data(tmp_path_factory):
    """A data directory with SST-2 (copied from ../shared/data by `python -m ddattn.fetch`)."""
    path = tmp_path_factory.mktemp("data")
    fetch("sst2", path)
    return path


@pytest.fixture(scope="session")
def mrpc_data(tmp_path_factory):
    """<root>/data/mrpc filled the way `make data TASK=mrpc` fills it (helpers.use_data links it in)."""
    root = tmp_path_factory.mktemp("shared")
    fetch("mrpc", root / "data")
    return root


@pytest.fixture
def env(tmp_path, tmp_path_factory, monkeypatch):
    """Runs under tmp_path/runs, the small MRPC copy as data (shared by the session), for in-process runs."""
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DDATTN_DATA_DIR", str(small_mrpc(tmp_path_factory.getbasetemp())))
    return tmp_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """runs/mrpc/tiny under the session's base dir (helpers.make_tiny_run), made once."""
    return make_tiny_run(tmp_path_factory.getbasetemp())
