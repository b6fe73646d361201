"""Benchmarks: one command each (``python -m benchmarks.<name>``), writing tables and plots to results/."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch

from rmnet.io import atomic_write_text


def machine_description() -> str:
    """One line naming the date, CPU, thread count and library versions, for every table's caption."""
    cpu = platform.processor() or platform.machine()
    try:  # the CPU's model name where Linux says it
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, {device}, torch {torch.__version__}"
    )


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that ran ``module`` with ``argv`` (default: this process's arguments), quoted."""
    return shlex.join([".venv/bin/python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def markdown_table(table: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub Markdown table of ``table`` (index dropped), numbers formatted with ``floatfmt``."""

    def cell(value) -> str:
        return format(value, floatfmt) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(table: pd.DataFrame, out_dir: Path, stem: str, caption: str, floatfmt: str = ".2f") -> None:
    """``stem``.csv (full precision) and ``stem``.md (caption + rounded table) in ``out_dir``."""
    atomic_write_text(out_dir / f"{stem}.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / f"{stem}.md", f"{caption}\n\n{markdown_table(table, floatfmt)}")
