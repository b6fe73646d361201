"""A user's own images: a folder with one sub-folder per class, or a CSV of ``path,label``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from rmnet.data.images import IMAGE_EXTENSIONS, is_image_file
from rmnet.data.table import ImageTable


def load_class_folders(root: str | os.PathLike) -> ImageTable:
    """Every image under ``root/<class>/`` (sub-folders included); ids are paths relative to ``root``.

    Classes are the folder names, sorted. Hidden files are ignored, other non-image files skipped
    with a warning; a class folder without images is an error.
    """
    root = Path(root)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(
            f"{root} has no class sub-folders; expected one folder per class, the ISIC 2019 layout, "
            "or a CSV of path,label"
        )
    classes = _sorted_classes(folders)
    ids, paths, labels, skipped = [], [], [], []
    for name in folders:
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not _hidden(p, root))
        images = [p for p in files if is_image_file(p)]
        skipped += [p for p in files if not is_image_file(p)]
        if not images:
            raise ValueError(
                f"class folder {root / name} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        ids += [p.relative_to(root).with_suffix("").as_posix() for p in images]
        paths += images
        labels += [classes.index(name)] * len(images)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} files that are not images under {root}: "
            f"{', '.join(str(p.relative_to(root)) for p in skipped[:3])}",
            stacklevel=3,
        )
    return ImageTable(ids, paths, np.array(labels), classes)


def load_csv_list(csv: str | os.PathLike) -> ImageTable:
    """A CSV with columns ``path,label`` (paths relative to the CSV's folder, or absolute).

    Classes are the labels, sorted. Optional columns: ``id`` (else the path without its
    extension), ``lesion_id`` (the group); any other column becomes metadata.
    """
    csv = Path(csv)
    frame = pd.read_csv(csv, dtype={"path": str, "label": str, "id": str, "lesion_id": str})
    frame.columns = frame.columns.str.strip()
    for column in ("path", "label"):
        if column not in frame.columns:
            raise ValueError(
                f"image list {csv} is missing column {column!r} (found: {', '.join(frame.columns)})"
            )
    for column in ("path", "label"):
        empty = np.flatnonzero(frame[column].isna().to_numpy())
        if len(empty):
            raise ValueError(f"image list {csv}: row {empty[0] + 2} has no {column}")

    paths = [p if p.is_absolute() else csv.parent / p for p in map(Path, frame["path"].str.strip())]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(
            f"{len(missing)} images listed in {csv} do not exist: {', '.join(missing[:3])}{more}; "
            "restore them or remove their rows from the CSV"
        )
    not_images = [str(p) for p in paths if not is_image_file(p)]
    if not_images:
        raise ValueError(f"image list {csv} names files that are not images: {', '.join(not_images[:3])}")

    label_text = frame["label"].str.strip()
    classes = _sorted_classes(set(label_text))
    ids = (
        frame["id"] if "id" in frame.columns else [Path(p).with_suffix("").as_posix() for p in frame["path"]]
    )
    groups = [None if pd.isna(g) else g for g in frame["lesion_id"]] if "lesion_id" in frame.columns else []
    extra = frame.drop(columns=["path", "label", "id", "lesion_id"], errors="ignore")
    return ImageTable(
        list(ids),
        paths,
        np.array([classes.index(c) for c in label_text]),
        classes,
        groups,
        extra.reset_index(drop=True) if len(extra.columns) else None,
    )


def _sorted_classes(names: Iterable[str]) -> list[str]:
    """Sorted class names; numerically when they are all integers, so "10" follows "9"."""
    names = list(names)
    numeric = all(c.lstrip("-").isdigit() for c in names)
    return sorted(names, key=int) if numeric else sorted(names)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)
