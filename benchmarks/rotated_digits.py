"""Train on upright digits, test on rotated ones: the rotation methods side by side.

    .venv/bin/python -m benchmarks.rotated_digits [--epochs 10] [--seeds 0 1 2]

The source blog's experiment (train on upright MNIST, test on rotated digits) on the data that
ships with scikit-learn: 1,797 real 8×8 handwritten digits, upsampled to 21×21 with the digit
in the central 15 px (``rmnet.data.load_digits_tensors``), one fixed stratified 60/20/20 split.
Every method is trained by ``rmnet.train.fit`` from a ``TrainConfig`` and tested on the upright
test set, on its quarter turns, on a sweep of angles and on uniformly random angles. Training
images are upright, except where a method's ``rotation_augmentation`` rotates them (by at most
that many degrees); never flipped (a vertical flip of a digit is a rotated digit). Writes
results/rotated_digits/: results.md/.csv (mean ± SD over training seeds), runs.csv (every
run), accuracy_vs_angle.csv/.png.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks import command_line, machine_description, markdown_table  # noqa: E402
from benchmarks.compute_overhead import (  # noqa: E402
    count_flops,
    median_ratio,
    set_rm_padding,
    time_interleaved,
    training_step,
)
from rmnet import create_model, list_models, register_model  # noqa: E402
from rmnet.config import TrainConfig, build_model  # noqa: E402
from rmnet.data import TensorImageDataset, load_digits_tensors  # noqa: E402
from rmnet.data.transforms import random_rotation  # noqa: E402
from rmnet.groups import rotate  # noqa: E402
from rmnet.io import atomic_write_text, save_figure  # noqa: E402
from rmnet.models.base import HashHead, ImageClassifier  # noqa: E402
from rmnet.train import fit  # noqa: E402

try:  # the outside reference; escnn needs a Fortran compiler to build (py3nj), e2cnn does not
    from e2cnn import gspaces
    from e2cnn import nn as enn
except ImportError:
    enn = None

# label: TrainConfig fields. Every model sees one grey channel; small_cnn has 32 channels as in
# the blog's plain CNN, the GCNN 16 channels per group element as in the blog's GCNN.
W32 = {"width": 32}
METHODS: dict[str, dict] = {
    "plain CNN": dict(arch="small_cnn", model_options=W32),
    "RA": dict(arch="small_cnn", model_options=W32, rotation_augmentation=360),
    "TI-pooling (k=4)": dict(arch="ti_pooling_small_cnn", model_options=W32),
    "GCNN (C4)": dict(arch="gcnn_c4", model_options={"width": 16}),
    "RM all (k=4)": dict(arch="small_cnn", rm="all", model_options=W32),
    "RM 3-4 (k=4)": dict(arch="small_cnn", rm="3-4", model_options=W32),
    "RM all (k=8)": dict(arch="small_cnn", rm="all", k=8, model_options=W32),
    "RM all (k=8, full padding)": dict(arch="small_cnn_rm_full_padding", rm="all", k=8, model_options=W32),
    "e2cnn C4 (reference)": dict(arch="e2cnn_c4", model_options={"width": 16}),
    # RM is exactly invariant to quarter turns, so augmentation only has to cover what lies
    # between them: ±45° with C4, ±22.5° with C8.
    "RM all (k=4) + RA ±45°": dict(arch="small_cnn", rm="all", model_options=W32, rotation_augmentation=45),
    "RM all (k=8) + RA ±22.5°": dict(
        arch="small_cnn", rm="all", k=8, model_options=W32, rotation_augmentation=22.5
    ),
    "RM all (D4) + RA ±45°": dict(
        arch="small_cnn", rm="all", dihedral=True, model_options=W32, rotation_augmentation=45
    ),
    "RM all (k=4, width 64) + RA ±45°": dict(
        arch="small_cnn", rm="all", model_options={"width": 64}, rotation_augmentation=45
    ),
    "RM all (k=4) + RA ±45°, 3× epochs": dict(
        arch="small_cnn", rm="all", model_options=W32, rotation_augmentation=45, epochs_times=3
    ),
    "RM all (k=4) + RA ±45°, 6× epochs": dict(
        arch="small_cnn", rm="all", model_options=W32, rotation_augmentation=45, epochs_times=6
    ),
    "RM all (k=4) + RA ±45°, 6× epochs, lr × 0.1 twice": dict(
        arch="small_cnn", rm="all", model_options=W32, rotation_augmentation=45, epochs_times=6, lr_steps=2
    ),
    "RM all (k=8) + RA ±22.5°, 3× epochs": dict(
        arch="small_cnn", rm="all", k=8, model_options=W32, rotation_augmentation=22.5, epochs_times=3
    ),
    "RM all (k=8) + RA ±22.5°, 6× epochs": dict(
        arch="small_cnn", rm="all", k=8, model_options=W32, rotation_augmentation=22.5, epochs_times=6
    ),
    "RM all (k=8) + RA ±22.5°, 10× epochs": dict(
        arch="small_cnn", rm="all", k=8, model_options=W32, rotation_augmentation=22.5, epochs_times=10
    ),
}
QUARTER_TURNS = (90, 180, 270)
SWEEP = tuple(range(0, 360, 15))


class E2CNNReference(ImageClassifier):
    """The GCNN row rebuilt with e2cnn (R2Conv on C4 regular fields, InnerBatchNorm), same layout."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_chans: int = 1,
        width: int = 16,
        strides: tuple[int, ...] = (1, 2, 2, 1),
        kernel_size: int = 5,
        hash_bits: int | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_features, self.hash_bits = num_classes, width, hash_bits
        space = gspaces.Rot2dOnR2(N=4)
        self.in_type = enn.FieldType(space, in_chans * [space.trivial_repr])
        hidden = enn.FieldType(space, width * [space.regular_repr])
        layers, field = [], self.in_type
        for stride in strides:
            conv = enn.R2Conv(field, hidden, kernel_size, padding=kernel_size // 2, stride=stride)
            layers += [conv, enn.InnerBatchNorm(hidden), enn.ReLU(hidden)]
            field = hidden
        self.body = enn.SequentialModule(*layers)
        self.head = HashHead(width, num_classes, hash_bits)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, width): mean over space and the 4 rotations of each regular field (invariant)."""
        y = self.body(enn.GeometricTensor(x, self.in_type)).tensor  # (B, width·4, H, W), fields contiguous
        return y.unflatten(1, (-1, 4)).mean(dim=(-3, -2, -1))

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)


def small_cnn_rm_full_padding(
    num_classes: int, *, rm: str | None = None, k: int = 4, dihedral: bool = False, **options
) -> ImageClassifier:
    """``create_model("small_cnn", …)`` with the paper's padding in interpolated RM: every copy
    zero-padded to ⌈√2·side⌉ before rotating (the default, padding="none", keeps the map size)."""
    return set_rm_padding(
        create_model("small_cnn", num_classes, rm=rm, k=k, dihedral=dihedral, **options), "full"
    )


if enn is not None and "e2cnn_c4" not in list_models():
    warnings.filterwarnings("ignore", category=UserWarning, module="e2cnn")
    register_model("e2cnn_c4")(E2CNNReference)
if "small_cnn_rm_full_padding" not in list_models():
    register_model("small_cnn_rm_full_padding")(small_cnn_rm_full_padding)


def load_split(size: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digits as one grey channel, split 60/20/20 (train/val/test), stratified, fixed by ``seed``."""
    images, labels = load_digits_tensors(size=size, channels=1)
    index = torch.arange(len(labels)).numpy()
    train, rest = train_test_split(index, train_size=0.6, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, train_size=0.5, stratify=labels[rest], random_state=seed)
    return {part: (images[i], labels[i]) for part, i in (("train", train), ("val", val), ("test", test))}


def rotate_each(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate image i by angles[i] degrees (bilinear about the centre, zeros outside)."""
    return torch.stack([rotate(image, float(angle)) for image, angle in zip(images, angles, strict=True)])


def rotated_test_sets(images: torch.Tensor, random_seeds: list[int]) -> dict[str, torch.Tensor]:
    """The upright test images, the sweep of fixed angles, and uniformly random angles per seed."""
    sets = {f"{angle}°": rotate(images, float(angle)) for angle in sorted({*SWEEP, *QUARTER_TURNS})}
    for seed in random_seeds:
        angles = torch.rand(len(images), generator=torch.Generator().manual_seed(seed)) * 360
        sets[f"random (seed {seed})"] = rotate_each(images, angles)
    return sets


@torch.inference_mode()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's logits for ``images`` in eval mode, batch by batch."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def invariance_error(upright_logits: torch.Tensor, rotated_logits: torch.Tensor) -> float:
    """mean |logits(rot90 x) − logits(x)| / mean |logits(x)|: 0 for an exactly invariant model."""
    return ((rotated_logits - upright_logits).abs().mean() / upright_logits.abs().mean()).item()


def train_and_test(
    label: str, config: TrainConfig, split: dict, sets: dict[str, torch.Tensor]
) -> tuple[dict, nn.Module]:
    """One training run through rmnet.train.fit, then accuracy on every test set."""
    train_set = TensorImageDataset(*split["train"], transform=training_transform(config))
    val_set = TensorImageDataset(*split["val"])
    started = time.perf_counter()
    result = fit(config, train_set, val_set, progress=False)
    row = {"method": label, "seed": config.seed, "train seconds": time.perf_counter() - started}
    row["epochs"] = config.epochs
    row["parameters"] = sum(p.numel() for p in result.model.parameters())
    row["train accuracy"] = 100.0 * result.history[-1]["train_accuracy"]  # running, in the last epoch
    logits = {name: logits_of(result.model, images) for name, images in sets.items()}
    for name, set_logits in logits.items():
        row[name] = 100.0 * (set_logits.argmax(1) == split["test"][1]).float().mean().item()
    random_sets = [name for name in sets if name.startswith("random (")]
    row["random 0–360°"] = sum(row[name] for name in random_sets) / len(random_sets)
    row["invariance error"] = invariance_error(logits["0°"], logits["90°"])
    return row, result.model


def training_transform(config: TrainConfig) -> v2.Compose | None:
    """The digits' training augmentation from ``config``: ``rmnet.data.build_transform``'s random
    rotation (at most ``rotation_augmentation`` degrees) and flips, without its resizing and
    ImageNet normalisation (the digits are one grey channel, already at size)."""
    steps = [random_rotation(config.rotation_augmentation)]
    if config.flips:
        flips = [v2.Identity(), v2.RandomHorizontalFlip(1.0), v2.RandomVerticalFlip(1.0)]
        steps.append(v2.RandomChoice(flips))
    steps = [step for step in steps if step is not None]
    return v2.Compose(steps) if steps else None


def time_steps(models: dict[str, nn.Module], split: dict, batch_size: int, repeats: int) -> pd.DataFrame:
    """Inference (a pass over the test set) and 5 training steps of every model, over the plain
    CNN's time in the same interleaved repetition (medians), beside the ratio of counted FLOPs."""
    test_images, train_batch = split["test"][0], split["train"][0][:batch_size]
    steps = {}
    for label, model in models.items():
        steps[label, "inference"] = partial(logits_of, model, test_images, batch_size)
        steps[label, "training"] = partial(_repeat, training_step(model, train_batch), 5)
    samples = time_interleaved(steps, repeats)
    flops = {label: count_flops(model.eval(), test_images[:batch_size]) for label, model in models.items()}
    ratios = {"method": list(models), "FLOPs × plain": [flops[m] / flops["plain CNN"] for m in models]}
    for kind, column in (("training", "train step × plain"), ("inference", "inference × plain")):
        ratios[column] = [median_ratio(samples[m, kind], samples["plain CNN", kind]) for m in models]
    return pd.DataFrame(ratios)


def method_config(base: TrainConfig, label: str, seed: int, epochs: int) -> TrainConfig:
    """The TrainConfig of ``label`` (METHODS) for one seed: one grey channel; ``epochs_times``
    lengthens the schedule, the learning-rate step at the same fraction of it (after 2/3 of the
    epochs), or ``lr_steps`` = 2 steps after each third."""
    fields = dict(METHODS[label])
    options = {"in_chans": 1, **fields.get("model_options", {})}
    if "epochs_times" in fields:
        longer = epochs * fields.pop("epochs_times")
        steps = fields.pop("lr_steps", 1)
        fraction = 2 / 3 if steps == 1 else 1 / (steps + 1)
        fields.update(epochs=longer, lr_step=max(1, round(longer * fraction)))
    return base.replace(**{**fields, "model_options": options}, seed=seed)


def reusable_runs(paths: list[Path]) -> dict[tuple[str, int], dict]:
    """(method, seed): a row of earlier runs.csv files (the last file wins), to reuse as is."""
    rows = {}
    for path in paths:
        for row in pd.read_csv(path).to_dict("records"):
            rows[row["method"], int(row["seed"])] = row
    return rows


def _repeat(step: Callable[[], None], times: int) -> None:
    for _ in range(times):
        step()


def summarise(runs: pd.DataFrame, timing: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers: mean and SD per method, text: "mean ± SD" cells for the Markdown table)."""
    columns = ["0°", *(f"{a}°" for a in QUARTER_TURNS), "random 0–360°", "invariance error", "train accuracy"]
    grouped = runs.groupby("method", sort=False)
    mean, sd = grouped[columns].mean(), grouped[columns].std(ddof=1).fillna(0.0)
    numbers = pd.concat([mean.add_suffix(" mean"), sd.add_suffix(" sd")], axis=1).reset_index()
    numbers.insert(1, "parameters", grouped["parameters"].first().to_numpy())
    numbers["fit seconds"] = grouped["train seconds"].mean().to_numpy()
    numbers["epochs"] = grouped["epochs"].first().to_numpy()
    numbers = numbers.merge(timing, on="method")
    plain_epochs = numbers.loc[numbers["method"] == "plain CNN", "epochs"].iloc[0]
    numbers["training cost × plain"] = numbers["train step × plain"] * numbers["epochs"] / plain_epochs
    numbers["runs"] = grouped.size().to_numpy()

    text = pd.DataFrame({"method": numbers["method"], "parameters": numbers["parameters"]})
    names = {"0°": "upright"}
    for column in columns:
        digits = 4 if column == "invariance error" else 1
        text[names.get(column, column)] = [
            f"{m:.{digits}f} ± {s:.{digits}f}"
            for m, s in zip(numbers[f"{column} mean"], numbers[f"{column} sd"], strict=True)
        ]
    text["epochs"] = numbers["epochs"]
    for column in ("FLOPs × plain", "train step × plain", "training cost × plain", "inference × plain"):
        text[column] = numbers[column].map("{:.2f}".format)
    text["fit seconds"] = numbers["fit seconds"].map("{:.0f}".format)
    return numbers, text


def plot_accuracy_vs_angle(runs: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Mean test accuracy (± SD band over seeds) at each angle of the sweep, one line per method:
    the compared methods on top, RM with bounded rotation augmentation below (zoomed in)."""
    angles = [*SWEEP, 360]
    curves = runs.groupby("method", sort=False)[[f"{a % 360}°" for a in angles]]
    mean, sd = curves.mean(), curves.std(ddof=1).fillna(0.0)
    bounded = [m for m in mean.index if "+ RA" in m]
    panels = [("compared methods", [m for m in mean.index if m not in bounded], (0, 101))]
    if bounded:
        panels.append(("RM + rotation augmentation bounded to ±45° (C4) or ±22.5° (C8)", bounded, None))
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.5 * len(panels)), squeeze=False)
    for ax, (title, methods, ylim) in zip(axes[:, 0], panels, strict=True):
        colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
        for i, method in enumerate(methods):
            style = "--" if method in bounded and "epochs" not in method else "-"  # short schedules dashed
            line = ax.plot(
                angles,
                mean.loc[method].to_numpy(),
                style,
                marker="o",
                markersize=3,
                label=method,
                color=colours(i),
            )[0]
            low, high = (
                (mean.loc[method] - sd.loc[method]).to_numpy(),
                (mean.loc[method] + sd.loc[method]).to_numpy(),
            )
            ax.fill_between(angles, low, high, color=line.get_color(), alpha=0.12)
        if ylim is None:  # zoom in on the variants, whose curves are nearly flat; the 99% target
            low = min(mean.loc[m].min() for m in methods)
            ax.set_ylim(max(0, 5 * int(low / 5) - 5), 100.5)
            ax.axhline(99, color="grey", linewidth=0.8, linestyle=":")
        else:
            ax.set_ylim(*ylim)
        ax.set(
            xlabel="rotation of the test digits (degrees)",
            ylabel="test accuracy (%)",
            xticks=range(0, 361, 45),
        )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Trained on upright digits (scikit-learn digits), mean ± SD over seeds")
    fig.tight_layout()
    save_figure(fig, path)
    return mean.T.iloc[:-1].rename_axis("angle").reset_index()  # without the closing 360° = 0°


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per run (default 10)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)"
    )
    parser.add_argument(
        "--test-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random test angles"
    )
    parser.add_argument(
        "--size", type=int, default=21, help="image side (default 21); ≡ 1 (mod 4) keeps strided layers exact"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None, help="default: all")
    parser.add_argument("--timing-repeats", type=int, default=15, help="interleaved timing repetitions")
    parser.add_argument("--out", type=Path, default=Path("results/rotated_digits"))
    parser.add_argument(
        "--reuse-runs",
        type=Path,
        nargs="+",
        default=[],
        help="runs.csv files of earlier runs with this code: a (method, seed) found there is not trained "
        "again (every method is still timed, on a fresh model)",
    )
    args = parser.parse_args(argv)

    methods = args.methods or [m for m in METHODS if enn is not None or METHODS[m]["arch"] != "e2cnn_c4"]
    if "plain CNN" not in methods:
        methods = ["plain CNN", *methods]  # the reference of every time ratio
    split = load_split(args.size)
    sets = rotated_test_sets(split["test"][0], args.test_seeds)
    base = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=1e-4,
        lr_step=max(1, round(args.epochs * 2 / 3)),
        image_size=args.size,
        flips=False,  # a vertical flip of a digit is a rotated digit: "upright only" means no flips
        workers=0,
        device="cpu",
    )
    previous = reusable_runs(args.reuse_runs)
    rows, first_models, reused = [], {}, set()
    runs = [(seed, label) for seed in args.seeds for label in methods]  # seeds outermost: drift hits all
    for seed, label in tqdm(runs, desc="training runs"):
        config = method_config(base, label, seed, args.epochs)
        if (label, seed) in previous:
            rows.append({**previous[label, seed], "epochs": config.epochs})
            reused.add(label)
            continue
        row, model = train_and_test(label, config, split, sets)
        rows.append(row)
        first_models.setdefault(label, model)
        tqdm.write(f"{label} seed {seed}: upright {row['0°']:.1f}%, random {row['random 0–360°']:.1f}%")
    for label in methods:  # a method whose runs were all reused is timed on a fresh model
        if label not in first_models:
            torch.manual_seed(0)
            first_models[label] = build_model(method_config(base, label, 0, args.epochs), num_classes=10)
    first_models = {label: first_models[label] for label in methods}

    runs_table = pd.DataFrame(rows)
    timing = time_steps(first_models, split, args.batch_size, repeats=args.timing_repeats)
    numbers, text = summarise(runs_table, timing)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "runs.csv", runs_table.to_csv(index=False))
    atomic_write_text(args.out / "results.csv", numbers.to_csv(index=False))
    curves = plot_accuracy_vs_angle(runs_table, args.out / "accuracy_vs_angle.png")
    atomic_write_text(args.out / "accuracy_vs_angle.csv", curves.to_csv(index=False))
    n_train, n_val, n_test = (len(split[p][1]) for p in ("train", "val", "test"))
    caption = (
        f"`{command_line('benchmarks.rotated_digits', argv)}`, "
        f"{machine_description()}.\n\nscikit-learn digits at {args.size}×{args.size}, "
        f"{n_train} train / {n_val} val / {n_test} test (stratified, fixed), trained on upright digits, "
        'never flipped; "+ RA ±a°" rotates each training image by an angle uniform in [−a°, a°] '
        f"(RA: the whole circle). rmnet.train.fit: SGD lr {args.lr} (×0.1 after epoch {base.lr_step}), "
        f'momentum 0.9, weight decay 1e-4, batch {args.batch_size}, {args.epochs} epochs ("n× epochs": '
        f'n·{args.epochs}, ×0.1 after two thirds of them; "lr × 0.1 twice": after each third), '
        "weighted cross-entropy; "
        f"the model after the last epoch. Accuracy (%) mean ± SD over {len(args.seeds)} training seeds; "
        "random 0–360° averages "
        f"{len(args.test_seeds)} fixed draws of one angle per test image. Times are relative to the plain "
        f"CNN, medians of {args.timing_repeats} interleaved repetitions (inference: the test set in batches "
        f"of {args.batch_size}; train step: 5 × forward, backward, SGD update on {args.batch_size} images); "
        "training cost = train step × epochs, over the plain CNN's; "
        "fit seconds: wall clock of rmnet.train.fit per run, "
        "validation included (the machine is shared: compare the interleaved ratios). "
        "Invariance error: mean |logits(rot90 x) − logits(x)| / mean |logits(x)| on the upright test set."
    )
    if reused:
        sources = ", ".join(str(path) for path in args.reuse_runs)
        which = "every method" if reused == set(methods) else ", ".join(m for m in methods if m in reused)
        caption += (
            f" Accuracy of {which} from the earlier runs in {sources} (not trained again), "
            "time ratios from this run."
        )
    atomic_write_text(args.out / "results.md", f"{caption}\n\n{markdown_table(text)}")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
