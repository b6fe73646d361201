"""One run of the grid: train (or resume, or skip when trained), then evaluate, through the CLI.

    python -m rmnet.reproduce.job JOB.json      (what the local scheduler and SLURM run)

A run is finished when its ``report/report.json`` exists; trained when its metrics.csv has as
many epochs as its config asks; interrupted when it has a ``checkpoints/last.pt`` (then
``rmnet train --resume`` continues it). The same function runs in this process on a CPU-only
machine and in a subprocess (or a SLURM job) per run on GPUs.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPORT = Path("report") / "report.json"


@dataclass(frozen=True)
class Job:
    """What one run needs: its folder, the ``rmnet train`` and ``rmnet evaluate`` options."""

    run_dir: str
    train_args: tuple[str, ...]  # with --data and --seed, without --out / --resume
    evaluate_args: tuple[str, ...] | None  # None: train only
    memory_mib: int = 0  # estimated peak GPU memory, for packing runs onto one GPU
    name: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        values = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def run_state(run_dir: str | Path) -> str:
    """ "finished", "trained", "interrupted" or "new" (reads files only: no torch)."""
    run_dir = Path(run_dir)
    if (run_dir / REPORT).is_file():
        return "finished"
    config, metrics = run_dir / "config.json", run_dir / "metrics.csv"
    if config.is_file() and metrics.is_file():
        epochs = json.loads(config.read_text())["epochs"]
        if len(metrics.read_text().strip().splitlines()) - 1 >= epochs:
            return "trained"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "interrupted"
    return "new"


def run_job(job: Job) -> str:
    """Bring ``job`` to "finished"; returns the state it started in. Raises when a command fails."""
    from rmnet.cli import EXIT_INTERRUPTED, main

    def rmnet(argv: list[str], what: str) -> None:
        code = main(argv)
        if code == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if code != 0:
            raise RuntimeError(f"{what} {job.run_dir} failed: rmnet {' '.join(argv)}")

    state = run_state(job.run_dir)
    if state in ("new", "interrupted"):
        argv = ["train", *job.train_args, "--out", job.run_dir, "--quiet"]
        rmnet(argv + ["--resume"] * (state == "interrupted"), "training")
    if job.evaluate_args is not None and state != "finished":
        rmnet(["evaluate", job.run_dir, *job.evaluate_args], "evaluating")
    return state


if __name__ == "__main__":
    run_job(Job.from_json(Path(sys.argv[1]).read_text()))
