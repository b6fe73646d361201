"""The paper's Table 11 on the embedded lesion data: each hashing objective with and without a
classifier term (``ce_weight`` 1 and 0), same network, mAP@10 / mRR@10 over 3 seeds.

    .venv/bin/python -m benchmarks.hashing_losses [--seeds 0 1 2] [--epochs 10]

The network is the small CNN with RM around its whole trunk (k = 4) and a 16-bit hash layer,
trained from scratch on generated lesion-like images; the database is the training split and the
queries the test split, ranked by cosine distance (the paper's protocol, SPEC §5). DCH, DPN and
CSQ as published have no classifier term (``ce_weight=0``, rmnet's default); with ``ce_weight=1``
they also train the classifier with the weighted cross-entropy. CRI always has it, and "wce" is the
paper's own retrieval model (the weighted cross-entropy alone, codes from the hash layer).
Writes results/hashing_losses/: table.md/.csv (mean ± SD) and runs.csv (every run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import command_line, machine_description, save_table
from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset
from rmnet.retrieval.evaluation import retrieval_report
from rmnet.runs import Run
from rmnet.train import train

OUT = Path("results/hashing_losses")
# (row name, loss, loss options)
VARIANTS = [
    ("wce (the paper's retrieval model)", "wce", {}),
    ("DCH, published (no classifier term)", "dch", {"ce_weight": 0.0}),
    ("DCH + weighted CE", "dch", {"ce_weight": 1.0}),
    ("DPN, published (no classifier term)", "dpn", {"ce_weight": 0.0}),
    ("DPN + weighted CE", "dpn", {"ce_weight": 1.0}),
    ("CSQ, published (no classifier term)", "csq", {"ce_weight": 0.0}),
    ("CSQ + weighted CE", "csq", {"ce_weight": 1.0}),
    ("CRI (weighted CE + Cauchy rotation term)", "cri", {}),
]


def run_one(data: Path, folder: Path, loss: str, options: dict, seed: int, epochs: int) -> dict:
    config = TrainConfig(
        arch="small_cnn", rm="all", hash_bits=16, loss=loss, loss_options=options, data=str(data),
        image_size=28, resize=32, epochs=epochs, lr_step=max(1, epochs * 2 // 3), batch_size=32, lr=0.02,
        seed=seed, workers=0, device="cpu", model_options={"width": 16},
        # Without a classifier term the logits say nothing: pick the final model.
        val_metric="loss",
    )  # fmt: skip
    started = time.perf_counter()
    train(config, folder, progress=False)
    seconds = time.perf_counter() - started
    run = Run(folder, checkpoint="last")
    report = retrieval_report(
        run.load_model(), run.dataset("train"), run.dataset("test"), angles=(0,), device="cpu", progress=False
    )
    cosine = next(r for r in report["results"] if r["metric"] == "cosine")
    return {"map_at_10": cosine["map_at_k"], "mrr_at_10": cosine["mrr_at_k"], "train_seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=60, help="generated images per class")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rmnet-hashing-") as tmp:
        data = make_lesion_dataset(Path(tmp) / "data", n_per_class=args.per_class, size=32, num_classes=6)
        for i, (name, loss, options) in enumerate(VARIANTS):
            for seed in args.seeds:
                result = run_one(data, Path(tmp) / f"run-{i}-{seed}", loss, options, seed, args.epochs)
                rows.append({"method": name, "seed": seed, **result})
                print(f"{name}, seed {seed}: mAP@10 {100 * result['map_at_10']:.1f}", flush=True)
    runs = pd.DataFrame(rows)
    stats = runs.groupby("method", sort=False).agg(["mean", "std"])
    table = pd.DataFrame(
        {
            "method": stats.index,
            "mAP@10 (%)": [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in stats["map_at_10"].to_numpy()],
            "mRR@10 (%)": [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in stats["mrr_at_10"].to_numpy()],
            "train s (mean)": [f"{m:.0f}" for m in stats["train_seconds"]["mean"]],
        }
    )
    minutes = (time.perf_counter() - started) / 60
    caption = (
        f"`{command_line('benchmarks.hashing_losses', argv)}` ({minutes:.0f} min; {machine_description()}). "
        f"Small CNN with RM (k = 4) over its whole trunk and a 16-bit hash layer, {args.epochs} epochs from "
        f"scratch on {6 * args.per_class} generated lesion images (6 classes, split 8:1:1); mean ± SD over "
        f"seeds {args.seeds}; database = training split, queries = test split, cosine ranking, last epoch."
    )
    save_table(table, OUT, "table", caption)
    save_table(runs, OUT, "runs", caption, floatfmt=".4f")
    print((OUT / "table.md").read_text())


if __name__ == "__main__":
    main()
