"""Without --preset, distill picks the cpu preset on a machine without a GPU (and says why), the paper's
settings where a GPU is visible; an explicit --preset or flag always wins."""

import json

import pytest
import torch

from ddattn import settings


def test_no_gpu_means_the_cpu_preset(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = settings.parse_args(["--task", "mrpc"])
    assert args.preset == "cpu" and args.preset_reason == "no GPU visible"
    assert (args.seq_len, args.init, args.attn_init, args.max_steps, args.lr_inner) == (64, "real", "model", 450, 0.1)
    assert "preset_reason" not in settings.saved_settings(args)             # config.json: settings only
    json.dumps(settings.saved_settings(args))


def test_the_cpu_preset_uses_hard_labels_and_3_shots_on_mrpc_only(monkeypatch):
    """MRPC's entry in TASK_PRESETS (chosen on held-out training data): hard labels, 3 shots; a flag still wins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mrpc = settings.parse_args(["--task", "mrpc"])
    assert (mrpc.label_type, mrpc.shots) == ("hard", 3)
    assert "--label-type hard for mrpc, --shots 3 for mrpc" in settings.preset_summary(mrpc)
    assert settings.parse_args(["--task", "mrpc", "--label-type", "soft"]).label_type == "soft"
    assert settings.parse_args(["--task", "mrpc", "--shots", "1"]).shots == 1
    sst2 = settings.parse_args(["--task", "sst2"])
    assert (sst2.label_type, sst2.shots) == ("soft", 1)
    assert settings.parse_args(["--task", "mrpc", "--preset", "paper"]).label_type == "soft"


def test_a_gpu_means_the_paper_preset(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = settings.parse_args(["--task", "mrpc"])
    assert args.preset == "paper" and (args.seq_len, args.epochs, args.init, args.attn_init) == (512, 30, "random", "random")
    assert settings.parse_args(["--task", "mrpc", "--device", "cpu"]).preset == "cpu"    # a GPU, but not used


def test_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = settings.parse_args(["--task", "mrpc", "--preset", "paper", "--seq-len", "128"])
    assert args.preset == "paper" and args.seq_len == 128 and args.preset_reason is None
    assert settings.parse_args(["--task", "mrpc", "--inner-lr", "0.05"]).inner_lr == 0.05


def test_settings_are_built_once_and_frozen(monkeypatch):
    import dataclasses
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = settings.parse_args(["--task", "mrpc", "--shots", "2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.shots = 3
    assert settings.step_batch_size(dataclasses.replace(args, data_per_step="different", steps=2), 2) == 2
