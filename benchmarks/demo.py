"""Time `rmnet demo` from scratch and record how the plain and the RM model fare on rotated images.

    .venv/bin/python -m benchmarks.demo [--k 8] [--epochs N] [--keep DIR]

Runs the real command (`python -m rmnet demo`) in a fresh folder, so the time includes Python
start-up, generating the data, training both models, evaluating them and drawing every figure.
Writes results/demo/: table.md/.csv (accuracy upright and rotated, predictions changed by a
rotation, RM minus plain, wall time) and rotation.png (both models' accuracy against angle);
with --k 8, table-k8.* and rotation-k8.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import machine_description, save_table

OUT = Path("results/demo")
ANGLES = ("0", "90", "180", "270", "random")


def run(epochs: int | None, k: int, keep: Path | None) -> tuple[dict, float, Path]:
    """Run the demo in a new folder; returns its summary, the wall time and the folder."""
    folder = Path(tempfile.mkdtemp(prefix="rmnet-demo-")) if keep is None else keep
    if keep is not None and keep.exists():
        shutil.rmtree(keep)
    command = [sys.executable, "-m", "rmnet", "demo", "--out", str(folder), "--k", str(k)]
    command += ["--epochs", str(epochs)] if epochs else []
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    return json.loads((folder / "report/report.json").read_text()), seconds, folder


def table(summary: dict, seconds: float) -> pd.DataFrame:
    rows = []
    for model in summary["models"].values():
        row = {"model": model["label"], "parameters": model["parameters"]}
        row |= {f"accuracy {a} (%)": 100 * model["accuracy"][a] for a in ANGLES}
        row |= {f"changed {a} (%)": 100 * model["changed"][a] for a in ANGLES[1:]}
        rows.append(row)
    gap = {"model": "RM minus plain", "parameters": 0}
    gap |= {f"accuracy {a} (%)": 100 * summary["rm_minus_plain_accuracy"][a] for a in ANGLES}
    gap |= {f"changed {a} (%)": "–" for a in ANGLES[1:]}
    rows.append(gap)
    frame = pd.DataFrame(rows)
    frame["demo wall time (s)"] = seconds
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per model (default: the demo's)")
    parser.add_argument("--k", type=int, default=4, help="rotations in RM (the demo's --k)")
    parser.add_argument("--keep", type=Path, help="run the demo in this folder and keep it")
    args = parser.parse_args()
    summary, seconds, folder = run(args.epochs, args.k, args.keep)
    suffix = "" if args.k == 4 else f"-k{args.k}"
    caption = (
        f"`rmnet demo --k {args.k}` from scratch: {seconds:.0f} s wall time ({machine_description()}). "
        f"Test accuracy of the plain small CNN and the same CNN with RM (k={args.k}) over its whole trunk, "
        "upright and rotated counterclockwise; 'changed': % of test predictions that differ from the "
        "upright prediction."
    )
    save_table(table(summary, seconds), OUT, f"table{suffix}", caption, floatfmt=".1f")
    shutil.copyfile(folder / "report/rotation.png", OUT / f"rotation{suffix}.png")
    print((OUT / f"table{suffix}.md").read_text())
    if args.keep is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
