"""A contact sheet: a few images of every class in one PNG, to see what a data set looks like."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rmnet.data.images import open_rgb
from rmnet.data.table import ImageTable
from rmnet.io import atomic_write


def save_contact_sheet(table: ImageTable, path: str | os.PathLike, per_class: int = 8, seed: int = 0) -> Path:
    """Write a grid with one row per class and ``per_class`` random images of it; returns ``path``."""
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(table.labels == c))[:per_class] for c in range(table.num_classes)]
    figure = Figure(figsize=(1.2 * per_class + 1, 1.2 * len(rows)))
    axes = figure.subplots(len(rows), per_class, squeeze=False)
    for c, (members, row_axes) in enumerate(zip(rows, axes, strict=True)):
        for ax, index in zip(row_axes, [*members, *[None] * per_class], strict=False):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
            if index is not None:
                ax.imshow(open_rgb(table.paths[index]))
        row_axes[0].set_ylabel(table.class_names[c], rotation=0, ha="right", va="center")
    figure.tight_layout()
    return atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
