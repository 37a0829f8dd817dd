"""One process per run directory: an exclusive lock, and a clean slate for a run started afresh.

The lock is `RUN_DIR/.lock`, held with flock(2) and holding the owner's pid. The kernel drops an flock
when its process dies, however it dies, so a lock file left by a killed run (kill -9) is simply taken
over by the next one; a live owner makes the next run refuse with one line naming its pid. Distillation
and evaluation both take it (an evaluation writes the run's eval.json and card), so no result of one
silently replaces another's.
"""

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from . import checks, tasks
from .errors import UserError
from .files import load_distilled, read_distilled_metadata
from .paths import atomic_path

LOCK_NAME = ".lock"
# Everything a run writes, removed when the same directory starts a new run.
RUN_FILES = (
    "config.json",
    "checkpoint.pt",
    "distilled_last.safetensors",
    "distilled_best.safetensors",
    "metrics.jsonl",
    "validation.jsonl",
    "run.log",
    "eval.json",
    "README.md",
    "attention_labels.png",
    "validation.png",
)  # the last three: the run's card (card.py)


class RunLock:
    """flock on RUN_DIR/.lock for as long as this process works on the run."""

    def __init__(self, folder: Path, advice: str = "wait for it to finish or stop it"):
        self.path = Path(folder) / LOCK_NAME
        self.advice = advice  # how to get past a live owner, for the error line
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(
                    f"{self.path.parent} is in use by process {self.owner()} (lock {self.path}); {self.advice}"
                ) from None
            if self.unlinked(fd):  # its last owner removed it between our open and our lock: try again
                os.close(fd)
                continue
            previous = os.read(fd, 64).decode(errors="replace").strip()
            if previous:
                print(f"note: taking over the lock of process {previous}, which is no longer running", file=sys.stderr)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd

    def unlinked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            return True

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "(unknown pid)"
        except OSError:
            return "(unknown pid)"

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order, so that nobody locks a file about to vanish)."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def claim(folder: Path, advice: str = "wait for it to finish or stop it") -> RunLock:
    """Create `folder` if need be and lock it; an unwritable place is one line, before any work is lost."""
    folder = Path(folder)
    lock = RunLock(folder, advice)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as e:
        raise UserError(
            f"cannot write the run directory {folder} ({e.strerror}); set DDATTN_RUNS_DIR to a writable place"
        ) from None
    for leftover in folder.glob(".*.part"):  # temp files of writes cut short; nobody else writes here now
        leftover.unlink()
    return lock


def leftover_files(folder: Path) -> list:
    """The run files already in `folder`, by name."""
    return [name for name in RUN_FILES if (Path(folder) / name).exists()]


def clear(folder: Path) -> None:
    """Remove a previous run's files (under the lock), so that a new run never appends to stale logs."""
    for name in RUN_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


class RunDirectory:
    """The files of one run, worked on by one process at a time (RunLock); every write that
    matters is atomic."""

    def __init__(self, path: Path, overwrite: bool = False):
        self.path, self.overwrite = path, overwrite
        self.checkpoint = path / "checkpoint.pt"
        self.lock: Optional[RunLock] = None

    def claim(self) -> None:
        self.lock = claim(self.path, "wait for it to finish or stop it, or pick another --name")

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def refuse_clobbering(self) -> None:
        if self.checkpoint.exists() and not self.overwrite:
            raise UserError(
                f"{self.path} already holds a run; continue it with --resume {self.path}, start it "
                "afresh with --overwrite, or pick another --name"
            )

    def start_afresh(self) -> None:
        """Under the lock: refuse to clobber a checkpointed run without --overwrite; remove what an earlier
        run left (one killed before its first checkpoint, or one overwritten), so that no log mixes two runs."""
        self.refuse_clobbering()
        left = leftover_files(self.path)
        if left:
            print(f"note: {self.path}: removing the files of an earlier run ({', '.join(left)})", file=sys.stderr)
            clear(self.path)

    def write_config(self, settings: dict) -> None:
        """config.json: every setting (rewritten only when it changed, e.g. a run extended on resume)."""
        path = self.path / "config.json"
        text = json.dumps(settings, indent=2) + "\n"
        if not path.is_file() or path.read_text() != text:
            with atomic_path(path) as tmp:
                tmp.write_text(text)

    def log(self, message: str) -> None:
        tqdm.write(message)
        self.write_line("run.log", message)

    def append(self, name: str, record: dict) -> None:
        self.write_line(name, json.dumps(record))

    def write_line(self, name: str, line: str) -> None:
        try:
            with open(self.path / name, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            raise UserError(
                f"cannot write {self.path / name} ({e.strerror}); the last checkpoint is intact: "
                f"once that is fixed, continue with --resume {self.path}"
            ) from None

    def truncate_after(self, name: str, step: int) -> None:
        """Drop log lines of steps after `step` (work lost with an interrupted run, redone on resume)."""
        path = self.path / name
        if path.exists():
            records = [r for r in checks.read_jsonl(path) if r["step"] <= step]
            text = "".join(json.dumps(r) + "\n" for r in records)
            if text != path.read_text():
                with atomic_path(path) as tmp:
                    tmp.write_text(text)


# --- reading a finished run back -----------------------------------------------------------------
def load_run(run_dir: Path, which: str = "best"):
    """A run's settings and its distilled data (distilled_best or distilled_last), checked to belong
    together: same task, class count, shapes and checkpoint."""
    config_path, data_path = run_dir / "config.json", distilled_path(run_dir, which)
    for path in (config_path, data_path):
        if not path.is_file():
            raise UserError(f"{path} is missing: is {run_dir} a finished `python -m ddattn.distill` run?")
    settings = checks.read_json(config_path)
    checks.require_fields(settings, checks.RUN_FIELDS, config_path)
    distilled = load_distilled(data_path)
    num_classes = tasks.task_from_settings(settings).num_classes
    checks.check_distilled_for_run(read_distilled_metadata(data_path), settings, num_classes, data_path)
    return settings, distilled


def distilled_path(run_dir: Path, which: str) -> Path:
    return run_dir / f"distilled_{which}.safetensors"
