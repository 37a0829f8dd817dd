"""`python -m ddattn.train RUN_DIR --out DIR`: the classifier a distilled dataset trains, ready to use.

θ_0 is the run's pretrained checkpoint with a fresh classification head: with --model-index N, the head of model N
of `python -m ddattn.evaluate` (whose run seed defaults to 0; seeds.py). It takes the T inner SGD steps on D̃
with the learned η̃ and the attention loss (paper Eq. 7), exactly as during distillation and evaluation:
seconds on a CPU. θ_T is written in the Hugging Face layout (export.py), for `python -m ddattn.predict`
or `transformers`.
"""

from pathlib import Path
from typing import Optional, Sequence

from . import tasks
from .errors import ArgumentParser, run_cli
from .export import Classifier, export_classifier, refuse_existing
from .files import load_pretrained
from .method import seeds
from .method.bert import fresh_model
from .method.unroll import train_on_distilled
from .paths import resolve_checkpoint
from .rundir import load_run


def train_classifier(run_dir: Path, which: str = "best", seed: int = 0) -> Classifier:
    """θ_T: θ_0 (the head of evaluation model `seed`, seeds.py) fine-tuned on the run's distilled_{which}
    for its T steps."""
    settings, distilled = load_run(run_dir, which)
    task = tasks.task_from_settings(settings)
    model_dir = resolve_checkpoint(settings["model"])
    config, pretrained = load_pretrained(model_dir)
    theta0 = fresh_model(pretrained, config, task.num_classes, seeds.stream_seed("evaluation-head", 0, seed))
    theta_T, _ = train_on_distilled(theta0, config, distilled)
    return Classifier(
        config, theta_T, model_dir / "tokenizer.json", task.label_names, settings["max_length"], task.is_pair, task.name
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = ArgumentParser(
        prog="python -m ddattn.train", description=__doc__.split("\n\n")[0], renamed={"--seed": "--model-index"}
    )
    p.add_argument("run_dir", type=Path, help="runs/<task>/<name>/ of python -m ddattn.distill")
    p.add_argument("--which", choices=["best", "last"], default="best", help="distilled_best or distilled_last")
    p.add_argument(
        "--model-index",
        dest="seed",
        type=int,
        default=0,
        help="which fresh head: that of model N of `python -m ddattn.evaluate`",
    )
    p.add_argument("--out", type=Path, required=True, help="the directory to write (must not exist)")
    args = p.parse_args(argv)
    refuse_existing(args.out)  # before the work, not after it
    classifier = train_classifier(args.run_dir, args.which, args.seed)
    source = {"run": str(args.run_dir), "distilled": f"distilled_{args.which}.safetensors", "seed": args.seed}
    export_classifier(classifier, args.out, source)
    print(
        f"wrote {args.out}: a {classifier.task} classifier ({', '.join(classifier.label_names)}) trained on "
        f"{args.run_dir / source['distilled']} with head seed {args.seed}"
    )


if __name__ == "__main__":
    run_cli(main)
