"""Small helpers every part shares: one atomic write, one device rule, one percent format.

Nothing heavy is imported here (torch only inside :func:`resolve_device`), so the command line
can use these without loading PyTorch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TEMPORARY_PATTERN = ".*.tmp"


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden sibling of ``path`` to write into before renaming (matches ``TEMPORARY_PATTERN``).

    The process id keeps concurrent writers (DDP ranks, two CLI calls) off each other's files.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling, then rename it to ``path``.

    The file appears whole or not at all: a crash or an exception leaves the old file (or none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a pyplot figure as PNG atomically, then close it (pyplot keeps every open figure)."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(figure)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """The device for ``device``: "auto" is CUDA when available (one GPU per torchrun rank), else CPU."""
    import torch

    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    return torch.device(device)


def format_percent(value: float | None, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage with ``digits`` decimals; "–" when missing or NaN."""
    if value is None or value != value:
        return "–"
    return f"{100 * value:.{digits}f}"


LOG_PROGRESS_INTERVAL = 30.0  # seconds between progress lines in a log file or a pipe


def progress_bar(
    iterable: Iterable, desc: str, enabled: bool = True, *, log_interval: float | None = None, **options: Any
) -> Iterable:
    """A tqdm bar on a terminal; in a log file or a pipe (no carriage-return noise there), a plain line
    every ``log_interval`` seconds (default :data:`LOG_PROGRESS_INTERVAL`), none for shorter work.

    The items always come through a tqdm object (a disabled one off a terminal): tqdm.auto's calls
    ``iter(iterable)`` when it is made, and a DataLoader draws its shuffling seed then, so a run's
    batches must not depend on whether stderr is a terminal.
    """
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    bar = tqdm(iterable, desc=desc, leave=False, disable=not (enabled and terminal), **options)
    if not enabled or terminal:
        return bar
    interval = LOG_PROGRESS_INTERVAL if log_interval is None else log_interval
    return LogProgress(bar, desc, interval=interval, total=bar.total)


class LogProgress:
    """Progress as lines for a log: "DESC: N/TOTAL (P%), S s, POSTFIX" every ``interval`` seconds.

    Iterates like the iterable; ``set_postfix`` (as tqdm's) adds values such as the running loss."""

    def __init__(self, iterable: Iterable, desc: str, *, interval: float, total: int | None = None) -> None:
        self.iterable, self.desc, self.interval = iterable, desc, interval
        self.total = total
        self.postfix = ""

    def __iter__(self):
        start = last = time.monotonic()
        for done, item in enumerate(self.iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.interval:
                print(self.line(done, now - start), file=sys.stderr, flush=True)
                last = now

    def line(self, done: int, elapsed: float) -> str:
        of = f"/{self.total} ({100 * done / self.total:.0f}%)" if self.total else ""
        return f"{self.desc}: {done}{of}, {elapsed:.0f} s" + (f", {self.postfix}" if self.postfix else "")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())
