"""What RM costs beyond its k× compute: a block, RM(block) with k = 4, and the ideal ratio.

    .venv/bin/python -m benchmarks.meanout_overhead [--repeats 15]

Times are medians of interleaved repetitions in one run (the machine is shared and noisy);
writes results/meanout_overhead/table.md and table.csv.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from benchmarks import machine_description, save_table
from rmnet import RotationMeanout
from rmnet.meanout import MeanFusion

CASES = {  # name: (block factory, input shape): ResNet18's Res5 and Res7 at 224 px, batch 8
    "res5 (128→256, 28 px)": (
        lambda: BasicBlock(
            128, 256, 2, nn.Sequential(nn.Conv2d(128, 256, 1, 2, bias=False), nn.BatchNorm2d(256))
        ),
        (8, 128, 28, 28),
    ),
    "res7 (256→512, 14 px)": (
        lambda: BasicBlock(
            256, 512, 2, nn.Sequential(nn.Conv2d(256, 512, 1, 2, bias=False), nn.BatchNorm2d(512))
        ),
        (8, 256, 14, 14),
    ),
}


def measure(block: nn.Module, shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Median seconds: block on B, block on 4·B, RM(block) on B, and RM's own steps alone."""
    rm = RotationMeanout(block, k=4).eval()
    group, fusion = rm.group, MeanFusion()
    x = torch.randn(shape)
    x4 = torch.cat([x] * 4)
    with torch.inference_mode():
        y4 = block(x4).unflatten(0, (4, shape[0]))
    fns = {
        "block": lambda: block(x),
        "block_on_4B": lambda: block(x4),
        "rm": lambda: rm(x),
        "expansion": lambda: torch.cat([group.act(x, g) for g in group.elements]),
        "realign_fusion": lambda: fusion(
            torch.stack([group.act(y4[g], group.inverse(g)) for g in group.elements])
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():  # interleaved, so drift hits every variant alike
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="interleaved repetitions per variant")
    parser.add_argument("--out", type=Path, default=Path("results/meanout_overhead"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name, (factory, shape) in CASES.items():
        t = measure(factory().eval(), shape, args.repeats)
        rows.append(
            {
                "block": name,
                "block ms": 1e3 * t["block"],
                "RM(block) ms": 1e3 * t["rm"],
                "RM / block": t["rm"] / t["block"],
                "ideal (block on 4·B) / block": t["block_on_4B"] / t["block"],
                "RM / block on 4·B": t["rm"] / t["block_on_4B"],
                "expansion + realignment + fusion ms": 1e3 * (t["expansion"] + t["realign_fusion"]),
            }
        )
    caption = (
        f"RM overhead, eval mode, batch 8, medians of {args.repeats} interleaved repetitions "
        f"({machine_description()})."
    )
    save_table(pd.DataFrame(rows), args.out, "table", caption)
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
