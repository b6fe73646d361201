"""What the resize cache buys: caching speed, then loading and training speed from JPEGs vs. the cache.

    .venv/bin/python -m benchmarks.data_pipeline [--large 24 --medium 24 --passes 3]

Generates lesion JPEGs of the sizes ISIC 2019 holds (1024×1024 like BCN_20000, 600×450 like
HAM10000) in a temporary folder, caches them (short edge 256), then times the paper's train
transform at 224 px through ImageDataset + DataLoader (2 workers), alone and feeding the SGD steps
of a small CNN, from the original JPEGs and from the cache. Each figure is the best of
``--passes`` timed passes after one warm-up pass (the machine is shared and noisy). Writes
results/data_pipeline/table.md and table.csv.
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
from rmnet.models import create_model

SIZES = {"large": (1024, 1024), "medium": (600, 450)}


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


def best_rate(run_pass, images_per_pass: int, passes: int) -> float:
    """Images per second of the fastest of ``passes`` timed passes, after one warm-up pass."""
    run_pass()
    seconds = []
    for _ in range(passes):
        start = time.perf_counter()
        run_pass()
        seconds.append(time.perf_counter() - start)
    return images_per_pass / min(seconds)


def loader(table: ImageTable, batch_size: int, workers: int) -> DataLoader:
    dataset = ImageDataset(table, transform=build_transform(True, 224))
    return DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def loading_rate(table: ImageTable, batch_size: int, workers: int, passes: int) -> float:
    """Images/s through decode + train transform + batching alone."""
    batches = loader(table, batch_size, workers)
    return best_rate(lambda: [None for _ in batches], len(table), passes)


def training_rate(table: ImageTable, batch_size: int, workers: int, passes: int) -> float:
    """Images/s of SGD steps of small_cnn (width 16) fed by the loader: what an epoch sees."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=table.num_classes, width=16).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = loader(table, batch_size, workers)

    def one_epoch() -> None:
        for images, labels in batches:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return best_rate(one_epoch, len(table), passes)


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
        for source, table in (("original JPEGs", originals), ("cache", cached)):
            rate = loading_rate(table, args.batch_size, args.workers, args.passes)
            rows.append(("loading: decode + train transform 224", source, rate))
        for source, table in (("original JPEGs", originals), ("cache", cached)):
            rate = training_rate(table, args.batch_size, args.workers, args.passes)
            rows.append(("training: small_cnn SGD step, 224 px", source, rate))
        on_disk = {
            name: sum(p.stat().st_size for p in t.paths) / len(t) / 1024
            for name, t in (("original", originals), ("cache", cached))
        }

    result = pd.DataFrame(rows, columns=["stage", "images from", "images/s"])
    caption = (
        f"Data pipeline, {args.large} JPEGs of 1024×1024 and {args.medium} of 600×450 (mean file "
        f"{on_disk['original']:.0f} KiB; cached {on_disk['cache']:.0f} KiB), batch {args.batch_size}, "
        f"{args.workers} workers, best of {args.passes} passes.\n"
        f"Machine: {machine_description()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other work shares the cores).\n"
        f"Command: .venv/bin/python -m benchmarks.data_pipeline"
    )
    save_table(result, args.out, "table", caption, floatfmt=".1f")
    print(caption, result.to_string(index=False), sep="\n\n")
    return result


if __name__ == "__main__":
    main()
