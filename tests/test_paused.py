"""results/paused.sh: it stops the runs in progress for the length of a command, resumes them, and writes
the pause into each run's resources.tsv, which the report takes off the distillation's wall time."""

import shutil
import subprocess
from pathlib import Path

from ddattn import report

ROOT = Path(__file__).resolve().parents[1]


def test_paused_stops_the_runs_in_progress_and_records_the_pause(tmp_path):
    (tmp_path / "results").mkdir()
    shutil.copy(ROOT / "results" / "paused.sh", tmp_path / "results" / "paused.sh")
    # a stand-in for a distillation in progress: its command line names ddattn.distill, its run's lock its pid
    stand_in = subprocess.Popen(["bash", "-c", "exec -a 'python -m ddattn.distill' sleep 60"])
    run = tmp_path / "runs" / "mrpc" / "x"
    run.mkdir(parents=True)
    (run / ".lock").write_text(str(stand_in.pid))
    (run / "resources.tsv").write_text("distill 100.0 2048\n")
    try:
        seen = subprocess.run(
            ["bash", str(tmp_path / "results" / "paused.sh"), "bash", "-c", f"ps -o stat= -p {stand_in.pid}; sleep 2"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert seen.stdout.strip().startswith("T")  # stopped while the command ran
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(stand_in.pid)], capture_output=True, text=True)
        assert not state.stdout.strip().startswith("T")  # and running again after it
    finally:
        stand_in.kill()
        stand_in.wait()
    lines = (run / "resources.tsv").read_text().splitlines()
    assert lines[0] == "distill 100.0 2048" and lines[1].startswith("paused distill ")
    paused = int(lines[1].split()[2])
    assert 2 <= paused <= 10
    assert report.read_resources(run)["distill_seconds"] == 100.0 - paused
