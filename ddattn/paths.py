"""Where things live: checkpoints, task data, the read-only shared data, run directories.

Every default can be overridden by an environment variable (and by a command-line flag where a command
takes one), so the package works from any working directory.
"""

import errno
import hashlib
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


def weights_dir() -> Path:
    """Converted checkpoints: `weights/<name>/` (env DDATTN_WEIGHTS_DIR)."""
    return Path(os.environ.get("DDATTN_WEIGHTS_DIR", REPO_ROOT / "weights"))


def data_dir() -> Path:
    """Task data: `data/<task>/` (env DDATTN_DATA_DIR)."""
    return Path(os.environ.get("DDATTN_DATA_DIR", REPO_ROOT / "data"))


def shared_data_dir() -> Path:
    """Read-only copies of the real task files that CI and offline machines have (env DDATTN_SHARED_DATA)."""
    return Path(os.environ.get("DDATTN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def runs_dir() -> Path:
    """Distillation runs: `runs/<task>/<name>/` (env DDATTN_RUNS_DIR)."""
    return Path(os.environ.get("DDATTN_RUNS_DIR", REPO_ROOT / "runs"))


# A write that fails with one of these is the environment's fault (full disk, read-only place), not a bug.
WRITE_ERRORS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EIO,
    errno.ENOTDIR,
    errno.EISDIR,
)


def umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest`, renamed to `dest` if the block succeeds and removed if it fails:
    readers never see a half-written file, and an interrupted write leaves the old one intact. The file
    gets the permissions of any other new file (the umask's), not mkstemp's private 0600. A write that
    fails for lack of space or permission is a UserError naming `dest`."""
    dest = Path(dest)
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # after the block: some writers (safetensors) replace the file
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        kept = "the previous file is intact" if dest.is_file() else "nothing was written"
        raise UserError(f"cannot write {dest}: {e.strerror}; {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: Path, obj) -> None:
    """`obj` as indented JSON at `path`, atomically (atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def file_sha256(path: Path) -> Optional[str]:
    """The hex SHA-256 of a file's bytes; None where there is no such file."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def resolve_checkpoint(name_or_path: str) -> Path:
    """A checkpoint given as a directory path, or as a name under `weights_dir()`."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    return weights_dir() / name_or_path


def code_version() -> str:
    """The git commit the code runs from ("<sha>-dirty" with uncommitted changes), for result files; "unknown"
    outside a git checkout, unless env DDATTN_COMMIT names it (a copy sent without .git: bench/gpu_stage.sh)."""
    if os.environ.get("DDATTN_COMMIT"):
        return os.environ["DDATTN_COMMIT"]

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ddattn").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")
