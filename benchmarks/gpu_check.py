"""A GPU check: ResNet18 plain and with RM 5–8, CUDA AMP float16 training and inference at 224 px.

    .venv/bin/python -m benchmarks.gpu_check              # about 5 minutes on one GPU
    .venv/bin/python -m benchmarks.gpu_check --dry-run    # tiny sizes on the CPU, a minute: checks the script

On one CUDA device, for ResNet18 plain, with strict RM 5–8 (k = 4, the paper's) and with RM 5–8
at k = 8 (45° steps, bilinear), each with channels-last off and on:

- training steps (forward, weighted cross-entropy, backward, SGD update) under
  ``torch.autocast("cuda", torch.float16)`` with a ``GradScaler``, batch 64: ms per step, images/s
  and the ratio to the plain network with the same memory format;
- inference (eval mode, ``torch.inference_mode``, float16 autocast), batch 64: images/s and ratio;
- peak GPU memory of each (``torch.cuda.max_memory_allocated`` above what was allocated before);

every variant timed in interleaved rounds (ratios within a round, medians over rounds). Then a
short end-to-end ``rmnet train`` (RM 5–8, ``--amp``, channels-last, 2 epochs) on a generated
folder in the ISIC 2019 layout (images, ground-truth CSV, metadata CSV), which must finish with
a finite loss and write its run folder. Writes four files to results/gpu/ (few and flat, so
that all of them come back from a lent machine's output folder): gpu_check.md (everything, with
the device, the versions and the command), steps.csv (one row per variant), train_run.json (the
end-to-end run) and train_metrics.csv (its metrics.csv); the run folder itself stays in a
temporary folder.

Without a CUDA device it stops at once with a message saying so (exit status 2). ``--dry-run``
runs the same code on the CPU at tiny sizes (bfloat16 autocast, no memory figures) into a
temporary folder unless ``--out`` is given; tests/test_benchmarks_gpu_check.py runs it, so the
script stays in working order until a GPU is lent.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmarks import command_line, markdown_table
from rmnet import create_model
from rmnet.io import atomic_write_text

ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC_COLUMNS = (*ISIC_CLASSES, "UNK")
MODELS: dict[str, dict] = {  # label: create_model options for resnet18
    "plain": {},
    "RM 5-8 (k=4)": {"rm": "5-8", "k": 4},
    "RM 5-8 (k=8)": {"rm": "5-8", "k": 8},
}
NO_CUDA = (
    "gpu_check: no CUDA device: torch.cuda.is_available() is False (torch {torch}, built for CUDA "
    "{cuda}). Run it on a machine with an NVIDIA GPU, or add --dry-run for the CPU smoke test."
)


@dataclass(frozen=True)
class Sizes:
    """What one check run measures: the full check on a GPU, or tiny sizes for --dry-run."""

    image: int = 224
    batch: int = 64
    warmup: int = 10  # steps per variant before timing (cuDNN autotuning, allocator)
    rounds: int = 10  # interleaved rounds
    steps: int = 20  # timed steps (or inference batches) per variant per round
    fixture_per_class: int = 12  # images per ISIC class in the generated folder
    fixture_size: tuple[int, int] = (300, 225)  # (width, height): 600×450 halved, like HAM10000
    train_image: int = 224
    train_batch: int = 16
    train_epochs: int = 2
    workers: int = 4


DRY_RUN = Sizes(
    image=32,
    batch=2,
    warmup=1,
    rounds=2,
    steps=1,
    fixture_per_class=3,
    fixture_size=(40, 30),
    train_image=32,
    train_batch=4,
    train_epochs=1,
    workers=0,
)


class Device:
    """The device, its autocast type and a clock that waits for the device's queued work."""

    def __init__(self, dry_run: bool) -> None:
        self.cuda = not dry_run
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.amp_dtype = torch.float16 if self.cuda else torch.bfloat16

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def reset_peak(self) -> int:
        """Start a peak-memory measurement; returns the bytes allocated now (0 on the CPU)."""
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_mib(self, before: int) -> float:
        """Peak bytes allocated since ``reset_peak`` above ``before``, in MiB (NaN on the CPU)."""
        if not self.cuda:
            return float("nan")
        self.sync()
        return (torch.cuda.max_memory_allocated() - before) / 2**20


def describe(device: Device) -> dict[str, str]:
    """The versions and the device a result belongs to."""
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "CUDA (torch build)": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
    }
    if device.cuda:
        props = torch.cuda.get_device_properties(device.device)
        memory = f"{props.total_memory / 2**30:.1f} GiB"
        info["device"] = f"{props.name}, {memory}, compute capability {props.major}.{props.minor}"
        info["GPUs visible"] = str(torch.cuda.device_count())
    else:
        info["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads): dry run"
    return info


def build_variants(device: Device, sizes: Sizes) -> dict[tuple[str, bool], nn.Module]:
    """(model label, channels-last): the model on the device. Both memory formats share initial weights."""
    variants = {}
    for label, options in MODELS.items():
        torch.manual_seed(0)
        model = create_model("resnet18", num_classes=len(ISIC_CLASSES), **options).to(device.device)
        for channels_last in (False, True):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            variants[label, channels_last] = copy.deepcopy(model).to(memory_format=fmt)
    return variants


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: Device) -> Callable[[], float]:
    """One AMP training step (as ``rmnet.train``: autocast, scaled loss, SGD); returns the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.cuda)

    def step() -> float:
        model.train()
        with device.autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def inference_step(model: nn.Module, x: torch.Tensor, device: Device) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        model.eval()
        with torch.inference_mode(), device.autocast():
            return model(x)

    return step


def measure_steps(device: Device, sizes: Sizes) -> pd.DataFrame:
    """Training and inference of every variant, interleaved; one row per variant."""
    variants = build_variants(device, sizes)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, sizes.image, sizes.image, generator=generator).to(device.device)
    y = torch.randint(len(ISIC_CLASSES), (sizes.batch,), generator=generator).to(device.device)
    steps: dict[tuple[str, bool, str], Callable] = {}
    for (label, channels_last), model in variants.items():
        xm = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        steps[label, channels_last, "training"] = training_step(model, xm, y, device)
        steps[label, channels_last, "inference"] = inference_step(model, xm, device)

    memory: dict[tuple, float] = {}
    losses: dict[tuple, float] = {}
    for key, step in steps.items():  # warm-up, and the peak memory of each step alone
        for _ in range(sizes.warmup):
            step()
        before = device.reset_peak()
        out = step()
        memory[key] = device.peak_mib(before)
        if key[2] == "training":
            losses[key] = float(out.detach())
    seconds: dict[tuple, list[float]] = {key: [] for key in steps}
    keys = list(steps)
    for r in range(sizes.rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            device.sync()
            start = time.perf_counter()
            for _ in range(sizes.steps):
                steps[key]()
            device.sync()
            seconds[key].append((time.perf_counter() - start) / sizes.steps)

    rows = []
    for label, channels_last in variants:
        row = {"model": label, "channels-last": channels_last, "image px": sizes.image, "batch": sizes.batch}
        for kind in ("training", "inference"):
            mine, plain = seconds[label, channels_last, kind], seconds["plain", channels_last, kind]
            ratio = statistics.median(m / p for m, p in zip(mine, plain, strict=True))
            row[f"{kind} ms / batch"] = 1e3 * statistics.median(mine)
            row[f"{kind} images/s"] = sizes.batch / statistics.median(mine)
            row[f"{kind} × plain"] = ratio
            row[f"{kind} peak MiB"] = memory[label, channels_last, kind]
        row["loss finite"] = bool(np.isfinite(losses[label, channels_last, "training"]))
        rows.append(row)
    return pd.DataFrame(rows)


def make_isic_fixture(root: Path, per_class: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A folder in the ISIC 2019 layout: ISIC_2019_Training_Input/ISIC_*.jpg, the one-hot
    ground-truth CSV (image, MEL … SCC, UNK) and the metadata CSV (age, site, lesion_id, sex).

    Each class draws its lesions from one kind of ``rmnet.data.render_lesion``, so the classes
    differ in structure, as the generated demo data does.
    """
    from rmnet.data import render_lesion
    from rmnet.data.lesions import LESION_KINDS

    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth, meta = [], []
    for c, label in enumerate(ISIC_CLASSES):
        for i in range(per_class):
            name = f"ISIC_{c * per_class + i:07d}"
            pixels = render_lesion(LESION_KINDS[c % len(LESION_KINDS)], 128, rng)
            image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
            image.save(images / f"{name}.jpg", quality=90)
            truth.append({"image": name, **{col: float(col == label) for col in ISIC_COLUMNS}})
            meta.append(
                {
                    "image": name,
                    "age_approx": 30.0 + 5 * (i % 9),
                    "anatom_site_general": ("anterior torso", "head/neck", "lower extremity")[i % 3],
                    "lesion_id": f"HAM_{c * per_class + i:07d}",
                    "sex": ("male", "female")[i % 2],
                }
            )
    pd.DataFrame(truth).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    return root


def train_end_to_end(device: Device, sizes: Sizes, out: Path, work: Path) -> dict:
    """``rmnet train`` (RM 5–8, --amp, channels-last) on a generated ISIC-layout folder in ``work``;
    its metrics.csv is copied to ``out``/train_metrics.csv."""
    from rmnet.cli import main as rmnet_main

    data = make_isic_fixture(work / "isic2019", sizes.fixture_per_class, sizes.fixture_size)
    run_dir = work / "train_run"
    argv = [
        "train", "--out", str(run_dir), "--data", str(data), "--arch", "resnet18", "--rm", "5-8",
        "--epochs", str(sizes.train_epochs), "--batch-size", str(sizes.train_batch),
        "--image-size", str(sizes.train_image), "--lr", "0.01", "--amp", "--channels-last",
        "--device", device.device.type, "--workers", str(sizes.workers), "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    status = rmnet_main(argv)
    seconds = time.perf_counter() - start
    result = {"command": "rmnet " + " ".join(argv), "exit status": status, "wall seconds": round(seconds, 1)}
    metrics = run_dir / "metrics.csv"
    if status == 0 and metrics.is_file():
        history = pd.read_csv(metrics)
        atomic_write_text(out / "train_metrics.csv", metrics.read_text())
        last = history.iloc[-1].to_dict()
        result["epochs"] = len(history)
        result["last epoch"] = {key: _plain(value) for key, value in last.items()}
        losses = history.filter(like="loss").to_numpy(dtype=float)
        result["losses finite"] = bool(np.isfinite(losses).all())
        result["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
        result["run folder"] = sorted(p.name for p in run_dir.iterdir())
    result["ok"] = bool(status == 0 and result.get("losses finite") and result.get("checkpoints"))
    return result


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def report(info: dict, steps: pd.DataFrame, train: dict, sizes: Sizes, argv: list[str] | None) -> str:
    lines = [
        "# GPU check",
        "",
        f"`{command_line('benchmarks.gpu_check', argv)}`",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        "",
        f"## Training and inference, ResNet18, {sizes.image} px, batch {sizes.batch}, AMP "
        f"({'float16' if 'CPU' not in info['device'] else 'bfloat16, CPU dry run'})",
        "",
        f"Medians over {sizes.rounds} interleaved rounds of {sizes.steps} steps each, after {sizes.warmup} "
        "warm-up steps; × plain is the ratio to plain ResNet18 with the same memory format, taken "
        "within a round. Peak MiB: GPU memory allocated during one step above what was allocated "
        "before it (activations, gradients, workspace).",
        "",
        markdown_table(steps),
        "",
        "## End-to-end `rmnet train` on a generated ISIC 2019 folder",
        "",
        "```json",
        json.dumps(train, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU: check the script without a GPU"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default results/gpu; --dry-run: a temporary one)",
    )
    parser.add_argument("--skip-train", action="store_true", help="leave out the end-to-end rmnet train")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    device, sizes = Device(args.dry_run), DRY_RUN if args.dry_run else Sizes()
    threads = torch.get_num_threads()
    if device.cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)  # tiny sizes: one thread is fastest, and kind to a shared machine
    try:
        return run_check(args, argv, device, sizes)
    finally:
        torch.set_num_threads(threads)


def run_check(args: argparse.Namespace, argv: list[str] | None, device: Device, sizes: Sizes) -> int:
    """Measure, train, write the results; returns the exit status (1 when a check failed)."""
    with tempfile.TemporaryDirectory(prefix="rmnet-gpu-check-") as work:
        out = args.out or (Path(work) / "results" if args.dry_run else Path("results/gpu"))
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        info = describe(device)
        print(f"gpu_check on {info['device']}: training and inference steps …", flush=True)
        steps = measure_steps(device, sizes)
        atomic_write_text(out / "steps.csv", steps.to_csv(index=False))
        print(markdown_table(steps), flush=True)
        if args.skip_train:
            train = {"skipped": True, "ok": True}
        else:
            print("gpu_check: end-to-end rmnet train on a generated ISIC 2019 folder …", flush=True)
            train = train_end_to_end(device, sizes, out, Path(work))
        atomic_write_text(out / "train_run.json", json.dumps(train, indent=2) + "\n")
        info["check wall seconds"] = f"{time.perf_counter() - started:.0f}"
        atomic_write_text(out / "gpu_check.md", report(info, steps, train, sizes, argv))
        kept = "" if args.out or not args.dry_run else " (a temporary folder, removed now)"
        print(f"gpu_check: wrote {out}/gpu_check.md, steps.csv, train_run.json, train_metrics.csv{kept}")
    problems = [
        f"{row['model']} (channels-last {row['channels-last']}): the training loss is not finite"
        for _, row in steps.iterrows()
        if not row["loss finite"]
    ]
    if not train["ok"]:
        problems.append(f"rmnet train failed: exit status {train.get('exit status')}")
    for problem in problems:
        print(f"gpu_check: FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
