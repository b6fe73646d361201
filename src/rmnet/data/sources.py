"""One door to every data source: ``load_image_table(source)`` recognises the layout."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rmnet.data.folders import load_class_folders, load_csv_list
from rmnet.data.isic import GROUND_TRUTH_NAME, find_isic_csv, is_isic_ground_truth, load_isic2019
from rmnet.data.table import ImageTable


def load_image_table(
    source: str | os.PathLike,
    *,
    ground_truth: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> ImageTable:
    """Load an ISIC 2019 folder, a folder with one sub-folder per class, or a CSV of ``path,label``.

    ISIC is recognised by ``ground_truth`` or by ``ISIC_2019_Training_GroundTruth.csv`` in the folder
    or its parent; ``source`` may also be the ground-truth CSV itself. ``class_names`` fixes the
    classes and their order (e.g. a trained model's), and an image of any other class is an error.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"data source {source} does not exist")
    if source.is_file() and source.suffix.lower() == ".csv":
        if ground_truth is None and is_isic_ground_truth(source):
            table = load_isic2019(source.parent, source, metadata)
        else:
            table = load_csv_list(source)
    elif source.is_file():
        raise ValueError(
            f"data source {source} is a file but not a CSV; give a folder or a CSV of path,label"
        )
    elif ground_truth is not None or find_isic_csv(source, GROUND_TRUTH_NAME) is not None:
        table = load_isic2019(source, ground_truth, metadata)
    else:
        table = load_class_folders(source)
    if class_names is None:
        return table
    try:
        return table.with_classes(class_names)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
