"""Every compared method of the RM paper under one protocol, on two small data sets.

    .venv/bin/python -m benchmarks.compare [--epochs 10] [--seeds 0 1 2] [--jobs 2]

The paper compares RM with RA, TI-pooling, GCNN, ORN, STN, CyCNN, E4-Net, RiDe and RIR on a
ResNet18 (its Tables 1 and 8), and with ARLNet18 and RegNetY-800MF + MWNL, each with and without
RM (Table 9). Here every one of them is trained by ``rmnet.train.fit`` from a ``TrainConfig``
(the same recipe, seeds, data and evaluation), on two tasks at 33×33 px (≡ 1 mod 32: every
strided layer of a ResNet18 keeps its sampling grid centred, so quarter-turn invariance is
exact where a method claims it):

1. **digits**: scikit-learn's 1,797 handwritten digits (60/20/20, stratified, fixed), trained
   upright, tested upright, at quarter turns, at a sweep of angles and at random angles, as
   ``benchmarks.rotated_digits`` does.
2. **lesions**: the embedded lesion generator (``rmnet.data.make_lesion_dataset``) with an upright
   bias (every training lesion within ±15° of upright: ``orientation_range=30``), tested on
   lesions drawn the same way, their quarter turns, a sweep, and lesions generated at random
   orientations. Every lesion image is seen through a round field of view (the inscribed disc,
   as a dermatoscope shows it), so turning an image never brings corners into view.

Networks are narrowed for a 2-core CPU: ResNet18 at width 16 (16…128 channels instead of
64…512), the C4 networks and ORN (N = 4) at 8 features per orientation (the same weights),
RegNetY-800MF's design at a quarter of its widths. Tables: accuracy (%) mean ± SD over the
training seeds, balanced accuracy on the random-angle set, the rate at which a prediction
changes under quarter turns, parameters, FLOPs, training-step and inference time relative to
the plain ResNet18 (medians of interleaved repetitions), and a second table of parameters and
FLOPs of the full-size models at 224 px. Writes results/compare/.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.regnet import BlockParams, RegNet  # noqa: E402

from benchmarks import command_line, machine_description, markdown_table  # noqa: E402
from benchmarks.compute_overhead import count_flops, median_ratio, time_interleaved  # noqa: E402
from benchmarks.rotated_digits import logits_of, rotate_each, training_transform  # noqa: E402
from rmnet import create_model, list_models, register_model  # noqa: E402
from rmnet.config import TrainConfig  # noqa: E402
from rmnet.data import TensorImageDataset, load_digits_tensors, load_image_table, make_lesion_dataset  # noqa: E402
from rmnet.groups import rotate  # noqa: E402
from rmnet.io import atomic_write_text, save_figure  # noqa: E402
from rmnet.models.presets import PRESETS  # noqa: E402
from rmnet.models.resnets import resnet_preset  # noqa: E402
from rmnet.models.rmnet import preset_builder  # noqa: E402
from rmnet.models.ti_pooling import TIPoolingNet  # noqa: E402
from rmnet.objectives import build_objective, class_weights_from_counts  # noqa: E402
from rmnet.train import parameter_groups  # noqa: E402

SIZE = 33
WIDTH = 16  # ResNet18 at 16…128 channels
GROUP_WIDTH = 8  # features per orientation of the C4 networks and ORN (N = 4): ResNet18's weights
NARROW = {"width": WIDTH}

# label: TrainConfig fields (model_options are create_model's options). The plain ResNet18 first:
# it is the reference of every ratio.
METHODS: dict[str, dict] = {
    "plain ResNet18": dict(arch="compare_resnet18", model_options=NARROW),
    "RA": dict(arch="compare_resnet18", model_options=NARROW, rotation_augmentation=360),
    "TI-pooling": dict(arch="compare_ti_pooling_resnet18", model_options=NARROW),
    "GCNN (C4)": dict(arch="gcnn_resnet18", model_options={"width": GROUP_WIDTH}),
    "ORN (N=4, ORAlign)": dict(arch="orn_resnet18", model_options={"width": GROUP_WIDTH}),
    "STN": dict(arch="stn_resnet18", model_options=NARROW),
    "CyCNN": dict(arch="cycnn_resnet18", model_options={**NARROW, "polar_size": (128, 16)}),
    "E4-Net (C4)": dict(arch="e4net_resnet18", model_options={"width": GROUP_WIDTH}),
    "RiDe": dict(arch="compare_resnet18", model_options=NARROW, loss="ride"),
    "RIR": dict(arch="compare_resnet18", model_options=NARROW, loss="rir"),
    "RM 5-8": dict(arch="compare_resnet18", model_options=NARROW, rm="5-8"),
    "RM all": dict(arch="compare_resnet18", model_options=NARROW, rm="all"),
    "ARLNet18": dict(arch="arlnet18", model_options=NARROW),
    "ARLNet18 + RM 5-8": dict(arch="arlnet18", model_options=NARROW, rm="5-8"),
    "RegNetY-800MF/4 + MWNL": dict(arch="compare_regnet_y_800mf", loss="mwnl"),
    "RegNetY-800MF/4 + MWNL + RM 4-5": dict(arch="compare_regnet_y_800mf", loss="mwnl", rm="4-5"),
}
# Not in the default run: what the MWNL rows are made of (the network with the paper's loss, and
# MWNL without its cap), for ``--methods``.
EXTRA_METHODS: dict[str, dict] = {
    "RegNetY-800MF/4 (wce)": dict(arch="compare_regnet_y_800mf"),
    "RegNetY-800MF/4 + MWNL, no cap (β=0)": dict(
        arch="compare_regnet_y_800mf", loss="mwnl", loss_options={"beta": 0.0}
    ),
}
REFERENCE = "plain ResNet18"
QUARTER_TURNS = (90, 180, 270)
SWEEP = tuple(range(0, 360, 30))

# --- the narrowed backbones, registered under benchmark names --------------------------------------

NARROW_RESNET18 = resnet_preset(18)  # the resnet18 preset built by rmnet.models.resnets: takes width


def _narrow_regnet(**kwargs) -> nn.Module:
    """RegNetY-800MF's design (depths 1, 3, 8, 2; SE 0.25) at a quarter of its widths and groups."""
    params = BlockParams(
        depths=[1, 3, 8, 2],
        widths=[16, 36, 80, 196],
        group_widths=[4, 4, 4, 4],
        bottleneck_multipliers=[1.0] * 4,
        strides=[2] * 4,
        se_ratio=0.25,
    )
    return RegNet(params, stem_width=8, **kwargs)


NARROW_REGNET = dataclasses.replace(PRESETS["regnet_y_800mf"], name="regnet_y_800mf/4", build=_narrow_regnet)


def _ti_pooling_narrow(num_classes: int = 8, *, k: int = 4, hash_bits: int | None = None, **kwargs):
    """TI-pooling over the width-scalable ResNet18."""
    return TIPoolingNet(NARROW_RESNET18, num_classes, k=k, hash_bits=hash_bits, **kwargs)


for _name, _build, _preset in (
    ("compare_resnet18", preset_builder(NARROW_RESNET18), NARROW_RESNET18),
    ("compare_ti_pooling_resnet18", _ti_pooling_narrow, NARROW_RESNET18),
    ("compare_regnet_y_800mf", preset_builder(NARROW_REGNET), NARROW_REGNET),
):
    if _name not in list_models():
        register_model(_name, preset=_preset)(_build)

# --- data ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """A training split and named test sets (images, labels)."""

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    tests: dict[str, tuple[torch.Tensor, torch.Tensor]]
    random_set: str  # the test set at random orientations


def field_of_view(images: torch.Tensor) -> torch.Tensor:
    """Images seen through the inscribed disc (soft edge, one pixel): rotations keep the support."""
    s = images.shape[-1]
    c = torch.arange(s) - (s - 1) / 2
    r = torch.hypot(c[:, None], c[None, :])
    return images * (s / 2 - r).clamp(0, 1)


def angle_sets(images: torch.Tensor, labels: torch.Tensor, mask: Callable | None = None) -> dict:
    """The upright images, their quarter turns (exact) and the sweep of angles (bilinear)."""
    sets = {}
    for angle in sorted({*SWEEP, *QUARTER_TURNS}):
        turned = rotate(images, float(angle))
        sets[f"{angle}°"] = (mask(turned) if mask and angle % 90 else turned, labels)
    return sets


def digits_task(test_seeds: list[int]) -> Task:
    images, labels = load_digits_tensors(size=SIZE, channels=3)
    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=0.6, stratify=labels, random_state=0)
    val, test = train_test_split(rest, train_size=0.5, stratify=labels[rest], random_state=0)
    test_images, test_labels = images[test], labels[test]
    tests = angle_sets(test_images, test_labels)
    draws = [
        torch.rand(len(test), generator=torch.Generator().manual_seed(seed)) * 360 for seed in test_seeds
    ]
    tests["random"] = (
        torch.cat([rotate_each(test_images, angles) for angles in draws]),
        test_labels.repeat(len(test_seeds)),
    )
    return Task(
        "digits",
        (images[train], labels[train]),
        (images[val], labels[val]),
        tests,
        "random",
    )


def load_folder(root: Path, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A generated folder: images (N, 3, S, S) in [0, 1] through the disc, labels in ``class_names`` order."""
    table = load_image_table(root)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in table.paths])
    labels = torch.as_tensor([class_names.index(table.class_names[int(y)]) for y in table.labels])
    return field_of_view(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255), labels


def lesions_task(data_dir: Path, per_class: int, bias: float) -> Task:
    """Biased training lesions (seed 0), a biased test set (seed 1), a random-orientation one (seed 2)."""
    parts = {
        "train": (0, per_class, bias),
        "test": (1, per_class // 2, bias),
        "random": (2, per_class // 2, 360.0),
    }
    folders = {
        part: make_lesion_dataset(
            data_dir / f"lesions-{part}-{SIZE}px-{n}-{angle:g}",
            n_per_class=n,
            size=SIZE,
            seed=seed,
            orientation_range=angle,
        )
        for part, (seed, n, angle) in parts.items()
    }
    class_names = load_image_table(folders["train"]).class_names
    images, labels = load_folder(folders["train"], class_names)
    train, val = train_test_split(np.arange(len(labels)), train_size=0.8, stratify=labels, random_state=0)
    tests = angle_sets(*load_folder(folders["test"], class_names), mask=field_of_view)
    tests["random"] = load_folder(folders["random"], class_names)
    return Task(
        "lesions",
        (images[train], labels[train]),
        (images[val], labels[val]),
        tests,
        "random",
    )


# --- training and testing ----------------------------------------------------------------------------


def method_config(base: TrainConfig, label: str, seed: int) -> TrainConfig:
    fields = dict({**METHODS, **EXTRA_METHODS}[label])
    if fields.get("loss") == "mwnl":  # the authors' schedule (p from epoch 20 to 60 of 60), scaled
        schedule = {"schedule_start": base.epochs // 3, "schedule_end": base.epochs}
        fields["loss_options"] = {**fields.get("loss_options", {}), **schedule}
    return base.replace(**fields, seed=seed)


def train_and_test(task: Task, label: str, config: TrainConfig) -> dict:
    """One run through rmnet.train.fit, then accuracy, balanced accuracy and prediction changes."""
    from rmnet.train import fit

    train_set = TensorImageDataset(*task.train, transform=training_transform(config))
    started = time.perf_counter()
    result = fit(config, train_set, TensorImageDataset(*task.val), progress=False)
    row = {
        "task": task.name,
        "method": label,
        "seed": config.seed,
        "fit seconds": time.perf_counter() - started,
    }
    row["parameters"] = sum(p.numel() for p in result.model.parameters())
    predictions = {}
    for name, (images, labels) in task.tests.items():
        predictions[name] = logits_of(result.model, images).argmax(1)
        row[name] = 100.0 * (predictions[name] == labels).float().mean().item()
    random_labels = task.tests[task.random_set][1]
    row["balanced accuracy (random)"] = 100.0 * balanced_accuracy_score(
        random_labels, predictions[task.random_set]
    )
    row["quarter turns"] = float(np.mean([row[f"{a}°"] for a in QUARTER_TURNS]))
    changes = [(predictions[f"{a}°"] != predictions["0°"]).float().mean().item() for a in QUARTER_TURNS]
    row["prediction change (quarter turns)"] = 100.0 * float(np.mean(changes))
    return row


def run_task(task_name: str, args: argparse.Namespace) -> list[dict]:
    """Every method and seed on one task (its own process under --jobs 2)."""
    torch.set_num_threads(args.threads)
    task = (
        digits_task(args.test_seeds)
        if task_name == "digits"
        else lesions_task(args.data_dir, args.per_class, args.bias)
    )
    base = base_config(args)
    rows = []
    for seed in args.seeds:  # seeds outermost: a slow spell of the shared machine hits every method
        for label in args.methods:
            row = train_and_test(task, label, method_config(base, label, seed))
            rows.append(row)
            print(
                f"[{task.name}] {label} seed {seed}: upright {row['0°']:.1f}%, random {row['random']:.1f}%, "
                f"{row['fit seconds']:.0f}s",
                flush=True,
            )
    return rows


def base_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=1e-4,
        lr_step=max(1, round(args.epochs * 2 / 3)),
        image_size=SIZE,
        flips=False,  # "trained upright": no flips either (a vertical flip is a turned mirror image)
        workers=0,
        device="cpu",
    )


# --- cost ---------------------------------------------------------------------------------------------


def training_step(model: nn.Module, objective: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """One step of the method's own objective (RiDe and RIR run their rotated copies), SGD update."""
    optimizer = torch.optim.SGD(parameter_groups(model, 1e-3), lr=1e-3, momentum=0.9)

    def step() -> None:
        model.train()
        objective.train()
        loss, _ = objective(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_methods(args: argparse.Namespace, task: Task) -> pd.DataFrame:
    """FLOPs, training step and inference of every method (fresh models; weights do not change the
    cost), over the plain ResNet18's measured in the same interleaved repetition (medians)."""
    torch.set_num_threads(args.threads)
    base, steps, flops = base_config(args), {}, {}
    images, labels = task.train[0][: args.batch_size], task.train[1][: args.batch_size]
    weights = class_weights_from_counts(np.bincount(task.train[1].numpy(), minlength=10))
    for label in args.methods:
        config = method_config(base, label, seed=0)
        torch.manual_seed(0)
        model = create_model(config.arch, 10, rm=config.rm, **config.model_options)
        objective = build_objective(
            config.loss, num_classes=10, class_weights=weights, hash_bits=None, **config.loss_options
        )
        flops[label] = count_flops(model.eval(), images)
        steps[label, "training"] = training_step(model, objective, images, labels)
        steps[label, "inference"] = partial(logits_of, model, task.tests["0°"][0], args.batch_size)
    samples = time_interleaved(steps, args.timing_repeats)
    rows = []
    for label in args.methods:
        rows.append(
            {
                "method": label,
                "FLOPs × plain": flops[label] / flops[REFERENCE],
                "train step × plain": median_ratio(
                    samples[label, "training"], samples[REFERENCE, "training"]
                ),
                "inference × plain": median_ratio(
                    samples[label, "inference"], samples[REFERENCE, "inference"]
                ),
                "MFLOPs / image": flops[label] / len(images) / 1e6,
            }
        )
    return pd.DataFrame(rows)


FULL_SIZE = {  # the registered models at full width (224 px), for the complexity table
    "plain ResNet18": ("resnet18", {}),
    "TI-pooling": ("ti_pooling_resnet18", {}),
    "GCNN (C4)": ("gcnn_resnet18", {}),
    "ORN (N=4, ORAlign)": ("orn_resnet18", {}),
    "ORN (N=8, ORAlign)": ("orn_resnet18", {"orientations": 8}),
    "STN": ("stn_resnet18", {}),
    "CyCNN": ("cycnn_resnet18", {}),
    "E4-Net (C4)": ("e4net_resnet18", {}),
    "RM 5-8": ("resnet18", {"rm": "5-8"}),
    "RM all": ("resnet18", {"rm": "all"}),
    "ARLNet18": ("arlnet18", {}),
    "ARLNet18 + RM 5-8": ("arlnet18", {"rm": "5-8"}),
    "RegNetY-800MF": ("regnet_y_800mf", {}),
    "RegNetY-800MF + RM 4-5": ("regnet_y_800mf", {"rm": "4-5"}),
}


def full_size_complexity() -> pd.DataFrame:
    """Parameters and GFLOPs (FlopCounterMode: convolutions and matmuls, 2 per multiply-add) of the
    full-size models at 224 px, 8 classes. RA, RiDe and RIR change training only: ResNet18's."""
    x = torch.randn(1, 3, 224, 224)
    rows = []
    for label, (arch, options) in FULL_SIZE.items():
        model = create_model(arch, 8, **options).eval()
        rows.append(
            {
                "method": label,
                "model": f"create_model({arch!r}" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")",
                "parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
                "GFLOPs at 224 px": count_flops(model, x) / 1e9,
            }
        )
    table = pd.DataFrame(rows)
    table["FLOPs × ResNet18"] = table["GFLOPs at 224 px"] / table.loc[0, "GFLOPs at 224 px"]
    return table


# --- tables and the plot -----------------------------------------------------------------------------

COLUMNS = {  # runs.csv column → table heading
    "0°": "upright",
    "90°": "90°",
    "quarter turns": "quarter turns",
    "random": "random angle",
    "balanced accuracy (random)": "balanced acc. (random)",
    "prediction change (quarter turns)": "prediction change (%)",
}


def summarise(runs: pd.DataFrame, timing: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers: mean and SD per task and method with the cost columns, text: the Markdown table)."""
    grouped = runs.groupby(["task", "method"], sort=False)
    mean, sd = grouped[list(COLUMNS)].mean(), grouped[list(COLUMNS)].std(ddof=1).fillna(0.0)
    numbers = pd.concat([mean.add_suffix(" mean"), sd.add_suffix(" sd")], axis=1).reset_index()
    numbers["parameters"] = grouped["parameters"].first().to_numpy()
    numbers["fit seconds"] = grouped["fit seconds"].mean().to_numpy()
    numbers["runs"] = grouped.size().to_numpy()
    numbers = numbers.merge(timing, on="method", how="left")
    text = pd.DataFrame({"task": numbers["task"], "method": numbers["method"]})
    text["parameters"] = numbers["parameters"].map("{:,}".format)
    for column in ("FLOPs × plain", "train step × plain", "inference × plain"):
        text[column] = numbers[column].map("{:.2f}".format)
    for column, heading in COLUMNS.items():
        text[heading] = [
            f"{m:.1f} ± {s:.1f}"
            for m, s in zip(numbers[f"{column} mean"], numbers[f"{column} sd"], strict=True)
        ]
    return numbers, text


def plot_accuracy_vs_angle(runs: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Mean test accuracy at each angle of the sweep, one line per method, one panel per task."""
    angles = [*SWEEP, 360]
    tasks = list(dict.fromkeys(runs["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5.5), squeeze=False, sharey=True)
    curves = []
    for ax, task in zip(axes[0], tasks, strict=True):
        mean = (
            runs[runs["task"] == task].groupby("method", sort=False)[[f"{a % 360}°" for a in angles]].mean()
        )
        for i, method in enumerate(mean.index):
            style = "-" if i < 10 else "--"
            ax.plot(angles, mean.loc[method].to_numpy(), style, marker="o", markersize=3, label=method)
        ax.set(xlabel="rotation of the test images (degrees)", xticks=range(0, 361, 45), title=task)
        ax.grid(alpha=0.3)
        curves.append(mean.T.iloc[:-1].rename_axis("angle").reset_index().assign(task=task))
    axes[0][0].set_ylabel("test accuracy (%), mean over seeds")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Trained upright (digits) or with an upright bias (lesions); tested turned")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return pd.concat(curves)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per run (default 10)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)"
    )
    parser.add_argument(
        "--test-seeds", type=int, nargs="+", default=[0, 1], help="seeds of the random digit angles"
    )
    parser.add_argument("--tasks", nargs="+", choices=["digits", "lesions"], default=["digits", "lesions"])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*METHODS, *EXTRA_METHODS],
        default=None,
        help="default: all but extras",
    )
    parser.add_argument("--per-class", type=int, default=150, help="training lesions per class (default 150)")
    parser.add_argument(
        "--bias", type=float, default=30.0, help="orientation range of the biased lesions (°)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (the paper's 0.01)")
    parser.add_argument("--jobs", type=int, default=2, help="tasks trained in parallel processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--timing-repeats", type=int, default=10, help="interleaved timing repetitions")
    parser.add_argument("--data-dir", type=Path, default=Path("runs/benchmarks/compare-data"))
    parser.add_argument("--out", type=Path, default=Path("results/compare"))
    args = parser.parse_args(argv)
    args.methods = [REFERENCE, *[m for m in (args.methods or METHODS) if m != REFERENCE]]

    started = time.perf_counter()
    if args.jobs > 1 and len(args.tasks) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(args.tasks)), mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_task, args.tasks, [args] * len(args.tasks)))
    else:
        results = [run_task(task, args) for task in args.tasks]
    runs = pd.DataFrame([row for rows in results for row in rows])
    training_minutes = (time.perf_counter() - started) / 60

    timing = time_methods(args, digits_task(args.test_seeds))
    complexity = full_size_complexity()
    numbers, text = summarise(runs, timing)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(args.out / "results.csv", numbers.to_csv(index=False))
    atomic_write_text(args.out / "complexity.csv", complexity.to_csv(index=False))
    curves = plot_accuracy_vs_angle(runs, args.out / "accuracy_vs_angle.png")
    atomic_write_text(args.out / "accuracy_vs_angle.csv", curves.to_csv(index=False))
    minutes = (time.perf_counter() - started) / 60
    caption = caption_text(args, argv, minutes, training_minutes)
    tables = [
        f"### {task}\n\n{markdown_table(text[text['task'] == task].drop(columns='task'))}"
        for task in args.tasks
    ]
    complexity_md = markdown_table(complexity, floatfmt=".2f")
    atomic_write_text(
        args.out / "results.md",
        f"{caption}\n\n" + "\n".join(tables) + f"\n### Full-size models at 224 px\n\n{complexity_md}",
    )
    print((args.out / "results.md").read_text())


def caption_text(args: argparse.Namespace, argv: list[str] | None, minutes: float, training: float) -> str:
    """The table's caption: command, machine, wall clock, data and protocol."""
    processes = min(args.jobs, len(args.tasks))
    tasks = []
    if "digits" in args.tasks:
        tasks.append("- **digits**: " + DIGITS_TEXT.format(size=SIZE, draws=len(args.test_seeds)))
    if "lesions" in args.tasks:
        half = args.bias / 2
        tasks.append(
            "- **lesions**: "
            + LESIONS_TEXT.format(size=SIZE, bias=half, n=args.per_class, n_test=args.per_class // 2)
        )
    lr_step = max(1, round(args.epochs * 2 / 3))
    protocol = " ".join(
        [
            f"Every run: rmnet.train.fit, SGD lr {args.lr} (×0.1 after epoch {lr_step}), momentum 0.9,",
            f"weight decay 1e-4, batch {args.batch_size}, {args.epochs} epochs, weighted cross-entropy",
            "unless the method has its own loss (RiDe, RIR; MWNL with its p schedule scaled to the",
            "epochs), no flips;",
            "RA: training images turned by a uniform angle; the model after the last epoch.",
            f"ResNet18 at width {WIDTH} (16…128 channels), C4 networks and ORN at {GROUP_WIDTH} features per",
            "orientation, RegNetY-800MF/4: its design at a quarter of the widths.",
            f"Accuracy (%) mean ± SD over {len(args.seeds)} training seeds. 90°: the test set turned by a",
            "quarter turn (exact); quarter turns: mean over 90°, 180°, 270°; balanced acc.: mean per-class",
            "recall on the random-angle set; prediction change: % of test images whose predicted class",
            "changes under a quarter turn (mean over the three). FLOPs (convolutions and matmuls,",
            "FlopCounterMode), train step (the method's own objective: forward, backward, SGD update) and",
            "inference (the test set) relative to the plain ResNet18: medians of",
            f"{args.timing_repeats} interleaved repetitions on fresh models.",
        ]
    )
    return (
        f"`{command_line('benchmarks.compare', argv)}`, {machine_description()}; "
        f"{minutes:.1f} min wall clock ({training:.1f} min training the {len(args.tasks)} tasks in "
        f"{processes} process(es) of {args.threads} torch thread(s)).\n\n"
        + "\n".join(tasks)
        + f"\n\n{protocol}"
    )


DIGITS_TEXT = (
    "scikit-learn's digits at {size}×{size} px (3 grey channels), 1,078 train / 359 val / 360 test "
    "(stratified, fixed), trained upright; random angle: {draws} draws of one uniform angle per test image."
)
LESIONS_TEXT = (
    "rmnet.data.make_lesion_dataset, 6 classes at {size}×{size} px, every lesion within ±{bias:g}° of "
    "upright ({n} per class, seed 0, split 80/20 into train/val); test: {n_test} new lesions per class "
    "drawn the same way (seed 1), their quarter turns and a sweep (bilinear); random angle: as many "
    "lesions generated at uniformly random orientations (seed 2). Every image through its inscribed "
    "disc (a dermatoscope's round field of view)."
)


if __name__ == "__main__":
    main()
