"""A gallery picture of one search: the query, its predicted diagnosis, and the retrieved cases."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
import numpy as np  # noqa: E402

from rmnet.data.images import UnreadableImageError, open_rgb  # noqa: E402
from rmnet.retrieval.search import SearchResult  # noqa: E402

_MATCH, _OTHER = "#1a7f37", "#b42318"  # result class equal to / different from the predicted one


def save_gallery(
    result: SearchResult, path: str | os.PathLike, *, columns: int = 5, thumbnail: int = 192
) -> Path:
    """Write a PNG: the query on the first row, the results below, each titled with class and distance.

    Titles are green when a result's class is the predicted diagnosis, red otherwise.
    """
    path = Path(path)
    columns = max(1, min(columns, len(result.hits)))
    rows = 1 + math.ceil(len(result.hits) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    query = axes[0, 0]
    query.imshow(_thumbnail(result.query, thumbnail))
    query.set_title(
        f"query: {result.query.name}\npredicted {result.predicted_class} (p={result.probability:.2f})",
        fontsize=9,
        loc="left",
    )
    for hit, ax in zip(result.hits, axes[1:].flat, strict=False):
        ax.imshow(_thumbnail(hit.path, thumbnail))
        distance = f"{hit.distance:.0f}" if result.metric == "hamming" else f"{hit.distance:.4f}"
        colour = _MATCH if hit.class_name == result.predicted_class else _OTHER
        ax.set_title(
            f"{hit.rank}. {hit.class_name} · {result.metric} {distance}\n{hit.image_id}",
            fontsize=8,
            color=colour,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _thumbnail(path: str | os.PathLike | None, size: int) -> np.ndarray:
    """The image at ``path`` shrunk to fit ``size``, or a grey square when it cannot be read."""
    try:
        if path is None:
            raise UnreadableImageError("no file recorded")
        image = open_rgb(path)
    except UnreadableImageError:
        return np.full((size, size, 3), 200, dtype=np.uint8)
    image.thumbnail((size, size))
    return np.asarray(image)
