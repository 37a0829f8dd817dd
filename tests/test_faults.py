"""Bad input and faults, as a hostile user makes them (issue 11): each is one `error:` line naming the file or
flag, exit status 2, no traceback, and every good file written before is byte-identical afterwards. Runs are
tiny (2 outer steps, 8-token samples, 64 training pairs) and in-process where that proves the same thing;
subprocesses only where a second process or kill -9 is the point."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from ddattn import baselines, data, distill, evaluate, paths, report, show, tasks
from ddattn.errors import UserError, run_cli
from ddattn.files import load_distilled, read_distilled_metadata, save_distilled
from ddattn.method import outer
from ddattn.method.distilled import DistilledConfig, DistilledData
from ddattn.settings import load_or_start
from tests.helpers import REPO, TINY_RUN, cli_error, heads, logged_steps, resumed_at, small_mrpc, snapshot


# --- fixtures and helpers --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (made once), to be copied and damaged."""
    base = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("DDATTN_RUNS_DIR", str(base / "runs"))
        m.setenv("DDATTN_DATA_DIR", str(small_mrpc(tmp_path_factory.getbasetemp())))
        distill.main([*TINY_RUN, "--name", "done"])
    return base / "runs" / "mrpc" / "done"


def copy_run(finished: Path, env: Path) -> Path:
    """The finished run copied into env's runs dir (runs/mrpc/done)."""
    return Path(shutil.copytree(finished, env / "runs" / "mrpc" / "done"))


def refused(main, argv, capsys, folder: Path = None) -> str:
    """The error line of a refused command; `folder`'s files are byte-identical afterwards."""
    before = snapshot(folder) if folder else None
    line = cli_error(main, argv, capsys)
    if folder:
        assert snapshot(folder) == before
    return line


def provenance(path: Path) -> dict:
    """What distill stored with a distilled dataset besides its config (task, model, step, ...)."""
    return {k: v for k, v in read_distilled_metadata(path).items() if k != "config"}


def write_eval_json(run: Path, task: str, settings: dict, **fields) -> None:
    """An eval.json as `python -m ddattn.evaluate` writes it (the fields report reads)."""
    (run / "eval.json").write_text(
        json.dumps(
            {
                "task": task,
                "split": "eval",
                "checkpoint": "minilm-l6",
                "n_models": 1,
                "settings": settings,
                "runs": [{}],
                "summary": {"accuracy": {"mean": 0.5, "std": 0.0}},
                **fields,
            }
        )
    )


def csv_task(
    folder: Path, train: str, evaluation: str = "text,label\nok,pos\nbad,neg\n", labels=None, encoding="utf-8"
) -> list:
    """distill flags for a custom task on train.csv / eval.csv written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text(train, encoding=encoding)
    (folder / "eval.csv").write_text(evaluation)
    return [
        "--task",
        "custom",
        "--train-file",
        str(folder / "train.csv"),
        "--eval-file",
        str(folder / "eval.csv"),
        "--text-columns",
        "text",
        "--label-column",
        "label",
        *(["--labels", labels] if labels else []),
    ]


ROWS = "".join(f"{'good' if i % 2 else 'poor'} film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))


# --- 1. silent wrong results -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change,expected",
    [
        ({"num_classes": 3}, "distilled_best.safetensors does not belong to this run: num_classes 3 (the run: 2)"),
        ({"hidden_size": 8}, "distilled_best.safetensors was not distilled for checkpoint"),
    ],
    ids=["3 classes in an MRPC run", "another model width"],
)
@pytest.mark.parametrize("main", [evaluate.main, show.main], ids=["evaluate", "show"])
def test_distilled_data_that_does_not_fit_the_run_is_refused(finished, env, capsys, main, change, expected):
    run = copy_run(finished, env)
    best = run / "distilled_best.safetensors"
    save_distilled(DistilledData.initial(replace(load_distilled(best).config, **change)), best, extra=provenance(best))
    assert expected in refused(
        main, [str(run), "--n-models", "1"] if main is evaluate.main else [str(run)], capsys, run
    )
    assert not (run / "eval.json").exists()


def test_distilled_data_of_another_task_or_checkpoint_is_refused(finished, env, capsys):
    run = copy_run(finished, env)
    best = run / "distilled_best.safetensors"
    save_distilled(load_distilled(best), best, extra={**provenance(best), "task": "rte", "model": "bert-base"})
    line = refused(evaluate.main, [str(run), "--n-models", "1"], capsys, run)
    assert "task 'rte'" in line and "model 'bert-base'" in line


def test_distilled_tensors_that_contradict_their_config_are_refused(finished, env, capsys):
    run = copy_run(finished, env)
    best = run / "distilled_best.safetensors"
    data = load_distilled(best)
    save_distilled(
        DistilledData(data.config, {**data.tensors(), "x": torch.zeros(1, 1, 384)}), best, extra=provenance(best)
    )
    assert "do not match its own config" in refused(show.main, [str(run)], capsys, run)


def test_report_refuses_an_eval_json_of_another_task(finished, env, capsys):
    run = copy_run(finished, env)
    write_eval_json(run, "sst2", {"task": "sst2", "model": "minilm-l6"})
    line = refused(report.main, ["--runs-dir", str(env / "runs"), "--out", str(env / "results")], capsys, run)
    assert "eval.json evaluates task 'sst2'" in line and "lies under mrpc/" in line
    assert not (env / "results").exists()


def test_report_refuses_an_eval_json_whose_distilled_data_has_another_class_count(finished, env, capsys):
    run = copy_run(finished, env)
    best = run / "distilled_best.safetensors"
    write_eval_json(run, "mrpc", json.loads((run / "config.json").read_text()), distilled=best.name)
    save_distilled(
        DistilledData.initial(replace(load_distilled(best).config, num_classes=3)), best, extra=provenance(best)
    )
    line = refused(report.main, ["--runs-dir", str(env / "runs"), "--out", str(env / "results")], capsys, run)
    assert "does not belong to this run: num_classes 3 (the run: 2)" in line


def test_resume_refuses_a_checkpoint_tensor_that_would_only_broadcast(finished, env, capsys):
    run = copy_run(finished, env)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["distilled"]["x"] = torch.ones(1, 1, 384)  # broadcasts into (2, 8, 384)
    torch.save(checkpoint, run / "checkpoint.pt")
    line = refused(distill.main, ["--resume", str(run)], capsys, run)
    assert "checkpoint.pt (distilled data): x is (1, 1, 384) float32, expected (2, 8, 384) float32" in line


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--clip", "-1"], "--clip must be a positive number"),
        (["--clip", "nan"], "--clip must be a positive number"),
        (["--max-steps", "-1"], "--max-steps must be ≥ 0"),
        (["--weight-decay", "-1"], "--weight-decay must be ≥ 0"),
        (["--train-limit", "-5"], "--train-limit must be ≥ 0"),
        (["--max-length", "600"], "--max-length 600 exceeds the 512 positions"),
        (["--device", "cuda"], "--device cuda: this PyTorch"),
        (["--log-every", "0"], "--log-every must be ≥ 1"),
        (["--time-limit", "-3"], "--time-limit must be a positive number of seconds"),
    ],
)
def test_impossible_settings_are_refused_before_anything_is_written(env, capsys, flags, expected):
    if flags[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert expected in refused(distill.main, [*TINY_RUN, *flags, "--name", "bad"], capsys)
    assert not (env / "runs").exists()


@pytest.mark.parametrize(
    "train,labels,expected",
    [
        ("text,label\n" + ROWS, "neg,neg,pos", "--labels names 'neg' twice"),
        (
            "text,label,text\n" + "".join(r.rstrip("\n") + ",x\n" for r in ROWS),
            None,
            "the header has column 'text' 2 times",
        ),
        ("text,label\n" + "".join(r for r in ROWS if "pos" in r), "neg,pos", "no row has label 'neg'"),
        ("text,label\n" + "".join(r for r in ROWS if "pos" in r), None, "needs at least 2 labels"),
    ],
)
def test_custom_labels_and_headers_that_would_mislead_are_refused(env, capsys, train, labels, expected):
    flags = csv_task(env / "mine", train, labels=labels)
    assert expected in refused(distill.main, [*TINY_RUN[2:], *flags, "--name", "c"], capsys, env / "mine")
    assert not (env / "runs").exists()


# --- 2. one process per run ----------------------------------------------------------------------------------
def test_a_second_process_is_refused_and_a_killed_ones_lock_is_taken_over(env, capsys):
    run = env / "runs" / "mrpc" / "shared"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddattn.distill",
            *TINY_RUN,
            "--max-steps",
            "500",
            "--checkpoint-every",
            "1",
            "--name",
            "shared",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pt").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None and (run / ".lock").read_text().strip() == str(first.pid)
        for argv in (["--resume", str(run)], [*TINY_RUN, "--name", "shared", "--overwrite"]):
            assert f"is in use by process {first.pid}" in cli_error(distill.main, argv, capsys)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    distill.main(["--resume", str(run), "--max-steps", str(step + 1)])  # takes the stale lock over
    err = capsys.readouterr().err
    assert f"taking over the lock of process {first.pid}" in err and not (run / ".lock").exists()
    assert resumed_at(run) == f"{step}/{step + 1}"
    assert logged_steps(run) == list(range(1, step + 2))


def test_a_fresh_run_racing_a_live_one_is_refused_at_the_lock(env, capsys):
    """Another process took the lock after this run's early checks passed (no checkpoint there yet)."""
    run = env / "runs" / "mrpc" / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from ddattn.rundir import claim; "
            f"claim({str(run)!r}); print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = refused(distill.main, [*TINY_RUN, "--name", "busy"], capsys, run)
        assert f"in use by process {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


# --- 3. resume trusts nothing ----------------------------------------------------------------------------
def damage_checkpoint(run: Path, how: str) -> None:
    path = run / "checkpoint.pt"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
        return
    if how == "garbage":
        path.write_bytes(os.urandom(4096))
        return
    checkpoint = torch.load(path, weights_only=True)
    if how == "missing key":
        del checkpoint["optimizer"]
    elif how == "wrong shape":
        checkpoint["distilled"]["attn_logits"] = torch.zeros(2, 6, 12, 9)
    elif how == "wrong dtype":
        checkpoint["distilled"]["x"] = checkpoint["distilled"]["x"].double()
    elif how == "extra tensor":
        checkpoint["distilled"]["y"] = torch.zeros(1)
    elif how == "step beyond the run":
        checkpoint["step"] = 7
    elif how == "adam moment":
        checkpoint["optimizer"]["state"][0]["exp_avg"] = torch.zeros(1, 8, 1)
    torch.save(checkpoint, path)


@pytest.mark.parametrize(
    "how,expected",
    [
        ("truncated", "checkpoint.pt is unreadable"),
        ("garbage", "checkpoint.pt is unreadable"),
        ("missing key", "checkpoint.pt lacks the field(s) optimizer"),
        ("wrong shape", "attn_logits is (2, 6, 12, 9) float32, expected (2, 6, 12, 8)"),
        ("wrong dtype", "x is (2, 8, 384) float64, expected (2, 8, 384) float32"),
        ("extra tensor", "has tensors ['attn_logits', 'label_logits', 'lr_raw', 'x', 'y']"),
        ("step beyond the run", "checkpoint.pt is at outer step 7, outside this run's 2 steps"),
        ("adam moment", "exp_avg of parameter 0 is (1, 8, 1) float32, expected (2, 8, 384)"),
    ],
)
def test_resume_refuses_a_damaged_checkpoint(finished, env, capsys, how, expected):
    run = copy_run(finished, env)
    damage_checkpoint(run, how)
    assert expected in refused(distill.main, ["--resume", str(run)], capsys, run)


@pytest.mark.parametrize(
    "how,expected",
    [
        ("bad json", "config.json is not valid JSON"),
        ("missing field", "config.json lacks the field(s) lr"),
        ("wrong type", "config.json: seq_len is 'long', not of type int"),
        ("bad value", "config.json: --clip must be a positive number"),
    ],
)
def test_resume_refuses_a_damaged_config(finished, env, capsys, how, expected):
    run = copy_run(finished, env)
    config = json.loads((run / "config.json").read_text())
    if how == "bad json":
        (run / "config.json").write_text(json.dumps(config)[:-20])
    else:
        if how == "missing field":
            del config["lr"]
        else:
            config.update({"wrong type": {"seq_len": "long"}, "bad value": {"clip": -1}}[how])
        (run / "config.json").write_text(json.dumps(config))
    assert expected in refused(distill.main, ["--resume", str(run)], capsys, run)


def test_evaluate_refuses_a_config_without_the_fields_it_needs(finished, env, capsys):
    run = copy_run(finished, env)
    config = json.loads((run / "config.json").read_text())
    del config["max_length"]
    (run / "config.json").write_text(json.dumps(config))
    assert "config.json lacks the field(s) max_length" in refused(evaluate.main, [str(run)], capsys, run)


def test_resume_drops_a_torn_last_log_line_with_a_note(finished, env, capsys):
    run = copy_run(finished, env)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 0, "lo')  # kill -9 in the middle of an append
    distill.main(["--resume", str(run), "--max-steps", "3"])
    assert "dropped a half-written last line" in capsys.readouterr().err and resumed_at(run) == "2/3"
    assert logged_steps(run) == [1, 2, 3]


def test_evaluate_and_its_card_read_past_a_torn_log_line(finished, env, capsys):
    run = copy_run(finished, env)
    with open(run / "validation.jsonl", "a") as f:
        f.write('{"step": 3, "loss": {"me')  # a run killed mid-append, never resumed
    evaluate.main([str(run), "--n-models", "1"])
    assert "dropped a half-written last line" in capsys.readouterr().err
    assert (run / "eval.json").is_file() and (run / "README.md").is_file()


def test_a_garbled_log_line_before_the_last_is_an_error(finished, env, capsys):
    run = copy_run(finished, env)
    (run / "metrics.jsonl").write_text("garbage\n" + (run / "metrics.jsonl").read_text())
    assert "metrics.jsonl:1: not a JSON record" in refused(distill.main, ["--resume", str(run)], capsys, run)


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--lr", "0.5"], "--lr 0.5 conflicts with the run's 0.01"),
        (["--seq-len", "16"], "--seq-len 16 conflicts with the run's 8"),
        (["--overwrite"], "--overwrite starts a run afresh"),
        (["--max-steps", "-2"], "--max-steps must be ≥ 0"),
        (["--max-steps", "1"], "checkpoint.pt is at outer step 2, outside this run's 1 steps"),
    ],
)
def test_resume_refuses_flags_that_conflict_with_the_run(finished, env, capsys, flags, expected):
    run = copy_run(finished, env)
    assert expected in refused(distill.main, ["--resume", str(run), *flags], capsys, run)


def test_resume_with_more_steps_extends_the_run(finished, env, capsys):
    run = copy_run(finished, env)
    distill.main(["--resume", str(run), "--max-steps", "3", "--seq-len", "8"])  # a repeated setting is fine
    assert json.loads((run / "config.json").read_text())["max_steps"] == 3 and resumed_at(run) == "2/3"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    assert logged_steps(run) == [1, 2, 3]


def test_resume_with_more_epochs_is_refused_where_max_steps_caps_the_run(finished, env, capsys):
    run = copy_run(finished, env)  # TINY_RUN stops at --max-steps 2
    line = refused(distill.main, ["--resume", str(run), "--epochs", "5"], capsys, run)
    assert "--max-steps 2" in line and "--epochs alone cannot extend" in line


# --- 4. restarts -------------------------------------------------------------------------------------------
def test_rerun_after_a_kill_before_the_first_checkpoint_starts_clean(finished, env, capsys):
    run = copy_run(finished, env)
    (run / "checkpoint.pt").unlink()  # killed before its first checkpoint
    (run / "distilled_last.safetensors").unlink()
    (run / ".checkpoint.pt.abc123.part").write_bytes(b"half a checkpoint")
    distill.main([*TINY_RUN, "--name", "done"])
    assert "removing the files of an earlier run" in capsys.readouterr().err
    assert logged_steps(run) == [1, 2] and len((run / "validation.jsonl").read_text().splitlines()) == 1
    assert not list(run.glob("*.part")) and not list(run.glob(".*.part"))


def test_a_fresh_run_over_a_checkpointed_one_is_refused_or_overwritten(finished, env, capsys):
    run = copy_run(finished, env)
    (run / "eval.json").write_text("{}")
    line = refused(distill.main, [*TINY_RUN, "--name", "done"], capsys, run)
    assert "already holds a run" in line and "--overwrite" in line
    distill.main([*TINY_RUN, "--name", "done", "--overwrite", "--lr", "0.02"])
    assert not (run / "eval.json").exists() and json.loads((run / "config.json").read_text())["lr"] == 0.02
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


# --- 5. one line instead of a traceback ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "train,encoding,expected",
    [
        ("text,label\n" + ROWS + "café crème,pos\n", "latin-1", "train.csv:42: byte 0xe9 is not UTF-8"),
        ("text,label\n" + ROWS, "utf-16", "train.csv:1: the file is UTF-16"),
        (
            "text,label\n" + ROWS + '"' + "x" * 140_000 + '",pos\n',
            "utf-8",
            "train.csv:42: field larger than field limit",
        ),
    ],
)
def test_unreadable_text_files_name_file_and_line(env, capsys, train, encoding, expected):
    flags = csv_task(env / "mine", train, encoding=encoding)
    assert expected in refused(distill.main, [*TINY_RUN[2:], *flags, "--name", "c"], capsys, env / "mine")
    assert not (env / "runs").exists()


def test_an_unterminated_quote_is_reported_at_its_own_line(env, capsys):
    lines = ROWS.splitlines(keepends=True)
    flags = csv_task(env / "mine", "text,label\n" + "".join(lines[:5]) + '"an open quote,pos\n' + "".join(lines[5:]))
    line = refused(distill.main, [*TINY_RUN[2:], *flags, "--name", "c"], capsys, env / "mine")
    assert "train.csv:7: expected 2 fields, found 1 (a quote opened on this line and never closed?)" in line


def test_a_bad_eval_file_is_refused_before_distilling(env, capsys):
    flags = csv_task(env / "mine", "text,label\n" + ROWS, evaluation="words,label\nok,pos\n")
    line = refused(distill.main, [*TINY_RUN[2:], *flags, "--name", "c"], capsys, env / "mine")
    assert "eval.csv:1: header lacks column(s) text" in line
    assert not (env / "runs").exists()


def test_a_malformed_tokenizer_is_one_line(env, capsys):
    model = env / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model / name).symlink_to(paths.weights_dir() / "minilm-l6" / name)
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    assert f"cannot read tokenizer {model / 'tokenizer.json'}" in refused(
        distill.main, [*TINY_RUN, "--model", str(model)], capsys, model
    )


def test_a_corrupt_data_cache_is_rebuilt_with_a_note(env, capsys):
    folder = env / "data"
    (folder / "mrpc").mkdir(parents=True)
    shutil.copy(Path(os.environ["DDATTN_DATA_DIR"]) / "mrpc" / "dev.tsv", folder / "mrpc" / "dev.tsv")
    tokenizer, task = paths.weights_dir() / "minilm-l6" / "tokenizer.json", tasks.get_task("mrpc")
    good = data.load_split(task, "eval", tokenizer, 16, folder)
    [cache] = (folder / "mrpc" / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[:200])  # cut short
    again = data.load_split(task, "eval", tokenizer, 16, folder)
    assert "is damaged; rebuilding it" in capsys.readouterr().err
    assert torch.equal(again.input_ids, good.input_ids) and torch.equal(again.labels, good.labels)
    data.load_split(task, "eval", tokenizer, 16, folder)  # the rebuilt cache is good
    assert "damaged" not in capsys.readouterr().err


def test_an_unwritable_runs_dir_is_refused_before_the_work(env, capsys, monkeypatch):
    """We run as root, for whom chmod does not make a folder read-only: the runs dir lies under a file."""
    (env / "a-file").write_text("")
    monkeypatch.setenv("DDATTN_RUNS_DIR", str(env / "a-file" / "runs"))
    assert "cannot write the run directory" in refused(distill.main, [*TINY_RUN, "--name", "x"], capsys)


@pytest.mark.parametrize("command", ["baselines", "report"])
def test_baselines_and_report_check_their_output_folder_first(finished, env, capsys, monkeypatch, command):
    (env / "a-file").write_text("")
    if command == "baselines":
        monkeypatch.setenv("DDATTN_RUNS_DIR", str(env / "a-file" / "runs"))
        line = cli_error(baselines.main, ["majority", "--task", "mrpc"], capsys)
    else:
        copy_run(finished, env)
        write_eval_json(env / "runs" / "mrpc" / "done", "mrpc", {"task": "mrpc", "model": "minilm-l6"})
        line = cli_error(report.main, ["--runs-dir", str(env / "runs"), "--out", str(env / "a-file")], capsys)
    assert "cannot write in" in line and "a-file" in line


def test_a_full_disk_keeps_the_last_checkpoint(finished, env, capsys, monkeypatch):
    """A full disk, simulated: torch.save fails with ENOSPC while writing the next checkpoint."""
    run = copy_run(finished, env)
    before, torch_save = (run / "checkpoint.pt").read_bytes(), torch.save

    def no_space(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(distill.torch, "save", no_space)
    line = cli_error(distill.main, ["--resume", str(run), "--max-steps", "3"], capsys)
    assert "cannot write" in line and "checkpoint.pt: No space left on device; the previous file is intact" in line
    assert (run / "checkpoint.pt").read_bytes() == before and not list(run.glob(".*.part"))
    monkeypatch.setattr(distill.torch, "save", torch_save)  # space freed: resume redoes step 3
    distill.main(["--resume", str(run), "--max-steps", "3"])
    assert resumed_at(run) == "2/3"
    assert logged_steps(run) == [1, 2, 3]


@pytest.mark.parametrize("out,expected", [("dir", "is a directory"), ("a-file/eval.json", "cannot write in")])
def test_evaluate_checks_its_output_before_the_work(finished, env, capsys, out, expected):
    run = copy_run(finished, env)
    (env / "dir").mkdir()
    (env / "a-file").write_text("")
    line = refused(evaluate.main, [str(run), "--out", str(env / out)], capsys, run)
    assert line.startswith("error: --out") and expected in line


# --- 6. permissions --------------------------------------------------------------------------------------------
SMALL_CONFIG = DistilledConfig(num_classes=2, seq_len=4, hidden_size=8, num_layers=1, num_heads=2)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with paths.atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        save_distilled(DistilledData.initial(SMALL_CONFIG), tmp_path / "d.safetensors")
    finally:
        os.umask(old)
    for name in ("a.json", "d.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


# --- 7. an outer step never waits for the device; stopping on time (issues 25, 29) -----------------------------
def read_from(event) -> str:
    """Where a profiled scalar read comes from: Adam's step counter (torch keeps it on the host unless
    `capturable`, so even on a GPU it is no device sync), the real batch's width (read from the split's
    lengths, host memory), or anything else (which would wait for the device on a GPU)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step#"):
            return "adam step counter"
        if parent.name.endswith(": collate"):
            return "batch width"
        parent = parent.cpu_parent
    return "device"


def one_step(loop: distill.Distillation) -> None:
    """One outer step through Algorithm 1's loop and distill's `after_step`, as `Distillation.loop` runs it."""
    outer.algorithm_1(loop.outer, range(loop.step, loop.step + 1), loop.real_batch, loop.after_step)


def test_outer_steps_that_do_not_log_never_wait_for_the_device(env, monkeypatch):
    args, run, checkpoint = load_or_start(
        [
            *TINY_RUN,
            "--max-steps",
            "9",
            "--log-every",
            "9",
            "--val-every",
            "9",
            "--checkpoint-every",
            "9",
            "--name",
            "quiet",
        ]
    )
    loop = distill.Distillation(args, run, checkpoint)
    try:
        loop.progress = tqdm(disable=True)
        one_step(loop)  # the first step creates Adam's state
        tolist = []  # .tolist() of a GPU tensor waits too, unseen by the profiler
        monkeypatch.setattr(torch.Tensor, "tolist", lambda t: tolist.append(t) or t.numpy().tolist())
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=True) as prof:
            one_step(loop)
            one_step(loop)
        monkeypatch.undo()
    finally:
        run.release()
    reads = [read_from(e) for e in prof.events() if e.name == "aten::_local_scalar_dense"]
    items = [read_from(e) for e in prof.events() if e.name == "aten::item"]
    assert "device" not in reads + items and not tolist
    assert reads.count("adam step counter") == 2 * len(loop.distilled.learnable())  # one per tensor and step
    assert reads.count("batch width") == 0  # read with numpy
    assert loop.step == 3 and not (run.path / "metrics.jsonl").exists()  # nothing read yet
    loop.read_metrics()
    assert logged_steps(run.path) == [1, 2, 3]


def test_a_non_finite_step_ends_the_run_at_the_next_read(env, capsys, monkeypatch):
    calls, hypergradient = [], outer.hypergradient

    def nan_loss_at_step_3(*args, **kwargs):
        calls.append(1)
        result = hypergradient(*args, **kwargs)
        return replace(result, loss=result.loss * math.nan) if len(calls) == 3 else result

    monkeypatch.setattr(outer, "hypergradient", nan_loss_at_step_3)
    line = cli_error(distill.main, [*TINY_RUN, "--max-steps", "6", "--log-every", "4", "--name", "nan"], capsys)
    assert "non-finite loss at outer step 3" in line and "nothing was saved yet" in line and len(calls) == 4
    run = env / "runs" / "mrpc" / "nan"
    assert logged_steps(run) == [1, 2]
    assert not list(run.glob("*.pt")) and not list(run.glob("*.safetensors"))


class FakeTime:
    """distill.py's clock: time() moves 10 s on at every call; perf_counter is the real one."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        self.now += 10
        return self.now


def test_a_time_limit_checkpoints_and_stops_before_it(env, capsys, monkeypatch):
    monkeypatch.setattr(distill, "time", FakeTime())
    with pytest.raises(SystemExit) as stopped:
        run_cli(distill.main, [*TINY_RUN, "--max-steps", "6", "--time-limit", "100", "--name", "limited"])
    run = env / "runs" / "mrpc" / "limited"
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("preempted")]
    assert (
        stopped.value.code == 143
        and 0 < step < 6
        and lines
        == [
            f"preempted (the time limit): checkpoint at outer step {step} in {run}; "
            f"resume with python -m ddattn.distill --resume {run}"
        ]
    )
    assert len((run / "metrics.jsonl").read_text().splitlines()) == step
    monkeypatch.setattr(distill, "time", time)
    distill.main(["--resume", str(run), "--time-limit", "3600"])  # not a setting of the run: free to change
    assert resumed_at(run) == f"{step}/6" and len((run / "metrics.jsonl").read_text().splitlines()) == 6
    assert "time_limit" not in json.loads((run / "config.json").read_text())


def test_slurm_end_time_is_a_deadline(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1000")
    assert [distill.Deadline(limit, 0).at for limit in (None, 500, 2000)] == [1000, 500, 1000]
    monkeypatch.setenv("SLURM_JOB_END_TIME", "soon")
    with pytest.raises(UserError, match="SLURM_JOB_END_TIME is 'soon', not a Unix time"):
        distill.Deadline(None, 0)


def test_a_second_evaluation_is_refused_and_sigterm_leaves_nothing_half_written(finished, env, capsys):
    run = copy_run(finished, env)
    first = subprocess.Popen(
        [sys.executable, "-m", "ddattn.evaluate", str(run), "--n-models", "1000"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        progress, deadline = run / "eval.partial.jsonl", time.time() + 120
        while scored(progress) < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # the first model scored: the lock and the progress file are there
        assert first.poll() is None and (run / ".lock").read_text().strip() == str(first.pid)
        before = snapshot(run)
        line = cli_error(evaluate.main, [str(run), "--n-models", "1"], capsys)
        after = snapshot(run)
        assert f"is in use by process {first.pid}" in line
        grown = after.pop(Path(progress.name)).startswith(before.pop(Path(progress.name)))
        assert grown and after == before  # nothing else touched; the first one's progress file only grew
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 143 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if "terminated" in line] == [
        "terminated by SIGTERM: every file written before is intact, none is half-written"
    ]
    assert not (run / "eval.json").exists() and not list(run.glob(".*"))  # no eval.json, .part or .lock
    assert scored(progress) >= 1  # every line whole (a cut one would end the count)
    evaluate.main([str(run), "--n-models", "1"])  # the lock is free again; model 0 is kept from the first
    saved = json.loads((run / "eval.json").read_text())
    assert saved["n_models"] == 1 and saved["kernels"] == "cpu"  # the policy auto resolved to, recorded
    assert saved["resumed"]["models"] == 1


def scored(progress: Path) -> int:
    """How many whole model lines a progress file holds (0 while it is not there)."""
    return len(evaluate.read_progress(progress)[1]) if progress.is_file() else 0


def stop_after(models: int, monkeypatch):
    """Make `evaluate` stop, as on SIGTERM, once `models` models are scored; returns the head seeds that
    each `evaluate_distilled` call was asked to score."""
    from ddattn.errors import Terminated

    asked, checks = [], iter(range(1, 10**6))
    real = evaluate.evaluate_distilled

    def counting(*args, **kwargs):
        asked.append(list(args[4]))
        return real(*args, **kwargs)

    def stop_if_signalled():
        if next(checks) == models:
            raise Terminated(signal.SIGTERM)

    monkeypatch.setattr(evaluate, "evaluate_distilled", counting)
    monkeypatch.setattr(evaluate, "stop_if_signalled", stop_if_signalled)
    return asked


def test_a_stopped_evaluation_resumes_where_it_stopped(finished, env, monkeypatch, capsys):
    """Every scored model is kept at once (eval.partial.jsonl); the same command after a stop scores only the
    others, and its eval.json has the runs of an evaluation never stopped, bit for bit."""
    run = copy_run(finished, env)
    evaluate.main([str(run), "--n-models", "4", "--out", str(env / "whole.json")])
    whole = json.loads((env / "whole.json").read_text())
    asked = stop_after(2, monkeypatch)
    with pytest.raises(SystemExit) as stopped:
        run_cli(evaluate.main, [str(run), "--n-models", "4"])
    assert stopped.value.code == 143 and not (run / "eval.json").exists()
    lines = (run / "eval.partial.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["identity"]["eval_batch_size"] == 64
    assert [json.loads(line)["run"] for line in lines[1:]] == whole["runs"][:2]
    monkeypatch.setattr(evaluate, "stop_if_signalled", lambda: None)
    evaluate.main([str(run), "--n-models", "4"])
    resumed = json.loads((run / "eval.json").read_text())
    assert asked == [heads(4), heads(4)[2:]]  # the second invocation scored only the last two
    assert (resumed["runs"], resumed["summary"]) == (whole["runs"], whole["summary"])
    assert resumed["resumed"]["models"] == 2 and "resumed" not in whole
    assert not list(run.glob("eval.partial*")) and "resuming: 2 of 4 models" in capsys.readouterr().out


def test_a_progress_file_cut_short_or_of_other_settings_is_not_trusted(finished, env, monkeypatch, capsys):
    """A line cut short by a crash ends what is kept; a file written under other settings keeps nothing."""
    run = copy_run(finished, env)
    progress = run / "eval.partial.jsonl"
    asked = stop_after(3, monkeypatch)
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, [str(run), "--n-models", "4"])
    progress.write_text(progress.read_text()[:-10])  # the third model's line, cut short
    monkeypatch.setattr(evaluate, "stop_if_signalled", lambda: None)
    evaluate.main([str(run), "--n-models", "4"])
    assert asked[-1] == heads(4)[2:] and not progress.exists()  # two whole lines kept
    stop_after(1, monkeypatch)
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, [str(run), "--n-models", "4"])
    monkeypatch.setattr(evaluate, "stop_if_signalled", lambda: None)
    evaluate.main([str(run), "--n-models", "4", "--eval-batch-size", "8"])
    assert asked[-1] == heads(4)  # other settings: every model scored again, and the note says why
    assert "(eval_batch_size 64 instead of 8); its models are scored again" in capsys.readouterr().out


def test_a_stop_signal_that_lands_in_a_finaliser_is_not_lost(monkeypatch, capsys):
    """Python runs a signal handler in whatever frame is executing; a Terminated raised inside a `__del__`
    is dropped. The next stop_if_signalled raises it again, and the dropped one prints no traceback."""
    from ddattn import errors

    monkeypatch.setattr(errors, "_received", None)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside a finaliser

    def main(argv):
        SignalledWhileCollected()  # collected at once: the Terminated is dropped
        errors.stop_if_signalled()
        raise AssertionError("the stop was lost")

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    err = capsys.readouterr().err
    assert exit_.value.code == 143 and reported == []
    assert err.strip() == "terminated by SIGTERM: every file written before is intact, none is half-written"
