"""A GPU check: does `rmnet train` run as fast as the GPU computes? ResNet18 plain and RM 5–8, 224 px.

    PYTHONPATH=src python -m benchmarks.gpu_check            # about 4 minutes on one GPU
    .venv/bin/python -m benchmarks.gpu_check --dry-run       # tiny sizes on the CPU: checks the script

On one CUDA device, for ResNet18 plain and with strict RM 5–8 (k = 4, the paper's), under AMP
float16 (with a GradScaler) and bfloat16 (none), channels-last, batch 64:

1. synthetic steps: batches already on the GPU; training (forward, cross-entropy, backward, SGD)
   and inference images/s, interleaved rounds, medians; × plain within a round;
2. a generated ISIC-sized folder (``--images`` JPEGs, half 600×450 like HAM10000, half
   1024×1024 like BCN_20000, in the ISIC 2019 layout), cached with ``rmnet prepare`` (short
   edge 256), and decoding on the GPU (``torchvision.io.decode_jpeg(device="cuda")``, batches of
   64) against the batched transform from images held in GPU memory, images/s;
3. end to end: ``rmnet train`` on that cache (``--epochs`` epochs) with ``--data-path files``
   (today's: loader workers decode and augment each epoch) and ``--data-path memory`` (decoded
   once into GPU memory, batched augmentation there): the training pass's images/s (median over
   the epochs after the first), its ratio to the synthetic step rate, and the whole epoch's
   (validation and checkpoints included);
4. packed runs: 1, 2 and 4 concurrent ``rmnet train`` processes (RM 5–8, bfloat16, memory) on the
   one GPU; aggregate training images/s.

Writes, few and flat so all come back from a lent machine: gpu_check.md (everything, with the
device, the versions and the command), steps.csv, decode.csv, end_to_end.csv, packed_runs.csv.
Without a CUDA device it stops at once (exit status 2). ``--dry-run`` runs the same code on the CPU
at tiny sizes into a temporary folder unless ``--out`` is given (tests/test_benchmarks_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
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
MODELS: dict[str, dict] = {  # label: create_model options for resnet18 (and the same rmnet train flags)
    "plain": {},
    "RM 5-8 (k=4)": {"rm": "5-8", "k": 4},
}
AMP_TYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
DATA_PATHS = ("files", "memory")
NO_CUDA = (
    "gpu_check: no CUDA device: torch.cuda.is_available() is False (torch {torch}, built for CUDA "
    "{cuda}). Run it on a machine with an NVIDIA GPU, or add --dry-run for the CPU smoke test."
)
FILES = ("gpu_check.md", "steps.csv", "decode.csv", "end_to_end.csv", "packed_runs.csv")
PARTS = ("steps", "decode", "end_to_end", "packed_runs")


@dataclass(frozen=True)
class Sizes:
    """What one check run measures: the full check on a GPU, or tiny sizes for --dry-run."""

    image: int = 224
    batch: int = 64
    warmup: int = 10  # steps per variant before timing (cuDNN autotuning, allocator)
    rounds: int = 5  # interleaved rounds
    steps: int = 20  # timed steps (or inference batches) per variant per round
    images: int = 5200  # generated ISIC-sized JPEGs
    fixture_sizes: tuple[tuple[int, int], ...] = ((600, 450), (1024, 1024))  # (width, height)
    cache_edge: int = 256  # rmnet prepare --resize (256 for 224 px crops)
    epochs: int = 4  # end-to-end epochs (the first is a warm-up)
    workers: int = max(1, min(15, (os.cpu_count() or 2) - 1))
    packed: tuple[int, ...] = (1, 2, 4)  # concurrent runs on the one GPU
    decode_batches: int = 8  # timed GPU-decode batches
    end_to_end_amp: tuple[str, ...] = ("float16", "bfloat16")


DRY_RUN = Sizes(
    image=32,
    batch=4,
    warmup=1,
    rounds=2,
    steps=1,
    images=24,
    fixture_sizes=((40, 30), (48, 48)),
    cache_edge=37,
    epochs=2,
    workers=0,
    packed=(2,),
    decode_batches=1,
    end_to_end_amp=("bfloat16",),
)


class Device:
    """The device and a clock that waits for the device's queued work."""

    def __init__(self, dry_run: bool) -> None:
        self.cuda = not dry_run
        self.device = torch.device("cuda" if self.cuda else "cpu")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def describe(device: Device) -> dict[str, str]:
    """The versions and the device a result belongs to."""
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
        "CPU cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "CUDA (torch build)": str(torch.version.cuda),
        "cuDNN": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none",
    }
    if device.cuda:
        props = torch.cuda.get_device_properties(device.device)
        memory = f"{props.total_memory / 2**30:.1f} GiB"
        info["device"] = f"{props.name}, {memory}, compute capability {props.major}.{props.minor}"
        info["bfloat16 supported"] = str(torch.cuda.is_bf16_supported(including_emulation=False))
        info["GPUs visible"] = str(torch.cuda.device_count())
    else:
        info["device"] = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads): dry run"
    return info


# 1. Synthetic steps


def training_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: Device, amp_type: torch.dtype
) -> Callable[[], torch.Tensor]:
    """One AMP training step as ``rmnet.train`` takes it: autocast, SGD, a GradScaler for float16."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.cuda and amp_type == torch.float16)

    def step() -> torch.Tensor:
        model.train()
        with torch.autocast(device.device.type, dtype=amp_type):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return step


def inference_step(model: nn.Module, x: torch.Tensor, device: Device, amp_type: torch.dtype) -> Callable:
    def step() -> torch.Tensor:
        model.eval()
        with torch.inference_mode(), torch.autocast(device.device.type, dtype=amp_type):
            return model(x)

    return step


def measure_steps(device: Device, sizes: Sizes) -> pd.DataFrame:
    """Training and inference of every (model, AMP type), channels-last, interleaved; one row each."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sizes.batch, 3, sizes.image, sizes.image, generator=generator).to(device.device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(len(ISIC_CLASSES), (sizes.batch,), generator=generator).to(device.device)
    steps: dict[tuple[str, str, str], Callable] = {}
    for label, options in MODELS.items():
        for amp_name, amp_type in AMP_TYPES.items():
            torch.manual_seed(0)
            model = create_model("resnet18", num_classes=len(ISIC_CLASSES), **options)
            model = model.to(device.device, memory_format=torch.channels_last)
            steps[label, amp_name, "training"] = training_step(model, x, y, device, amp_type)
            steps[label, amp_name, "inference"] = inference_step(model, x, device, amp_type)
    losses = {}
    for key, step in steps.items():
        for _ in range(sizes.warmup):
            out = step()
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
    for label in MODELS:
        for amp_name in AMP_TYPES:
            row = {"model": label, "AMP": amp_name, "image px": sizes.image, "batch": sizes.batch}
            for kind in ("training", "inference"):
                mine, plain = seconds[label, amp_name, kind], seconds["plain", amp_name, kind]
                row[f"{kind} ms / batch"] = 1e3 * statistics.median(mine)
                row[f"{kind} images/s"] = sizes.batch / statistics.median(mine)
                row[f"{kind} × plain"] = statistics.median(m / p for m, p in zip(mine, plain, strict=True))
            row["loss finite"] = bool(np.isfinite(losses[label, amp_name, "training"]))
            rows.append(row)
    return pd.DataFrame(rows)


# 2. The generated folder, its cache, decoding


def _write_fixture_image(job: tuple[Path, int, tuple[int, int], int]) -> None:
    """One lesion photograph: drawn at 128 px, enlarged, with sensor-like noise (JPEG quality 90)."""
    from rmnet.data import render_lesion
    from rmnet.data.lesions import LESION_KINDS

    path, label, size, seed = job
    rng = np.random.default_rng(seed)
    small = Image.fromarray(render_lesion(LESION_KINDS[label % len(LESION_KINDS)], 128, rng))
    pixels = np.asarray(small.resize(size, Image.Resampling.BILINEAR), dtype=np.int16)
    pixels = (pixels + rng.integers(-6, 7, pixels.shape, dtype=np.int16)).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def make_isic_fixture(
    root: Path, count: int, sizes: Sequence[tuple[int, int]], workers: int = 0, seed: int = 0
) -> Path:
    """A folder in the ISIC 2019 layout: ``count`` ISIC_2019_Training_Input/ISIC_*.jpg, sizes taken
    in turn from ``sizes`` (width, height), classes in turn; the one-hot ground-truth CSV (image,
    MEL … SCC, UNK) and the metadata CSV (age, site, lesion_id, sex). Each class draws its lesions
    from one kind of ``rmnet.data.render_lesion``, so the classes differ in structure."""
    images = root / "ISIC_2019_Training_Input"
    images.mkdir(parents=True, exist_ok=True)
    truth, meta, jobs = [], [], []
    for i in range(count):
        name, label = f"ISIC_{i:07d}", ISIC_CLASSES[i % len(ISIC_CLASSES)]
        jobs.append(
            (
                images / f"{name}.jpg",
                i % len(ISIC_CLASSES),
                sizes[(i // len(ISIC_CLASSES)) % len(sizes)],
                seed + i,
            )
        )
        truth.append({"image": name, **{col: float(col == label) for col in ISIC_COLUMNS}})
        meta.append(
            {
                "image": name,
                "age_approx": 30.0 + 5 * (i % 9),
                "anatom_site_general": ("anterior torso", "head/neck", "lower extremity")[i % 3],
                "lesion_id": f"HAM_{i:07d}",
                "sex": ("male", "female")[i % 2],
            }
        )
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_fixture_image, jobs, chunksize=32))
    else:
        for job in jobs:
            _write_fixture_image(job)
    pd.DataFrame(truth).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    return root


def prepare(data: Path, cache: Path, edge: int, workers: int) -> dict:
    """``rmnet prepare`` of ``data`` into ``cache``: wall seconds and images/s."""
    from rmnet.cli import main as rmnet_main

    argv = ["prepare", "--data", str(data), "--out", str(cache), "--resize", str(edge)]
    start = time.perf_counter()
    status = rmnet_main([*argv, "--workers", str(max(1, workers))])
    seconds = time.perf_counter() - start
    count = len(list(cache.glob("*.jpg")))
    return {"exit status": status, "images": count, "seconds": seconds, "images/s": count / seconds}


def measure_decoding(device: Device, sizes: Sizes, cache: Path) -> pd.DataFrame:
    """Images/s: cached JPEGs decoded by torchvision.io.decode_jpeg on the device in batches, against
    the batched train transform (crop, flip; and with rotation) from images already in its memory."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from rmnet.data.batched import PackedImages, transform_batch
    from rmnet.data.transforms import TransformRecipe

    files = sorted(cache.glob("*.jpg"))[: sizes.batch * sizes.decode_batches]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        encoded = [read_file(str(path)) for path in files]
    batches = [encoded[i : i + sizes.batch] for i in range(0, len(encoded), sizes.batch)]

    def decode_all() -> list[torch.Tensor]:
        out = []
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            for batch in batches:
                out += decode_jpeg(batch, mode=ImageReadMode.RGB, device=device.device)
        return out

    rows = []
    decoded = decode_all()  # warm-up (the decoder's state, the allocator)
    rows.append(
        (
            f"decode_jpeg, batches of {sizes.batch}, on {device.device.type}",
            _rate(device, decode_all, len(encoded)),
        )
    )
    packed = PackedImages.from_arrays([image.permute(1, 2, 0).cpu() for image in decoded], [0] * len(decoded))
    packed = packed.to(device.device)
    for angle in (0.0, 45.0):
        recipe = TransformRecipe(True, sizes.image, sizes.cache_edge, angle, True)
        index = torch.arange(len(packed), device=device.device)

        def transform_all(index: torch.Tensor = index, recipe: TransformRecipe = recipe) -> None:
            for start in range(0, len(packed), sizes.batch):
                transform_batch(packed, index[start : start + sizes.batch], recipe)

        transform_all()
        what = "rotation ±45°, " if angle else ""
        rows.append(
            (
                f"batched train transform from memory ({what}crop, flip, normalise)",
                _rate(device, transform_all, len(packed)),
            )
        )
    return pd.DataFrame(rows, columns=["step", "images/s"])


def eval_difference(device: Device, sizes: Sizes, cache: Path) -> float:
    """Max |difference| between the eval transform batched on the device (data path memory) and
    build_transform per image on the CPU (data path files), over one batch of cached images."""
    from rmnet.data import ImageDataset, build_transform, load_image_table
    from rmnet.data.batched import transform_batch
    from rmnet.data.in_memory import pack_dataset

    table = load_image_table(str(cache.parent / "isic2019")).subset(np.arange(sizes.batch))
    table = dataclasses.replace(table, paths=[cache / f"{image_id}.jpg" for image_id in table.ids])
    dataset = ImageDataset(table, transform=build_transform(False, sizes.image, resize=sizes.cache_edge))
    on_cpu = torch.stack([dataset[i][0] for i in range(len(dataset))])
    packed = pack_dataset(dataset, progress=False).to(device.device)
    batched = transform_batch(packed, torch.arange(len(dataset)), dataset.transform.recipe)
    return float((batched.cpu() - on_cpu).abs().max())


def _rate(device: Device, run: Callable, count: int, repeats: int = 3) -> float:
    """Images/s of the fastest of ``repeats`` runs."""
    seconds = []
    for _ in range(repeats):
        device.sync()
        start = time.perf_counter()
        run()
        device.sync()
        seconds.append(time.perf_counter() - start)
    return count / min(seconds)


# 3. End to end


@contextlib.contextmanager
def timed_passes() -> Iterator[dict]:
    """Record the wall time of every training pass of rmnet.train (run_epoch ends by copying its
    results to the host, so the device is done) and of holding images in memory (pack_dataset)."""
    import rmnet.train as training

    record: dict = {"passes": [], "pack seconds": 0.0}
    run_epoch, pack_dataset = training.run_epoch, training.pack_dataset

    def timed_run_epoch(step, *args, **kwargs):
        start = time.perf_counter()
        result = run_epoch(step, *args, **kwargs)
        if step.training:
            record["passes"].append([len(result[1]), time.perf_counter() - start])
        return result

    def timed_pack(*args, **kwargs):
        start = time.perf_counter()
        packed = pack_dataset(*args, **kwargs)
        record["pack seconds"] += time.perf_counter() - start
        return packed

    training.run_epoch, training.pack_dataset = timed_run_epoch, timed_pack
    try:
        yield record
    finally:
        training.run_epoch, training.pack_dataset = run_epoch, pack_dataset


def timed_train(argv: list[str]) -> dict:
    """``rmnet train argv`` in this process: exit status, wall seconds, the training passes' and
    whole epochs' images/s (medians over the epochs after the first), losses finite?"""
    from rmnet.cli import main as rmnet_main

    out = Path(argv[argv.index("--out") + 1])
    start = time.perf_counter()
    with timed_passes() as record:
        status = rmnet_main(argv)
    result = {"exit status": status, "wall seconds": time.perf_counter() - start}
    result["decode into memory s"] = record["pack seconds"]
    metrics = out / "metrics.csv"
    if status == 0 and metrics.is_file() and record["passes"]:
        history = pd.read_csv(metrics)
        steady = record["passes"][1:] or record["passes"]
        result["train images"] = steady[0][0]
        result["train pass images/s"] = statistics.median(n / s for n, s in steady)
        epochs = history["seconds"].to_numpy()[1:] if len(history) > 1 else history["seconds"].to_numpy()
        result["epoch images/s"] = float(statistics.median(steady[0][0] / epochs))
        result["losses finite"] = bool(np.isfinite(history.filter(like="loss").to_numpy(float)).all())
        result["checkpoints"] = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    result["ok"] = bool(status == 0 and result.get("losses finite") and result.get("checkpoints"))
    return result


def train_argv(
    out: Path,
    data: Path,
    cache: Path,
    sizes: Sizes,
    device: Device,
    model: str,
    amp: str,
    data_path: str,
    workers: int,
) -> list[str]:
    options = MODELS[model]
    argv = [
        "train", "--out", str(out), "--data", str(data), "--cache", str(cache), "--arch", "resnet18",
        "--epochs", str(sizes.epochs), "--batch-size", str(sizes.batch), "--image-size", str(sizes.image),
        "--lr", "0.01", "--amp", "--amp-dtype", amp, "--channels-last", "--data-path", data_path,
        "--device", device.device.type, "--workers", str(workers), "--quiet",
    ]  # fmt: skip
    if options:
        argv += ["--rm", options["rm"], "--k", str(options["k"])]
    return argv


def measure_end_to_end(
    device: Device, sizes: Sizes, data: Path, cache: Path, work: Path, steps: pd.DataFrame
) -> pd.DataFrame:
    rows = []
    for model in MODELS:
        for amp in sizes.end_to_end_amp:
            synthetic = steps.loc[
                (steps["model"] == model) & (steps["AMP"] == amp), "training images/s"
            ].iloc[0]
            for data_path in DATA_PATHS:
                out = work / f"run-{len(rows)}"
                argv = train_argv(out, data, cache, sizes, device, model, amp, data_path, sizes.workers)
                result = timed_train(argv)
                print(f"  {model}, {amp}, {data_path}: {json.dumps(result)}", flush=True)
                rows.append(
                    {
                        "model": model,
                        "AMP": amp,
                        "data path": data_path,
                        "synthetic training images/s": synthetic,
                        "train pass images/s": result.get("train pass images/s", float("nan")),
                        "× synthetic": result.get("train pass images/s", float("nan")) / synthetic,
                        "epoch images/s (with validation, checkpoints)": result.get(
                            "epoch images/s", float("nan")
                        ),
                        "decode into memory s": result["decode into memory s"],
                        "train images": result.get("train images", 0),
                        "wall s": result["wall seconds"],
                        "ok": result["ok"],
                    }
                )
    return pd.DataFrame(rows)


# 4. Packed runs


def measure_packed(
    device: Device,
    sizes: Sizes,
    data: Path,
    cache: Path,
    work: Path,
    deadline: float,
    partial: Callable[[pd.DataFrame], None] = lambda table: None,
) -> pd.DataFrame:
    """N concurrent rmnet train processes (RM 5-8, bfloat16, memory path) on the one device."""
    rows = []
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])
    }
    for count in sizes.packed:
        if time.perf_counter() > deadline:
            rows.append({"runs at once": count, "skipped": "time budget spent"})
            continue
        workers = max(0, sizes.workers // count)
        processes, outputs = [], []
        start = time.perf_counter()
        for i in range(count):
            out = work / f"packed-{count}-{i}"
            argv = train_argv(
                out / "run", data, cache, sizes, device, "RM 5-8 (k=4)", "bfloat16", "memory", workers
            )
            result_file = work / f"packed-{count}-{i}.json"
            command = [
                sys.executable,
                "-m",
                "benchmarks.gpu_check",
                "--timed-train",
                str(result_file),
                "--",
                *argv,
            ]
            processes.append(subprocess.Popen(command, env=env, cwd=root))
            outputs.append(result_file)
        statuses = [process.wait() for process in processes]
        wall = time.perf_counter() - start
        results = [json.loads(path.read_text()) if path.is_file() else {"ok": False} for path in outputs]
        rates = [r.get("train pass images/s", float("nan")) for r in results]
        trained = sum(r.get("train images", 0) for r in results) * sizes.epochs
        rows.append(
            {
                "runs at once": count,
                "train pass images/s, each (median)": statistics.median(rates),
                "aggregate train pass images/s": sum(rates),
                "wall s (start-up included)": wall,
                "aggregate images/s over the wall time": trained / wall,
                "ok": all(s == 0 for s in statuses) and all(r["ok"] for r in results),
            }
        )
        print(f"  {count} at once: {rows[-1]}", flush=True)
        partial(_packed_table(rows))  # saved after each group: a time limit keeps what was measured
    return _packed_table(rows)


def _packed_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    if "aggregate train pass images/s" in table and table["runs at once"].iloc[0] == 1:
        table["× one run"] = (
            table["aggregate train pass images/s"] / table["aggregate train pass images/s"].iloc[0]
        )
    return table


def report(
    info: dict, tables: dict[str, pd.DataFrame], extra: dict, sizes: Sizes, argv: list[str] | None
) -> str:
    """gpu_check.md: the command, the machine, then every table measured so far."""
    captions = {
        "steps": f"## 1. Synthetic steps: ResNet18, {sizes.image} px, batch {sizes.batch}, channels-last, "
        f"batches already on the device\n\nMedians over {sizes.rounds} interleaved rounds of {sizes.steps} "
        f"steps, after {sizes.warmup} warm-up steps; × plain within a round. float16 with a GradScaler, "
        "bfloat16 without.",
        "decode": f"## 2. Decoding and the batched transform, {sizes.batch} cached images a batch\n\n"
        f"Data: {extra.get('data', '')}. Eval transform of {sizes.batch} cached images, batched on the "
        f"device against build_transform per image on the CPU: max |difference| "
        f"{extra.get('eval difference', float('nan')):.2e} (normalised units).",
        "end_to_end": f"## 3. End to end: `rmnet train` from the cache, {sizes.epochs} epochs, batch "
        f"{sizes.batch}, {sizes.workers} loader workers\n\n'train pass images/s': the training pass "
        "(run_epoch) alone, median over the epochs after the first; '× synthetic': against the same "
        "model's synthetic training rate above; 'epoch images/s': training images / the whole epoch "
        "(validation and the checkpoint writes included); 'decode into memory s': the one-time "
        "decode of the training and validation images (data path memory).",
        "packed_runs": "## 4. Packed runs: N `rmnet train` processes at once on the one GPU (RM 5-8, "
        f"bfloat16, data path memory, {sizes.epochs} epochs each, loader workers split between them)\n\n"
        "'aggregate train pass images/s': the sum of each run's median training-pass rate (the runs "
        "start together, so their steady epochs overlap); the wall-time rate includes each process's "
        "start-up (Python, CUDA, decoding into memory).",
    }
    lines = ["# GPU check", "", f"`{command_line('benchmarks.gpu_check', argv)}`", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()] + [""]
    for name, table in tables.items():
        lines += [captions[name], "", markdown_table(table), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--timed-train"]:  # one packed run, in its own process (measure_packed)
        result = timed_train(args_list[3:])
        atomic_write_text(Path(args_list[1]), json.dumps(result) + "\n")
        return result["exit status"]
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
    parser.add_argument("--images", type=int, default=None, help="generated JPEGs (default 5200; dry run 24)")
    parser.add_argument(
        "--budget", type=float, default=330, help="seconds after which the packed runs left are skipped"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure (end_to_end needs steps)",
    )
    parser.add_argument("--packed", type=int, nargs="+", help="runs at once to measure (default 1 2 4)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 2
    device, sizes = Device(args.dry_run), DRY_RUN if args.dry_run else Sizes()
    if args.images:
        sizes = dataclasses.replace(sizes, images=args.images)
    if args.packed:
        sizes = dataclasses.replace(sizes, packed=tuple(args.packed))
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
    """Measure everything, writing the results after each part; returns 1 when a check failed."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rmnet-gpu-check-") as tmp:
        work = Path(tmp)
        out = args.out or (work / "results" if args.dry_run else Path("results/gpu"))
        out.mkdir(parents=True, exist_ok=True)
        info, tables, extra = describe(device), {}, {}

        def save(name: str, table: pd.DataFrame) -> None:
            tables[name] = table
            atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
            info["check wall seconds"] = f"{time.perf_counter() - started:.0f}"
            atomic_write_text(out / "gpu_check.md", report(info, tables, extra, sizes, argv))
            print(
                f"gpu_check: {name} ({time.perf_counter() - started:.0f} s)\n{markdown_table(table)}",
                flush=True,
            )

        print(f"gpu_check on {info['device']}: {', '.join(args.parts)} …", flush=True)
        if "steps" in args.parts:
            save("steps", measure_steps(device, sizes))
        data, cache = work / "isic2019", work / "cache"
        made = time.perf_counter()
        make_isic_fixture(data, sizes.images, sizes.fixture_sizes, workers=os.cpu_count() or 1)
        made = time.perf_counter() - made
        prepared = prepare(data, cache, sizes.cache_edge, os.cpu_count() or 1)
        shapes = " and ".join(f"{w}×{h}" for w, h in sizes.fixture_sizes)
        extra["data"] = (
            f"{sizes.images} generated JPEGs of {shapes} in the ISIC 2019 layout ({made:.0f} s), cached by "
            f"`rmnet prepare --resize {sizes.cache_edge}` in {prepared['seconds']:.1f} s "
            f"({prepared['images/s']:.0f} images/s, exit status {prepared['exit status']})"
        )
        if "decode" in args.parts:
            extra["eval difference"] = eval_difference(device, sizes, cache)
            save("decode", measure_decoding(device, sizes, cache))
        if "end_to_end" in args.parts and "steps" in tables:
            save("end_to_end", measure_end_to_end(device, sizes, data, cache, work, tables["steps"]))
        if "packed_runs" in args.parts:
            deadline, partial = started + args.budget, functools.partial(save, "packed_runs")
            save("packed_runs", measure_packed(device, sizes, data, cache, work, deadline, partial))
        kept = "" if args.out or not args.dry_run else " (a temporary folder, removed now)"
        print(f"gpu_check: wrote {out}/{', '.join(FILES)}{kept}")
    empty = pd.DataFrame({"ok": [], "loss finite": []})
    problems = [
        f"{r['model']} {r['AMP']}: the training loss is not finite"
        for _, r in tables.get("steps", empty).iterrows()
        if not r["loss finite"]
    ]
    problems += [
        f"rmnet train {r['model']} {r['AMP']} {r['data path']} failed"
        for _, r in tables.get("end_to_end", empty).iterrows()
        if not r["ok"]
    ]
    packed = tables.get("packed_runs", empty)
    problems += [
        f"{r['runs at once']} packed runs failed" for _, r in packed.iterrows() if r.get("ok") is False
    ]
    for problem in problems:
        print(f"gpu_check: FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
