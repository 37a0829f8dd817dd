"""User-facing errors: one clear line, a non-zero exit, no traceback.

Every command-line entry point runs its `main` through `run_cli`. Code anywhere in the package raises
`UserError("what is wrong; how to fix it")` for bad input (unknown task, missing file, malformed row,
wrong checkpoint, impossible hyperparameter, divergence); `run_cli` prints it as `error: ...` on stderr
and exits with status 2. Anything else is a bug and keeps its traceback.

A scheduler's SIGTERM (or SIGUSR1, its notice ahead of the deadline) becomes the `Terminated` exception,
so that `finally` blocks and atomic writes clean up (no half-written file, no stale lock), then one line
and exit status 143 (128 + SIGTERM, as a shell reports a process SIGTERM ended). `python -m ddattn.distill`
catches the signals itself: it finishes the outer step in flight and checkpoints first (distill.py).
"""

import argparse
import signal
import sys
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Sequence

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOPPED = 128 + signal.SIGTERM  # 143: the exit status of a run stopped by a stop signal


class UserError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line, exit 2) instead of usage text plus a line; and
    `renamed` = {old flag: new flag}: an old name still works (the commands recorded in results/ use
    them), with one line on stderr saying the new one. `--help` shows only the new names."""

    def __init__(self, *args, renamed: Optional[Dict[str, str]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.renamed = renamed or {}

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        for i, arg in enumerate(args):
            old, _, value = arg.partition("=")
            if old in self.renamed:
                print(f"note: {old} is now {self.renamed[old]}", file=sys.stderr)
                args[i] = self.renamed[old] + ("=" + value if "=" in arg else "")
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


class Terminated(BaseException):
    """A stop signal arrived (a BaseException, like KeyboardInterrupt, so that no `except Exception` keeps going)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def on_stop_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for SIGTERM and SIGUSR1 inside the block; the previous handlers afterwards."""
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


_received: Optional[int] = None  # the stop signal raise_terminated saw, if any


def raise_terminated(signum: int, frame) -> None:
    global _received
    _received = signum
    raise Terminated(signum)


def stop_if_signalled() -> None:
    """Raise Terminated again if a stop signal came: Python runs a signal handler in whatever frame is
    executing, and an exception raised inside a finaliser (`__del__`, e.g. a subprocess's Popen being
    collected) is printed and dropped. Long loops call this once per item, so the stop is not lost."""
    if _received is not None:
        raise Terminated(_received)


@contextmanager
def quiet_about_dropped_stops() -> Iterator[None]:
    """Inside the block, a Terminated that Python drops (raised in a finaliser) prints no traceback: the
    next `stop_if_signalled` raises it again. Every other dropped exception is reported as usual."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, Terminated):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def first_line(error: Exception) -> str:
    """The first line of a library's error message (some span many), for quoting inside a UserError."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def run_cli(main: Callable[[Optional[Sequence[str]]], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run `main(argv)`; turn a UserError, Ctrl-C or a stop signal into one line on stderr and a non-zero exit."""
    try:
        with on_stop_signals(raise_terminated), quiet_about_dropped_stops():
            main(argv)
    except Terminated as e:
        print(f"terminated by {e}: every file written before is intact, none is half-written", file=sys.stderr)
        sys.exit(STOPPED)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
