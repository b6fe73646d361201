"""The command behind ``rmnet reproduce``: plan the chosen tables, run what is not finished, write
the tables. Run it again after an interruption: finished runs are skipped, interrupted ones resume."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from rmnet.report import markdown_table
from rmnet.reproduce.estimate import ASSUMPTIONS, estimate
from rmnet.reproduce.job import Job, run_state
from rmnet.reproduce.plan import SEEDS, TABLES, Experiment, Plan, build_plan, smoke_subset
from rmnet.reproduce.tables import run_dir, write_tables

EXECUTORS = ("local", "slurm", "submitit-local")
SMOKE_EVALUATE = ("--angles", "90", "--sweep-step", "360", "--batch-size", "16", "--workers", "0")
EVALUATE = ("--no-tsne", "--quiet")


def smoke_options(experiment: Experiment) -> tuple[str, ...]:
    """Tiny sizes for ``--smoke``: random weights, the architecture's smallest input, one epoch."""
    from rmnet.models import model_entry

    size = max(32, model_entry(experiment.arch).min_input_size)
    return ("--pretrained", "none", "--image-size", str(size), "--resize", str(size * 8 // 7),
            "--epochs", "1", "--batch-size", "8", "--workers", "0")  # fmt: skip


def make_job(
    experiment: Experiment, seed: int, data: str, out: Path, smoke: bool, extra: Sequence[str]
) -> Job:
    train = (*experiment.args, "--data", data, "--seed", str(seed), *extra)
    train += smoke_options(experiment) if smoke else ()
    evaluate = EVALUATE + (SMOKE_EVALUATE if smoke else ())
    name = f"{experiment.key}/seed-{seed}"
    path = str(run_dir(out, experiment, seed))
    return Job(path, train, evaluate, estimate(experiment).memory_mib, name)


def plan_markdown(plan: Plan, out: Path | None = None) -> str:
    """``--dry-run``: every run with its estimated GPU time, and the totals."""
    rows, total = [], 0.0
    for experiment, seed in plan.runs():
        cost = estimate(experiment)
        total += cost.gpu_seconds
        state = run_state(run_dir(out, experiment, seed)) if out is not None else "new"
        tables = sorted({r.table for r in plan.rows if experiment.key in r.candidates})
        hours = f"{cost.gpu_seconds / 3600:.2f}"
        command = "rmnet train " + " ".join(experiment.args)
        where = ", ".join(map(str, tables))
        rows.append([experiment.key, seed, where, state, hours, cost.memory_mib, command])
    header = ["experiment", "seed", "tables", "state", "GPU h (est.)", "GPU MiB (est.)", "command"]
    lines = [
        f"# rmnet reproduce: Tables {', '.join(map(str, plan.tables))}, "
        f"seeds {' '.join(map(str, plan.seeds))}",
        "",
        f"**{len(rows)} runs ({len(plan.experiments)} configurations), about {total / 3600:.1f} GPU hours** "
        "on one NVIDIA H200 (rates measured 2026-12-04, shared/measurements/gpu-2026-12-04/; whole "
        "ISIC 2019 training set, the paper's epochs).",
        "",
        "Estimated where not measured: " + "; ".join(ASSUMPTIONS) + ".",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def reproduce(
    data: str | None,
    out: str | os.PathLike,
    tables: Sequence[int] = TABLES,
    seeds: Sequence[int] = SEEDS,
    *,
    dry_run: bool = False,
    smoke: bool = False,
    executor: str = "local",
    per_gpu: int = 4,
    partition: str | None = None,
    train_args: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> Plan:
    """Plan ``tables`` × ``seeds``; unless ``dry_run``, run every unfinished run and write the tables
    (ChildProcessError at the end, the tables written, when a run failed)."""
    from rmnet.reproduce import runner

    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    out = Path(out)
    plan = build_plan(tables, seeds)
    if dry_run:
        log(plan_markdown(plan, out))
        return plan
    if data is None:
        raise ValueError("rmnet reproduce needs --data (the ISIC 2019 folder), or --dry-run")
    from rmnet.data import load_image_table

    load_image_table(data)  # a missing or malformed data folder: one clear error, before any run starts
    data = str(Path(data).resolve())
    chosen = smoke_subset(plan) if smoke else set(plan.experiments)
    jobs = [make_job(e, s, data, out, smoke, train_args) for e, s in plan.runs() if e.key in chosen]
    pending = [job for job in jobs if run_state(job.run_dir) != "finished"]
    log(f"{len(jobs)} runs, {len(jobs) - len(pending)} already finished, {len(pending)} to run")
    if pending:
        if executor == "local":
            gpus = runner.local_gpus()
            status = (
                runner.run_on_gpus(pending, gpus, per_gpu=per_gpu, log=log)
                if gpus
                else runner.run_here(pending, log)
            )
        else:
            cluster = "local" if executor == "submitit-local" else None
            status = runner.submit(pending, out / "submitit", cluster=cluster, partition=partition, log=log)
        failed = sorted(name for name, code in status.items() if code != 0)
    else:
        failed = []
    paths = write_tables(plan, out, smoke=smoke)  # what finished, also when some runs failed
    log(f"tables: {', '.join(str(p) for p in paths)}")
    if failed:
        raise ChildProcessError(
            f"{len(failed)} runs failed (the errors are above; on GPUs each run's output is in the .log "
            f"file beside its folder under {out / 'runs'}); run the command again to retry them: "
            f"{', '.join(failed)}"
        )
    return plan
