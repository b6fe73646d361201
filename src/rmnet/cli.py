"""The ``rmnet`` command line: prepare, train, evaluate, demo (and the retrieval commands).

    rmnet demo                                     train a plain and an RM model on embedded data
    rmnet train --data DIR --arch resnet18 --rm 5-8 --out runs/rm18
    rmnet evaluate runs/rm18                       report.json, report.md and figures in runs/rm18/report

Every TrainConfig field is an option of ``rmnet train`` (its help text lives beside the field in
rmnet/config.py). Bad input ends with one line on stderr and exit status 1; ``--traceback`` shows
the full stack. Heavy modules are imported inside the commands so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rmnet import __version__
from rmnet.cliargs import ON_ERROR, add_on_error, add_workers
from rmnet.config import OPTIMIZERS, RM_PADDINGS, VAL_METRICS, TrainConfig
from rmnet.io import format_percent
from rmnet.retrieval.cli import add_commands as add_retrieval_commands
from rmnet.service.cli import add_serve_command  # argparse only: the service loads when run

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


class DefaultsFormatter(argparse.HelpFormatter):
    """Show "(default: …)" for options that have a meaningful default (not for flags or None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is v for v in (None, True, False, argparse.SUPPRESS)) or "default:" in text:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
        return f"{text} (default: {default})"


# rmnet prepare


def add_prepare_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "prepare",
        help="resize a data set once into a cache folder (faster training)",
        formatter_class=DefaultsFormatter,
        description="Read a data set (ISIC 2019 folder, folder of class folders, or CSV of path,label) "
        "and write a copy of every image with its short edge resized, for `rmnet train --data DATA "
        "--cache OUT`. The short edge must match training's --resize: 256 for --image-size 224. "
        "Resumable: run it again after an interruption.",
    )
    parser.add_argument(
        "--data", required=True, help="ISIC 2019 folder, folder with one sub-folder per class, or CSV"
    )
    parser.add_argument("--out", required=True, help="cache folder to write")
    parser.add_argument(
        "--resize", type=_positive_int, default=256, help="short edge of the cached images (train's --resize)"
    )
    parser.add_argument("--ground-truth", help="ISIC ground-truth CSV (default: found in DATA)")
    parser.add_argument("--metadata", help="ISIC metadata CSV with lesion_id (default: found in DATA)")
    add_workers(parser, "processes resizing images")
    add_on_error(
        parser,
        "an unreadable image: raise (stop after caching the others, naming it) or skip (name it, "
        "list it in OUT/skipped.json and leave it out; train with --on-error skip too)",
    )
    parser.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from rmnet.data import SKIPPED_FILE, load_image_table
    from rmnet.runs import cache_images

    table = load_image_table(args.data, ground_truth=args.ground_truth, metadata=args.metadata)
    cached = cache_images(table, args.out, args.resize, on_error=args.on_error, workers=args.workers)
    skipped = len(cached.unreadable)
    print(
        f"{len(cached) - skipped} images in {len(cached.class_names)} classes cached in {args.out}"
        + (f"; {skipped} skipped, listed in {Path(args.out) / SKIPPED_FILE}" if skipped else "")
    )
    command = ["rmnet", "train", "--data", args.data]
    command += [arg for flag in ("ground_truth", "metadata") if getattr(args, flag)
                for arg in ("--" + flag.replace("_", "-"), getattr(args, flag))]  # fmt: skip
    command += ["--cache", args.out] + (["--resize", str(args.resize)] if args.resize != 256 else [])
    command += ["--on-error", "skip"] if args.on_error == "skip" else []
    print("next: " + shlex.join([*command, "--out", "runs/NAME"]))


# rmnet train


def add_train_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model; writes a run folder",
        description="Train a classifier and write a run folder: config.json, split.json, metrics.csv, "
        "checkpoints/best.pt and last.pt (OUT must be new, empty, or a run folder). The defaults below "
        "are the paper's optimisation (SGD, 60 epochs, the step schedule) from random initialisation; "
        "the paper starts from ImageNet weights: --recipe paper for its whole recipe, or --pretrained "
        "imagenet. Every image of the split is checked before anything is written. Several GPUs: "
        "torchrun --nproc-per-node N -m rmnet train ...",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "--out", required=True, help="run folder to write (with --seeds: one sub-folder per seed)"
    )
    parser.add_argument("--config", help="TrainConfig JSON to start from (e.g. a run's config.json)")
    parser.add_argument(
        "--recipe",
        choices=("paper",),
        help="start from the paper's recipe for --arch: ImageNet weights, 60 epochs (80 with --hash-bits), "
        "the architecture's input size; options given explicitly still override it",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in OUT from its last.pt"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="train once per seed into OUT/seed-S (mean ± SD)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    fields = parser.add_argument_group("training configuration (rmnet.config.TrainConfig)")
    add_config_options(fields)
    parser.set_defaults(run=run_train)


def add_config_options(parser: argparse._ActionsContainer) -> None:
    """One option per TrainConfig field: --image-size for image_size; not given means "keep"."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name == "split_ratios":  # given as --split TRAIN VAL TEST
            continue
        if field.name == "split":
            parser.add_argument(
                "--split",
                dest="split",
                nargs="+",
                metavar="JSON | TRAIN VAL TEST",
                default=argparse.SUPPRESS,
                help="a split JSON file to reuse (another run's split.json), or the fractions of every "
                "class in train, validation and test (default: 0.8 0.1 0.1)",
            )
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        options: dict = dict(dest=field.name, default=argparse.SUPPRESS)
        default = getattr(defaults, field.name)
        help_text = field.metadata["help"] + (f" (default: {default})" if default not in (None, {}) else "")
        if kind in (bool, bool | None):
            options["action"] = argparse.BooleanOptionalAction
        elif field.name in FIELD_CHOICES:
            options["choices"] = FIELD_CHOICES[field.name]
        else:
            options["type"] = _parser_for(kind)
            options["metavar"] = field.name.upper()
        parser.add_argument(flag, help=help_text.replace("%", "%%"), **options)


FIELD_CHOICES = {
    "on_error": ON_ERROR,
    "optimizer": OPTIMIZERS,
    "val_metric": VAL_METRICS,
    "rm_padding": RM_PADDINGS,
}


def split_option(values: list[str]) -> dict[str, object]:
    """``--split FILE`` (a split to reuse) or ``--split TRAIN VAL TEST`` (the fractions) as config fields."""
    if len(values) == 1:
        return {"split": values[0]}
    try:
        ratios = tuple(float(v) for v in values)
    except ValueError:
        ratios = ()
    if len(ratios) != 3:
        raise ValueError(
            f"--split takes a split JSON file or three fractions TRAIN VAL TEST (e.g. --split 0.8 0.1 0.1), "
            f"got {' '.join(values)}"
        )
    return {"split_ratios": ratios}


def _parser_for(kind: object) -> Callable[[str], object]:
    base = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
    optional = type(None) in typing.get_args(kind)
    if base is dict:
        return _json_object
    if optional:
        return lambda text: None if text.lower() == "none" else base(text)
    return base


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r} ({err})") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """--config (with --resume: the run's config.json; with --recipe paper: the paper's recipe for
    --arch; else the defaults), then the options given."""
    saved = Path(args.out) / "config.json"
    if args.resume and args.seeds and not saved.is_file():  # --seeds: OUT/seed-S/config.json
        seeded = (Path(args.out) / f"seed-{seed}" / "config.json" for seed in args.seeds)
        saved = next((path for path in seeded if path.is_file()), saved)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if "split" in given:
        given |= split_option(given.pop("split"))
    if args.config:
        config = TrainConfig.from_json(args.config)
    elif args.resume and saved.is_file():
        config = TrainConfig.from_json(saved)  # `rmnet train --out RUN --resume` needs nothing else
    elif getattr(args, "recipe", None) == "paper":
        task = "retrieval" if given.get("hash_bits") else "classification"
        return TrainConfig.paper(given.pop("arch", TrainConfig.arch), task=task, **given)
    else:
        config = TrainConfig()
    return TrainConfig.from_dict(config.to_dict() | given)


def run_train(args: argparse.Namespace) -> None:
    from rmnet.train import repeat, train

    if args.resume and not Path(args.out).is_dir():
        raise FileNotFoundError(
            f"nothing to resume: {args.out} does not exist (start the run without --resume, or give the "
            "folder of the interrupted run as --out)"
        )
    config = config_from_args(args)
    if args.seeds:
        run_dirs = repeat(config, args.out, args.seeds, resume=args.resume, progress=not args.quiet)
        print(f"{len(run_dirs)} runs in {args.out}; next: " + shlex.join(["rmnet", "evaluate", args.out]))
        return
    result = train(config, args.out, resume=args.resume, progress=not args.quiet)
    print(f"best checkpoint: {result.best_path}\nnext: " + shlex.join(["rmnet", "evaluate", args.out]))


# rmnet evaluate


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="metrics, rotation robustness and figures for a run",
        description="Write report.json, report.md and figures (ROC, confusion matrix, t-SNE, accuracy vs "
        "rotation, training curves) into RUN_DIR/report. A folder of runs (from --seeds) also gets "
        "report/summary.md with mean ± SD. A checkpoint file works too, with --data.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("target", help="run folder, folder of runs (--seeds), or a checkpoint .pt file")
    parser.add_argument("--part", default="test", choices=("train", "val", "test"), help="split part")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint")
    parser.add_argument(
        "--data",
        help="with a run: where its data is now, if it moved (checked against the split); with a checkpoint "
        "file: the images to evaluate on (all of them)",
    )
    parser.add_argument("--cache", help="with a run: where its resized cache is now, if it moved")
    parser.add_argument("--out", help="with a checkpoint file: report folder (default: beside the file)")
    parser.add_argument(
        "--angles",
        nargs="+",
        type=_angle,
        default=[90.0, 180.0, 270.0, "random"],
        help="test rotations (degrees counterclockwise, or random: one seeded angle per image)",
    )
    parser.add_argument("--sweep-step", type=float, default=15.0, help="degrees between points of the sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random angles and t-SNE")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cuda, cpu ...; auto picks CUDA when available")
    add_workers(parser)
    add_on_error(
        parser,
        "an unreadable image: raise (stop, naming it) or skip (name it and leave it out) "
        "(default: the run's own --on-error)",
        default=None,
    )
    parser.add_argument(
        "--retrieval-k", type=int, default=10, help="top-k of the retrieval metrics (hash models)"
    )
    parser.add_argument("--no-tsne", dest="tsne", action="store_false", help="skip the t-SNE figure")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_evaluate)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _angle(text: str) -> float | str:
    if text == "random":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an angle in degrees nor 'random': {text!r}") from None


def run_evaluate(args: argparse.Namespace) -> None:
    from rmnet import evaluate
    from rmnet.runs import Run

    options = dict(angles=args.angles, sweep_step=args.sweep_step, seed=args.seed, batch_size=args.batch_size)
    options |= dict(device=args.device, workers=args.workers, tsne=args.tsne, progress=not args.quiet)
    target = Path(args.target)
    if target.is_file():
        if args.cache:
            raise ValueError("--cache goes with a run folder; a checkpoint file is evaluated on --data")
        report_dir = evaluate_checkpoint_file(target, args, options)
        print(f"report: {report_dir / 'report.md'}")
        return
    if args.out:
        raise ValueError("--out goes with a checkpoint file; a run's report is written to RUN/report")
    relocated = dict(data=args.data, cache=args.cache, on_error=args.on_error)
    if target.is_dir() and not (target / "config.json").exists() and any(target.glob("*/config.json")):
        evaluate.evaluate_repeats(
            target,
            part=args.part,
            checkpoint=args.checkpoint,
            retrieval_k=args.retrieval_k,
            **relocated,
            **options,
        )
        print(f"summary (mean ± SD): {target / 'report' / 'summary.md'}")
        return
    run = Run(target, checkpoint=args.checkpoint, **relocated)
    report = evaluate.evaluate_run(run, part=args.part, retrieval_k=args.retrieval_k, **options)
    print(headline_table(report))
    print(f"report: {target / 'report' / 'report.md'}")


def evaluate_checkpoint_file(path: Path, args: argparse.Namespace, options: dict) -> Path:
    """Evaluate a checkpoint on every image of --data (its classes mapped onto the checkpoint's)."""
    from rmnet.data import ImageDataset, build_transform, load_image_table
    from rmnet.evaluate import evaluate_model
    from rmnet.runs import load_checkpoint

    if args.data is None:
        raise ValueError(f"evaluating the checkpoint file {path} needs --data: the images to evaluate on")
    model, config, class_names = load_checkpoint(path)
    table = load_image_table(args.data, class_names=class_names)
    transform = build_transform(False, config.input_size(), resize=config.resize_short_edge())
    out = Path(args.out) if args.out else path.parent / f"report-{path.stem}"
    description = {"arch": config.arch, "rm": config.rm, "checkpoint": str(path), "data": args.data}
    dataset = ImageDataset(table, list(range(len(table))), transform, on_error=args.on_error or "raise")
    evaluate_model(model, dataset, class_names, out, title=path.stem, description=description, **options)
    return out


def headline_table(report: dict) -> str:
    """A few lines for the terminal: the headline metrics, upright and rotated."""
    from rmnet.report import angle_label

    cls, rotation = report["classification"], report["rotation"]["angles"]
    lines = [f"{'metric':<26}{'value':>8}"]
    for key, name in (("balanced_accuracy", "balanced accuracy"), ("mean_precision", "AP (mean precision)"),
                      ("kappa", "kappa"), ("auc_micro", "AUC overall")):  # fmt: skip
        lines.append(f"{name:<26}{format_percent(cls[key]):>8}")
    for row in rotation:
        if row["angle"] == "random" or row["angle"] != 0:
            lines.append(
                f"{'accuracy, ' + angle_label(row['angle']):<26}{format_percent(row['accuracy']):>8}"
            )
    return "\n".join(lines)


# rmnet demo


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="train a plain and an RM model on embedded lesion-like images and compare them",
        description="Generate the embedded lesion-like data set, train a plain small CNN and the same CNN "
        "with Rotation Meanout, evaluate both on upright and rotated test images, and write a report "
        "with both models' accuracy-against-rotation curves. Runs on a laptop CPU in a few minutes.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="folder for the data, both runs and the report")
    parser.add_argument("--epochs", type=int, help="training epochs per model (default: the demo's choice)")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny version that runs in seconds (for tests)"
    )
    parser.add_argument(
        "--k", type=_positive_int, default=4, help="rotations in RM: 4 (exact, 90°) or 8 (45°, slower)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="data-loading worker processes (default: 0, unlike the other commands: the demo's images "
        "are tiny, and its numbers were measured loading in the main process)",
    )
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from rmnet.demo import run_demo as demo

    demo(args.out, epochs=args.epochs, k=args.k, quick=args.quick, workers=args.workers)


# The commands, in the order `rmnet --help` lists them. The retrieval commands (index, search)
# join here: rmnet.retrieval.cli.add_commands.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_demo_command,
    add_prepare_command,
    add_train_command,
    add_evaluate_command,
    add_retrieval_commands,
    add_serve_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmnet",
        description="Rotation Meanout networks: rotation-invariant dermoscopy classification and retrieval. "
        "Start with `rmnet demo`.",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    parser.add_argument("--version", action="version", version=f"rmnet {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for bad input, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        with one_line_warnings():
            args.run(args)
    except KeyboardInterrupt:
        print(
            "rmnet: interrupted (rmnet train --resume continues a run from its last epoch)", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except (ValueError, OSError, FloatingPointError) as err:  # bad input: a clear line, no traceback
        if args.traceback:
            raise
        print(f"rmnet: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Warnings as "rmnet: warning: MESSAGE" lines on stderr, not Python's "file:line: Category" + source."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"rmnet: warning: {one_line(message)}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (errors re-raised from DataLoader workers carry a traceback)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[-1] if "Original Traceback" in str(err) else " ".join(lines)
