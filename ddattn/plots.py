"""Figures as files: matplotlib (the optional `plot` extra) on its file-only backend, each PNG written
atomically. Every plot in ddattn is optional: without matplotlib a command says so and goes on."""

from pathlib import Path

from .paths import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    """`fig` as a PNG at `path` (written atomically), then closed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return path
