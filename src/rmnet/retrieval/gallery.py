"""A gallery picture of one search: the query, its predicted diagnosis, and the retrieved cases.

Each tile shows the original image when it can be read, else the resized copy the index was
built from (``Hit.cached_path``), else a grey square with a note saying so. A legend explains
the title colours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from rmnet.data.images import UnreadableImageError, open_rgb  # noqa: E402
from rmnet.io import save_figure  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from rmnet.retrieval.search import SearchResult

_MATCH, _OTHER = "#1a7f37", "#b42318"  # result class equal to / different from the predicted one
LEGEND = ("same class as the predicted diagnosis", "another class")
UNREADABLE_NOTE = "image not readable"


def save_gallery(
    result: SearchResult,
    path: str | os.PathLike,
    *,
    columns: int = 5,
    thumbnail: int = 192,
    query_image: Image.Image | None = None,
) -> Path:
    """Write a PNG (atomically): the query on the first row, the results below, each titled with
    class and distance, green when a result's class is the predicted diagnosis, red otherwise.

    ``query_image`` draws a query that is not a file (one searched for as bytes).
    """
    fig = gallery_figure(result, columns=columns, thumbnail=thumbnail, query_image=query_image)
    return save_figure(fig, path, dpi=100)


def gallery_figure(
    result: SearchResult, *, columns: int = 5, thumbnail: int = 192, query_image: Image.Image | None = None
) -> Figure:
    """The gallery as a matplotlib figure (the caller closes it)."""
    columns = max(1, min(columns, len(result.hits)))
    rows = 1 + math.ceil(len(result.hits) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    query = axes[0, 0]
    if query_image is not None:
        query_image = query_image.convert("RGB")
        query_image.thumbnail((thumbnail, thumbnail))
        _draw(query, np.asarray(query_image), thumbnail)
    else:
        _draw(query, _thumbnail([result.query], thumbnail), thumbnail)
    name = Path(str(result.query)).name
    query.set_title(
        f"query: {name}\npredicted {result.predicted_class} (p={result.probability:.2f})",
        fontsize=9,
        loc="left",
    )
    for hit, ax in zip(result.hits, axes[1:].flat, strict=False):
        _draw(ax, _thumbnail([hit.path, hit.cached_path], thumbnail), thumbnail)
        distance = f"{hit.distance:.0f}" if result.metric == "hamming" else f"{hit.distance:.4f}"
        colour = _MATCH if hit.class_name == result.predicted_class else _OTHER
        ax.set_title(
            f"{hit.rank}. {hit.class_name} · {result.metric} {distance}\n{hit.image_id}",
            fontsize=8,
            color=colour,
        )
    handles = [Patch(color=_MATCH, label=LEGEND[0]), Patch(color=_OTHER, label=LEGEND[1])]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False, title="result titles")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _draw(ax, pixels: np.ndarray | None, size: int) -> None:
    """Show a tile, or a grey square with a note when no file of it could be read."""
    if pixels is None:
        ax.imshow(np.full((size, size, 3), 200, dtype=np.uint8))
        ax.text(0.5, 0.5, UNREADABLE_NOTE, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    else:
        ax.imshow(pixels)


def _thumbnail(paths: Sequence[str | os.PathLike | None], size: int) -> np.ndarray | None:
    """The first readable image of ``paths`` shrunk to fit ``size``; None when none is readable."""
    for path in paths:
        if path is None:
            continue
        try:
            image = open_rgb(path)
        except UnreadableImageError:
            continue
        image.thumbnail((size, size))
        return np.asarray(image)
    return None
