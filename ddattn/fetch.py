"""`python -m ddattn.fetch --task mrpc` (what `make data TASK=mrpc` runs): fill `data/<task>/`.

Copies from `../shared/data/<task>/` when that exists, else downloads what is missing (from the
canonical sources, or from a mirror given by env DDATTN_DATA_URL that serves `<task>/<file name>`), then
reads every file back and counts its rows (data.py's readers), so a bad file fails here. A task that reads
another's files (qnli_dev: QNLI's dev.tsv) fetches that task's folder, and counts its own parts of it.
"""

import contextlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence, Tuple

from . import paths
from .download import NotFoundError, download
from .errors import ArgumentParser, UserError, run_cli
from .tasks import TASKS, MissingFileError, Task, get_task, read_examples, task_file

GLUE_URL = "https://dl.fbaipublicfiles.com/glue/data"  # what GLUE's download_glue_data.py uses
SENTEVAL_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data"
MRPC_DEV_IDS_URL = (
    "https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations.appspot.com/o/"
    "data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-7480817f1adc"
)
AG_NEWS_URL = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"  # torchtext's


def _present(task: Task, split: str, folder: Path) -> bool:
    return any((folder / name).is_file() for name in (task.files[split], task.fallbacks.get(split)) if name)


def _copy_from_shared(shared: Path, target: Path) -> str:
    copied = []
    for source in sorted(p for p in shared.iterdir() if p.is_file()):
        if not (target / source.name).exists():
            with paths.atomic_path(target / source.name) as tmp:
                shutil.copyfile(source, tmp)
            copied.append(source.name)
    return f"copied {len(copied)} file(s) from {shared}" + (f" ({', '.join(copied)})" if copied else "")


def _download_first(candidates: Sequence[Tuple[str, Path]]) -> None:
    """Download the first (url, dest) the server has: a 404 moves on to the next candidate."""
    for url, dest in candidates[:-1]:
        with contextlib.suppress(NotFoundError):
            download(url, dest)
            return
    download(*candidates[-1])


def _from_mirror(mirror: str, task: Task, splits: Sequence[str], target: Path) -> None:
    for split in splits:
        if _present(task, split, target):  # fetched for the split before it (qnli_dev: one file, two splits)
            continue
        names = [task.files[split]] + ([task.fallbacks[split]] if split in task.fallbacks else [])
        _download_first([(f"{mirror.rstrip('/')}/{task.folder}/{name}", target / name) for name in names])


def _glue_zip(zip_name: str):
    """A canonical fetcher: GLUE's zip of the task, from which the wanted files are extracted."""

    def fetch_zip(target: Path, names: Sequence[str]) -> None:
        with (
            tempfile.TemporaryDirectory() as tmp,
            zipfile.ZipFile(download(f"{GLUE_URL}/{zip_name}", Path(tmp) / zip_name)) as z,
        ):
            members = {Path(m).name: m for m in z.namelist() if "MACOSX" not in m}  # e.g. QNLI/train.tsv
            for name in names:
                with paths.atomic_path(target / name) as out:
                    out.write_bytes(z.read(members[name]))

    return fetch_zip


def _mrpc(target: Path, names: Sequence[str]) -> None:
    """GLUE's recipe: SentEval's MSR paraphrase train file split into train/dev by GLUE's dev ids."""
    with tempfile.TemporaryDirectory() as tmp:
        header, *lines = (
            download(f"{SENTEVAL_URL}/msr_paraphrase_train.txt", Path(tmp) / "train.txt")
            .read_text(encoding="utf-8")
            .splitlines()
        )
        ids = download(MRPC_DEV_IDS_URL, Path(tmp) / "dev_ids.tsv").read_text(encoding="utf-8").splitlines()
    dev_ids = {tuple(line.strip().split("\t")) for line in ids if line.strip()}
    rows = [line.strip().split("\t") for line in lines if line.strip()]
    for name in names:
        chosen = [r for r in rows if ((r[1], r[2]) in dev_ids) == (name == "dev.tsv")]
        with paths.atomic_path(target / name) as out:
            out.write_text("".join(f"{line}\n" for line in [header, *map("\t".join, chosen)]), encoding="utf-8")


def _ag_news(target: Path, names: Sequence[str]) -> None:
    for name in names:
        download(f"{AG_NEWS_URL}/{name}", target / name)


CANONICAL = {
    "ag_news": _ag_news,
    "mrpc": _mrpc,
    "qnli": _glue_zip("QNLIv2.zip"),
    "rte": _glue_zip("RTE.zip"),
    "sst2": _glue_zip("SST-2.zip"),
}


def fetch(task: Task, data_dir: Path) -> str:
    """Fill `data_dir/<task.folder>/`: copy from the shared data when it has it, else download what is
    missing (from env DDATTN_DATA_URL's mirror, or the canonical sources). Returns what was done."""
    target = Path(data_dir) / task.folder
    target.mkdir(parents=True, exist_ok=True)
    shared = paths.shared_data_dir() / task.folder
    if shared.is_dir():
        return _copy_from_shared(shared, target)
    missing = [split for split in task.files if not _present(task, split, target)]
    if not missing:
        return "files already present"
    mirror = os.environ.get("DDATTN_DATA_URL")
    if mirror:
        _from_mirror(mirror, task, missing, target)
    else:
        CANONICAL[task.folder](target, list(dict.fromkeys(task.files[split] for split in missing)))
    return f"downloaded {', '.join(missing)} from {mirror or 'the canonical sources'}"


def row_counts(task: Task, data_dir: Path, strict: bool) -> str:
    """`train N, eval M` (naming a fallback file when one is read); a missing split is an error if strict."""
    counts = []
    for split in task.files:
        try:
            path = task_file(task, split, data_dir)
        except MissingFileError:
            if strict:
                raise
            counts.append(f"{split} missing ({task.files[split]} not found)")
            continue
        note = f" ({path.name})" if path.name != task.files[split] else ""
        counts.append(f"{split} {len(read_examples(task, split, data_dir))}{note}")
    return ", ".join(counts)


def main(argv=None) -> None:
    p = ArgumentParser(
        prog="python -m ddattn.fetch",
        description="Fill data/<task>/ with a task's files and "
        "count their rows (copying from ../shared/data when present, else downloading).",
    )
    p.add_argument(
        "--task",
        required=True,
        help=f"{', '.join(TASKS)} or all (every task with files of its own: not qnli_dev, which reads qnli's)",
    )
    p.add_argument("--data-dir", help="default data/ (env DDATTN_DATA_DIR)")
    p.add_argument(
        "--check",
        action="store_true",
        help="fetch nothing: only read the files and count their rows (a missing or malformed file is an error)",
    )
    args = p.parse_args(argv)
    if args.task == "custom":
        raise UserError("the custom task reads your own files (--train-file, --eval-file): nothing to fetch")
    data_dir = Path(args.data_dir or paths.data_dir())
    chosen = [t for t in TASKS.values() if t.files_of is None] if args.task == "all" else [get_task(args.task)]
    for task in chosen:
        done = "checked" if args.check else fetch(task, data_dir)
        print(f"{task.name}: {done} → {data_dir / task.folder}; rows: {row_counts(task, data_dir, args.check)}")


if __name__ == "__main__":
    run_cli(main)
