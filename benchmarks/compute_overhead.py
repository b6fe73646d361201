"""What rotation invariance costs: ResNet18 plain, with strict RM 5–8 and with TI-pooling (k = 4).

    .venv/bin/python -m benchmarks.compute_overhead [--repeats 20]

For each model and image size: the ideal cost ratio (floating-point operations counted by
``torch.utils.flop_counter``) beside the measured forward and training-step time ratios to the
plain network. Every repetition runs all variants back to back (interleaved), ratios are taken
within a repetition and the median is reported, since the machine is shared and noisy. A
profile splits each model's time by operator kind (convolutions, rotations, copies, …).
Writes results/compute_overhead/overhead.{md,csv} and profile.{md,csv}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from benchmarks import command_line, machine_description, save_table
from rmnet import create_model

MODELS: dict[str, tuple[str, dict]] = {  # label: (create_model name, options)
    "plain": ("resnet18", {}),
    "RM 5-8 (k=4)": ("resnet18", {"rm": "5-8", "k": 4}),
    "TI-pooling (k=4)": ("ti_pooling_resnet18", {"k": 4}),
}
# Operator kinds for the profile, matched against aten op names in order; the rest is "other".
OP_KINDS = {
    "convolution": ("conv",),
    "batch norm": ("batch_norm",),
    "pooling": ("pool",),
    "rotation (rot90 = flip + transpose)": ("rot90", "flip", "transpose"),
    "copies (cat, stack, copy, unbind)": ("cat", "stack", "copy", "clone", "contiguous", "unbind", "split"),
}


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of one forward pass (2 per multiply-add), convolutions and matmuls."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def forward_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Inference: eval mode, no autograd."""

    def step() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    return step


def training_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward, cross-entropy, backward and an SGD update, in train mode."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    targets = torch.zeros(x.shape[0], dtype=torch.long)

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_interleaved(steps: dict[tuple, Callable[[], None]], repeats: int) -> dict[tuple, list[float]]:
    """Seconds per call of every step, ``repeats`` times; each round runs all steps in a rotated order."""
    keys = list(steps)
    for key in keys * 2:  # warm-up: allocator, oneDNN kernel selection
        steps[key]()
    samples: dict[tuple, list[float]] = defaultdict(list)
    for r in tqdm(range(repeats), desc="interleaved repetitions"):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            start = time.perf_counter()
            steps[key]()
            samples[key].append(time.perf_counter() - start)
    return samples


def median_ratio(samples: list[float], reference: list[float]) -> float:
    """Median over repetitions of the time ratio to the reference measured in the same repetition."""
    return statistics.median(m / r for m, r in zip(samples, reference, strict=True))


def profile_by_kind(
    steps: dict[tuple, Callable[[], None]], repeats: int = 5
) -> dict[tuple, dict[str, float]]:
    """Milliseconds per call of each operator kind (self CPU time of the aten ops) for every step:
    one profiled call per step per round, interleaved like the timings, medians over the rounds."""
    kinds = [*OP_KINDS, "other"]
    samples: dict[tuple, dict[str, list[float]]] = {key: {kind: [] for kind in kinds} for key in steps}
    for _ in tqdm(range(repeats), desc="profiling"):
        for key, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            totals = dict.fromkeys(kinds, 0.0)
            for event in prof.key_averages():
                if event.key.startswith("aten::"):
                    op = event.key.removeprefix("aten::")
                    kind = next((k for k, words in OP_KINDS.items() if any(w in op for w in words)), "other")
                    totals[kind] += event.self_cpu_time_total / 1e3
            for kind, ms in totals.items():
                samples[key][kind].append(ms)
    return {
        key: {kind: statistics.median(v) for kind, v in per_kind.items()} for key, per_kind in samples.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="interleaved repetitions (default 20)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[224, 64], help="image sides in pixels (default 224 64)"
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[4, 32], help="batch size for each size (default 4 32)"
    )
    parser.add_argument("--out", type=Path, default=Path("results/compute_overhead"))
    args = parser.parse_args(argv)
    if len(args.batch) != len(args.sizes):
        parser.error(f"give one --batch per --sizes entry (sizes {args.sizes}, batches {args.batch})")
    torch.manual_seed(0)
    models = {label: create_model(name, num_classes=8, **opts) for label, (name, opts) in MODELS.items()}

    flops, steps = {}, {}
    for size, batch in zip(args.sizes, args.batch, strict=True):
        x = torch.randn(batch, 3, size, size)
        for label, model in models.items():
            flops[label, size] = count_flops(model, x) / batch
            steps[label, size, "forward"] = forward_step(model, x)
            steps[label, size, "training step"] = training_step(model, x)
    samples = time_interleaved(steps, args.repeats)
    profiled = profile_by_kind({key: step for key, step in steps.items() if key[1] == args.sizes[0]})
    profiles = [{"model": label, "pass": kind, **ms} for (label, _, kind), ms in profiled.items()]

    rows = []
    for size, batch in zip(args.sizes, args.batch, strict=True):
        for label in models:
            row = {"model": label, "image px": size, "batch": batch}
            row["GFLOPs / image"] = flops[label, size] / 1e9
            row["ideal ratio (FLOPs)"] = flops[label, size] / flops["plain", size]
            for kind in ("forward", "training step"):
                mine = samples[label, size, kind]
                ratio = median_ratio(mine, samples["plain", size, kind])
                row[f"{kind} ms"] = 1e3 * statistics.median(mine)
                row[f"{kind} ratio"] = ratio
                row[f"{kind} ratio / ideal"] = ratio / row["ideal ratio (FLOPs)"]
            rows.append(row)
    caption = (
        f"`{command_line('benchmarks.compute_overhead', argv)}`, "
        f"{machine_description()}. "
        f"Medians of {args.repeats} interleaved repetitions; ratios are to the plain ResNet18 in the "
        "same repetition. ideal ratio = counted FLOPs (convolutions and matmuls) / the plain network's."
    )
    save_table(pd.DataFrame(rows), args.out, "overhead", caption)
    profile_table = pd.DataFrame(profiles)
    profile_table["total"] = profile_table[[*OP_KINDS, "other"]].sum(axis=1)
    profile_caption = (
        f"Milliseconds per call by operator kind (self CPU time, torch.profiler; median of 5 interleaved "
        f"profiled calls), {args.sizes[0]} px, "
        f"batch {args.batch[0]}; {machine_description()}."
    )
    save_table(profile_table, args.out, "profile", profile_caption, floatfmt=".1f")
    print((args.out / "overhead.md").read_text())
    print((args.out / "profile.md").read_text())


if __name__ == "__main__":
    main()
