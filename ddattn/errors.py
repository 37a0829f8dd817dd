"""User-facing errors: one clear line, a non-zero exit, no traceback.

Every command-line entry point runs its `main` through `run_cli`. Code anywhere in the package raises
`UserError("what is wrong; how to fix it")` for bad input (unknown task, missing file, malformed row,
wrong checkpoint, impossible hyperparameter, divergence); `run_cli` prints it as `error: ...` on stderr
and exits with status 2. Anything else is a bug and keeps its traceback.
"""

import argparse
import sys
from typing import Callable, Optional, Sequence


class UserError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a UserError (one line, exit 2) instead of usage text plus a line."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def first_line(error: Exception) -> str:
    """The first line of a library's error message (some span many), for quoting inside a UserError."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def run_cli(main: Callable[[Optional[Sequence[str]]], None], argv: Optional[Sequence[str]] = None) -> None:
    """Run `main(argv)`; turn a UserError or Ctrl-C into one line on stderr and a non-zero exit."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
