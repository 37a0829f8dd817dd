"""`python -m ddattn.publish`: the files behind a reported number, copied into results/runs/."""

import json

from ddattn import publish
from tests.helpers import cli_error


def test_copies_the_files_of_an_evaluated_run(tmp_path):
    run = tmp_path / "runs" / "mrpc" / "sl-al"
    run.mkdir(parents=True)
    files = {
        "config.json": "{}",
        "distilled_best.safetensors": "x" * 100,
        "eval.json": json.dumps({"summary": {}}),
        "validation.jsonl": "{}\n",
        "metrics.jsonl": "{}\n",
        "run.log": "done\n",
    }
    for name, text in files.items():
        (run / name).write_text(text)
    (run / "checkpoint.pt").write_text("not copied: optimiser state, large")
    publish.main([str(run), "--results", str(tmp_path / "results")])
    dest = tmp_path / "results" / "mrpc" / "sl-al"
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    assert all((dest / name).read_text() == text for name, text in files.items())


def test_a_run_without_evaluation_is_refused(tmp_path, capsys):
    run = tmp_path / "runs" / "mrpc" / "unevaluated"
    run.mkdir(parents=True)
    message = cli_error(publish.main, [str(run), "--results", str(tmp_path / "results")], capsys)
    assert "no eval.json" in message and "ddattn.evaluate" in message
    assert not (tmp_path / "results").exists()
