"""What the resize cache and the data paths buy: caching, then loading and training speed per source.

    .venv/bin/python -m benchmarks.data_pipeline [--large 24 --medium 24 --passes 3]

Generates lesion JPEGs of the sizes ISIC 2019 holds (1024×1024 like BCN_20000, 600×450 like
HAM10000) in a temporary folder, caches them (short edge 256), then times the paper's train
transform at 224 px, alone and feeding the SGD steps of a small CNN, three ways: ImageDataset +
DataLoader (2 workers) from the original JPEGs and from the cache (data path "files", the only
one before), and from the cache decoded once into memory with the batched transform (data path
"memory", rmnet.data.in_memory; its one-time decode timed apart). Every source is timed in each
pass in turn (interleaved), so "× files from the cache" compares them under the same load. Each
figure is the best of ``--passes`` timed passes after one warm-up pass (the machine is shared and
noisy). Writes results/data_pipeline/table.md and table.csv.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks import machine_description, save_table
from rmnet.data import (
    ImageDataset,
    ImageTable,
    build_transform,
    load_image_table,
    prepare_cache,
    render_lesion,
)
from rmnet.data.in_memory import MemoryBatches, pack_dataset
from rmnet.models import create_model

SIZES = {"large": (1024, 1024), "medium": (600, 450)}
CACHE_FILES = "cache (files: today's path)"


def make_jpegs(folder: Path, counts: dict[str, int], seed: int = 0) -> ImageTable:
    """Lesion photographs at full size: drawn at 256 px, enlarged, with sensor-like noise (JPEG q 90)."""
    rng = np.random.default_rng(seed)
    kinds = ("regular", "streaks")
    for name, count in counts.items():
        for i in range(count):
            kind = kinds[i % len(kinds)]
            small = Image.fromarray(render_lesion(kind, 256, rng))
            pixels = np.asarray(small.resize(SIZES[name], Image.Resampling.BICUBIC), dtype=np.float32)
            pixels = (pixels + rng.normal(0, 4, pixels.shape)).clip(0, 255).astype(np.uint8)
            (folder / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / kind / f"{name}_{i:03d}.jpg", quality=90)
    return load_image_table(folder)


def best_rates(run_passes: dict[str, object], images_per_pass: int, passes: int) -> dict[str, float]:
    """Images per second of the fastest of ``passes`` timed passes of each, after one warm-up pass
    each; the passes of all take turns, so each sees the same load on a shared machine."""
    for run_pass in run_passes.values():
        run_pass()
    seconds: dict[str, list[float]] = {name: [] for name in run_passes}
    for _ in range(passes):
        for name, run_pass in run_passes.items():
            start = time.perf_counter()
            run_pass()
            seconds[name].append(time.perf_counter() - start)
    return {name: images_per_pass / min(times) for name, times in seconds.items()}


def batches(table: ImageTable, batch_size: int, workers: int, data_path: str):
    """What rmnet.train iterates: a DataLoader over the files, or batches from images in memory."""
    dataset = ImageDataset(table, transform=build_transform(True, 224))
    if data_path == "memory":
        packed = pack_dataset(dataset, workers=workers, progress=False)
        return MemoryBatches(packed, dataset.transform.recipe, batch_size, shuffle=True)
    return DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def loading_pass(source) -> object:
    """One pass through decode (files) + train transform + batching alone."""
    return lambda: [None for _ in source]


def training_pass(source, num_classes: int) -> object:
    """One pass of SGD steps of small_cnn (width 16) fed by ``source``: what an epoch sees."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=num_classes, width=16).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def one_epoch() -> None:
        for images, labels in source:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return one_epoch


def main(argv: list[str] | None = None) -> pd.DataFrame:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--large", type=int, default=24, help="number of 1024×1024 JPEGs")
    parser.add_argument("--medium", type=int, default=24, help="number of 600×450 JPEGs")
    parser.add_argument("--passes", type=int, default=3, help="timed passes (the best one counts)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers and cache processes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("results/data_pipeline"))
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        originals = make_jpegs(Path(tmp) / "jpegs", {"large": args.large, "medium": args.medium})
        start = time.perf_counter()
        cached = prepare_cache(originals, Path(tmp) / "cache", short_edge=256, workers=args.workers)
        cache_seconds = time.perf_counter() - start
        rows.append(("prepare_cache (short edge 256)", "JPEGs → cache", len(originals) / cache_seconds))
        start = time.perf_counter()
        memory = batches(cached, args.batch_size, args.workers, "memory")
        decode_rate = len(cached) / (time.perf_counter() - start)
        rows.append(("decode into memory, once (data path memory)", "cache", decode_rate))
        sources = {
            "original JPEGs (files)": batches(originals, args.batch_size, args.workers, "files"),
            CACHE_FILES: batches(cached, args.batch_size, args.workers, "files"),
            "cache, in memory (memory)": memory,
        }
        stages = {
            "loading: train transform 224": {name: loading_pass(s) for name, s in sources.items()},
            "training: small_cnn SGD step, 224 px": {
                name: training_pass(s, cached.num_classes) for name, s in sources.items()
            },
        }
        for stage, passes in stages.items():
            rates = best_rates(passes, len(cached), args.passes)
            rows += [(stage, name, rate, rate / rates[CACHE_FILES]) for name, rate in rates.items()]
        on_disk = {
            name: sum(p.stat().st_size for p in t.paths) / len(t) / 1024
            for name, t in (("original", originals), ("cache", cached))
        }

    columns = ["stage", "images from (data path)", "images/s", "× files from the cache"]
    result = pd.DataFrame([row + (float("nan"),) * (4 - len(row)) for row in rows], columns=columns)
    caption = (
        f"Data pipeline, {args.large} JPEGs of 1024×1024 and {args.medium} of 600×450 (mean file "
        f"{on_disk['original']:.0f} KiB; cached {on_disk['cache']:.0f} KiB), batch {args.batch_size}, "
        f"{args.workers} workers, best of {args.passes} interleaved passes.\n"
        f"Machine: {machine_description()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other work shares the cores).\n"
        f"Command: .venv/bin/python -m benchmarks.data_pipeline"
    )
    save_table(result, args.out, "table", caption, floatfmt=".2f")
    print(caption, result.to_string(index=False), sep="\n\n")
    return result


if __name__ == "__main__":
    main()
