"""Option spellings shared by every ``rmnet`` command (argparse only: imported by ``rmnet --help``).

One vocabulary: the run folder a command reads is its first positional argument (RUN); ``--index``
is an index folder, read or written; ``--out`` a folder a command writes; ``--workers`` the
data-loading worker processes (default :data:`DEFAULT_WORKERS` everywhere); ``--on-error`` one of
:data:`ON_ERROR`. Old spellings keep working through :class:`DeprecatedOption`, with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # = TrainConfig.workers
ON_ERROR = ("raise", "skip")


class DeprecatedOption(argparse.Action):
    """An old option that still works: stores its value like ``replacement`` and says, on one line on
    stderr, which spelling to use instead. Hidden from ``--help``."""

    def __init__(self, option_strings: list[str], dest: str, *, replacement: str, **kwargs: Any) -> None:
        self.replacement = replacement
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"rmnet: warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_on_error(parser: argparse._ActionsContainer, help: str, default: str | None = "raise") -> None:
    """``--on-error raise|skip``, checked by argparse."""
    parser.add_argument("--on-error", choices=ON_ERROR, default=default, help=help)


def add_workers(parser: argparse._ActionsContainer, help: str = "data-loading worker processes") -> None:
    """``--workers N``: processes that read images, with the one default."""
    parser.add_argument(
        "--workers", type=_count, default=DEFAULT_WORKERS, help=f"{help} (default: {DEFAULT_WORKERS})"
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
