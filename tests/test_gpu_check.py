"""bench/gpu_check.sh --dry-run: every step of the GPU check (the outer step against the reference with op
counts, MiniLM and the bert-base shape; the memory sweep in T; evaluation throughput; a short gpu-preset
distillation) runs on the CPU at tiny sizes and writes its report (issue 25, part 6)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_gpu_check_dry_run_runs_every_step_and_writes_its_report():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_path = Path(re.search(r"wrote (\S+report\.md)", proc.stdout).group(1))
    report = report_path.read_text()
    for section in (
        "One outer step, MiniLM",
        "bert-base shape",
        "Memory in T",
        "Evaluation throughput",
        "2-step gpu-preset MRPC distillation",
    ):
        assert section in report, section
    assert "aten ops" in report and "done:" in report
    assert "bert-base shape (1 of its 12 layers)" in report
    for name in ("minilm", "bert-base", "sweep"):  # every row measured: a failed row would still make a table
        rows = json.loads((report_path.parent / f"{name}.json").read_text())["results"]
        assert rows and not [r["error"] for r in rows if "error" in r], name
