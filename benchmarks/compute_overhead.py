"""What rotation invariance costs: plain networks beside RM (k = 4 and 8) and TI-pooling.

    .venv/bin/python -m benchmarks.compute_overhead [--repeats 20] [--networks resnet18 small_cnn]

Two networks: ResNet18 with strict RM 5–8 (k = 4; k = 8 with either padding of the
interpolated copies) and TI-pooling, at 224 px (batch 4) and 64 px (batch 32); and the rotated
digits' small CNN with RM around the whole network (k = 4, k = 8) at 21 px (batch 32, one grey
channel). For each model and image size: the ideal cost ratio (floating-point operations
counted by ``torch.utils.flop_counter``) beside the measured forward and training-step time
ratios to the plain network. Every repetition runs all variants back to back (interleaved),
ratios are taken within a repetition and the median is reported, since the machine is shared
and noisy. A profile splits each model's time by operator kind (convolutions, rotations,
interpolation, padding, copies, …). Writes results/compute_overhead/overhead.{md,csv} and
profile.{md,csv}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from benchmarks import command_line, machine_description, markdown_table
from rmnet import create_model
from rmnet.io import atomic_write_text
from rmnet.meanout import RotationMeanout


@dataclass(frozen=True)
class Network:
    """One plain network and its rotation-invariant variants, timed at the given sizes."""

    models: dict[str, tuple[str, dict]]  # label: (create_model name, options); the first is plain
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    channels: int = 3
    num_classes: int = 8
    padding: dict[str, str] | None = None  # label: RM padding other than the default


NETWORKS: dict[str, Network] = {
    "resnet18": Network(
        models={
            "plain": ("resnet18", {}),
            "RM 5-8 (k=4)": ("resnet18", {"rm": "5-8", "k": 4}),
            "RM 5-8 (k=8)": ("resnet18", {"rm": "5-8", "k": 8}),
            "RM 5-8 (k=8, full padding)": ("resnet18", {"rm": "5-8", "k": 8}),
            "TI-pooling (k=4)": ("ti_pooling_resnet18", {"k": 4}),
        },
        sizes=(224, 64),
        batches=(4, 32),
        padding={"RM 5-8 (k=8, full padding)": "full"},
    ),
    "small_cnn": Network(
        models={
            "plain": ("small_cnn", {"in_chans": 1, "width": 32}),
            "RM all (k=4)": ("small_cnn", {"rm": "all", "k": 4, "in_chans": 1, "width": 32}),
            "RM all (k=8)": ("small_cnn", {"rm": "all", "k": 8, "in_chans": 1, "width": 32}),
            "RM all (k=8, full padding)": ("small_cnn", {"rm": "all", "k": 8, "in_chans": 1, "width": 32}),
        },
        sizes=(21,),
        batches=(32,),
        channels=1,
        num_classes=10,
        padding={"RM all (k=8, full padding)": "full"},
    ),
}
# Operator kinds for the profile, matched against aten op names in order; the rest is "other".
OP_KINDS = {
    "convolution": ("conv",),
    "batch norm": ("batch_norm",),
    "pooling": ("pool",),
    "rotation (rot90 = flip + transpose)": ("rot90", "flip", "transpose"),
    "interpolation (grid_sample, affine_grid)": ("grid_sampler", "affine_grid"),
    "padding": ("pad",),
    "copies (cat, stack, copy, unbind)": ("cat", "stack", "copy", "clone", "contiguous", "unbind", "split"),
}


def set_rm_padding(model: nn.Module, padding: str) -> nn.Module:
    """Set the padding of every RotationMeanout in ``model`` ("none", the default, or "full")."""
    for module in model.modules():
        if isinstance(module, RotationMeanout):
            module.padding = padding
    return model


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


def build_models(network: Network) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {}
    for label, (name, options) in network.models.items():
        model = create_model(name, num_classes=network.num_classes, **options)
        models[label] = set_rm_padding(model, (network.padding or {}).get(label, "none"))
    return models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="interleaved repetitions (default 20)")
    parser.add_argument(
        "--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS), help="default: all"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="ResNet18 image sides in pixels (default 224 64)"
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="ResNet18 batch size per size (default 4 32)"
    )
    parser.add_argument("--profile-repeats", type=int, default=5, help="profiled calls per step (default 5)")
    parser.add_argument("--out", type=Path, default=Path("results/compute_overhead"))
    args = parser.parse_args(argv)
    networks = {name: NETWORKS[name] for name in args.networks}
    if "resnet18" in networks and (args.sizes or args.batch):
        sizes = tuple(args.sizes or networks["resnet18"].sizes)
        batches = tuple(args.batch or networks["resnet18"].batches)
        if len(sizes) != len(batches):
            parser.error(f"give one --batch per --sizes entry (sizes {list(sizes)}, batches {list(batches)})")
        networks["resnet18"] = dataclasses.replace(networks["resnet18"], sizes=sizes, batches=batches)

    flops, steps, profiled_keys = {}, {}, []
    for net_name, network in networks.items():
        models = build_models(network)
        for i, (size, batch) in enumerate(zip(network.sizes, network.batches, strict=True)):
            x = torch.randn(batch, network.channels, size, size)
            for label, model in models.items():
                key = (net_name, label, size)
                flops[key] = count_flops(model, x) / batch
                steps[(*key, "forward")] = forward_step(model, x)
                steps[(*key, "training step")] = training_step(model, x)
                if i == 0:
                    profiled_keys += [(*key, "forward"), (*key, "training step")]
    samples = time_interleaved(steps, args.repeats)
    profiled = profile_by_kind({key: steps[key] for key in profiled_keys}, repeats=args.profile_repeats)

    rows = []
    for net_name, network in networks.items():
        plain = next(iter(network.models))
        for size, batch in zip(network.sizes, network.batches, strict=True):
            for label in network.models:
                key, ref = (net_name, label, size), (net_name, plain, size)
                row = {"network": net_name, "model": label, "image px": size, "batch": batch}
                row["GFLOPs / image"] = flops[key] / 1e9
                row["ideal ratio (FLOPs)"] = flops[key] / flops[ref]
                for kind in ("forward", "training step"):
                    mine = samples[(*key, kind)]
                    ratio = median_ratio(mine, samples[(*ref, kind)])
                    row[f"{kind} ms"] = 1e3 * statistics.median(mine)
                    row[f"{kind} ratio"] = ratio
                    row[f"{kind} ratio / ideal"] = ratio / row["ideal ratio (FLOPs)"]
                rows.append(row)
    profiles = [
        {"network": net, "model": label, "image px": size, "pass": kind, **ms}
        for (net, label, size, kind), ms in profiled.items()
    ]
    caption = (
        f"`{command_line('benchmarks.compute_overhead', argv)}`, "
        f"{machine_description()}. "
        f"Medians of {args.repeats} interleaved repetitions; ratios are to the plain network at the same "
        "size in the same repetition. ideal ratio = counted FLOPs (convolutions and matmuls) / the plain "
        'network\'s. RM with k = 8 rotates by 45° bilinearly: by default (padding "none") every copy keeps '
        'the map size; "full padding" zero-pads each copy to ⌈√2·side⌉ first (the paper).'
    )
    table = pd.DataFrame(rows)
    save(table, args.out, "overhead", caption)
    profile_table = pd.DataFrame(profiles)
    profile_table["total"] = profile_table[[*OP_KINDS, "other"]].sum(axis=1)
    profile_caption = (
        f"Milliseconds per call by operator kind (self CPU time, torch.profiler; median of "
        f"{args.profile_repeats} interleaved profiled calls) at each network's first size; "
        f"{machine_description()}."
    )
    save(profile_table, args.out, "profile", profile_caption, floatfmt=".1f")
    print((args.out / "overhead.md").read_text())
    print((args.out / "profile.md").read_text())


def save(table: pd.DataFrame, out_dir: Path, stem: str, caption: str, floatfmt: str = ".2f") -> None:
    """``stem``.csv (full precision) and ``stem``.md (caption + rounded table), written atomically."""
    atomic_write_text(out_dir / f"{stem}.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / f"{stem}.md", f"{caption}\n\n{markdown_table(table, floatfmt)}")


if __name__ == "__main__":
    main()
