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
    assert "preset_reason" not in settings.saved_settings(args)  # config.json: settings only
    json.dumps(settings.saved_settings(args))


def test_the_cpu_preset_changes_only_what_task_presets_says(monkeypatch):
    """TASK_PRESETS (each entry chosen on held-out training data): MRPC hard labels and 3 shots, SST-2
    α = 3e-2 and a held-out slice of whole sentences; other tasks keep the preset as it is; a flag still wins."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mrpc = settings.parse_args(["--task", "mrpc"])
    assert (mrpc.label_type, mrpc.shots) == ("hard", 3)
    assert "--label-type hard for mrpc, --shots 3 for mrpc" in settings.preset_summary(mrpc)
    assert settings.parse_args(["--task", "mrpc", "--label-type", "soft"]).label_type == "soft"
    assert settings.parse_args(["--task", "mrpc", "--shots", "1"]).shots == 1
    sst2 = settings.parse_args(["--task", "sst2"])
    assert (sst2.label_type, sst2.shots, sst2.lr, sst2.lr_inner, sst2.held_out) == ("soft", 1, 3e-2, 0.1, "sentences")
    assert "--lr 0.03 for sst2, --held-out sentences for sst2" in settings.preset_summary(sst2)
    assert settings.parse_args(["--task", "sst2", "--lr", "0.01"]).lr == 0.01
    for task in ("ag_news", "rte", "qnli_dev"):
        other = settings.parse_args(["--task", task])
        assert (other.label_type, other.shots, other.lr) == ("soft", 1, 1e-2)
    assert settings.parse_args(["--task", "mrpc", "--preset", "paper"]).label_type == "soft"


def test_a_gpu_means_the_gpu_preset_the_cpu_choices_with_more_outer_steps(monkeypatch):
    """The gpu preset differs from the cpu preset in its budget only: the paper's 30 epochs, or the budget
    study's choice on held-out loss (MRPC 3×: 9 epochs, 891 steps; SST-2 10×: 4,500 steps)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = settings.parse_args(["--task", "mrpc"])
    assert args.preset == "gpu" and args.preset_reason == "a GPU is visible"
    budgets = {"mrpc": (9, 0), "sst2": (30, 4500), "ag_news": (30, 0), "rte": (30, 0)}
    for task, budget in budgets.items():
        gpu = settings.parse_args(["--task", task])
        cpu = settings.parse_args(["--task", task, "--preset", "cpu"])
        differ = {k for k, v in vars(gpu).items() if vars(cpu)[k] != v}
        assert differ == {"preset", "preset_reason", "epochs", "max_steps"}, (task, differ)  # MRPC's hard labels too
        assert ((gpu.epochs, gpu.max_steps), (cpu.epochs, cpu.max_steps)) == (budget, (3, 450)), task
    assert settings.parse_args(["--task", "mrpc", "--epochs", "30"]).epochs == 30  # a flag still wins
    paper = settings.parse_args(["--task", "mrpc", "--preset", "paper"])  # only when asked for
    assert (paper.seq_len, paper.epochs, paper.init, paper.attn_init) == (512, 30, "random", "random")
    assert settings.parse_args(["--task", "mrpc", "--device", "cpu"]).preset == "cpu"  # a GPU, but not used


def test_explicit_choices_win(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = settings.parse_args(["--task", "mrpc", "--preset", "paper", "--seq-len", "128"])
    assert args.preset == "paper" and args.seq_len == 128 and args.preset_reason is None
    assert settings.parse_args(["--task", "mrpc", "--eta-init", "0.05"]).inner_lr == 0.05


def test_settings_are_built_once_and_frozen(monkeypatch):
    import dataclasses

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = settings.parse_args(["--task", "mrpc", "--shots", "2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.shots = 3
    assert settings.step_batch_size(dataclasses.replace(args, data_per_step="different", steps=2), 2) == 2


def test_renamed_flags_still_work_with_one_note(capsys):
    """--inner-lr, --lr-inner and --batch-size (the commands recorded in results/ use them) set what
    --eta-init, --lr-eta and --samples-per-step set, and say the new name in one line each."""
    from ddattn import settings

    common = ["--task", "sst2", "--preset", "cpu", "--steps", "2", "--shots", "2"]
    old = settings.parse_args([*common, "--inner-lr", "0.2", "--lr-inner=0.05", "--batch-size", "2"])
    notes = capsys.readouterr().err.splitlines()
    new = settings.parse_args([*common, "--eta-init", "0.2", "--lr-eta=0.05", "--samples-per-step", "2"])
    assert capsys.readouterr().err == ""
    assert old == new and (new.inner_lr, new.lr_inner, new.batch_size) == (0.2, 0.05, 2)
    assert notes == [
        "note: --inner-lr is now --eta-init",
        "note: --lr-inner is now --lr-eta",
        "note: --batch-size is now --samples-per-step",
    ]
