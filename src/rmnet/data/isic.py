"""ISIC 2019 in its published layout: a folder of JPEGs, the ground-truth CSV, the metadata CSV.

Quirks of the real files handled here (SPEC §11): one-hot values written as floats (``1.0``),
an all-zero ``UNK`` column, ``_downsampled`` image names (the canonical id strips the suffix),
metadata with empty cells and rows without ``lesion_id``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from rmnet.data.images import is_image_file
from rmnet.data.table import ImageTable

log = logging.getLogger(__name__)

GROUND_TRUTH_NAME = "ISIC_2019_Training_GroundTruth.csv"
METADATA_NAME = "ISIC_2019_Training_Metadata.csv"
IMAGES_FOLDER_NAME = "ISIC_2019_Training_Input"
ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
DOWNSAMPLED_SUFFIX = "_downsampled"


def canonical_isic_id(name: str) -> str:
    """``ISIC_0000123_downsampled`` -> ``ISIC_0000123`` (the re-encoded 2016/2017 copies)."""
    return name[: -len(DOWNSAMPLED_SUFFIX)] if name.endswith(DOWNSAMPLED_SUFFIX) else name


def find_isic_csv(folder: Path, name: str) -> Path | None:
    """``name`` in ``folder`` or its parent (the published zips unpack side by side)."""
    for candidate in (folder / name, folder.parent / name):
        if candidate.is_file():
            return candidate
    return None


def is_isic_ground_truth(path: Path) -> bool:
    """A CSV whose header has ``image`` and the ISIC class columns."""
    header = pd.read_csv(path, nrows=0).columns.str.strip()
    return "image" in header and "MEL" in header


def load_isic2019(
    images: str | os.PathLike,
    ground_truth: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
) -> ImageTable:
    """Load ISIC 2019 from its images folder (or the folder above it); CSVs found by name if not given."""
    images = Path(images)
    ground_truth = Path(ground_truth) if ground_truth else find_isic_csv(images, GROUND_TRUTH_NAME)
    if ground_truth is None:
        raise FileNotFoundError(
            f"no {GROUND_TRUTH_NAME} in {images} or its parent; give the ground-truth CSV with --ground-truth"
        )
    if (images / IMAGES_FOLDER_NAME).is_dir():
        images = images / IMAGES_FOLDER_NAME
    if metadata is None:
        metadata = find_isic_csv(images, METADATA_NAME)

    names, labels, class_names = _read_ground_truth(Path(ground_truth))
    ids = _canonical_ids(names)
    paths = _locate_images(names, images, ground_truth)
    frame = _read_metadata(Path(metadata), names) if metadata else None
    groups = _groups(frame)
    return ImageTable(ids, paths, labels, class_names, groups, frame)


def _read_ground_truth(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    frame = pd.read_csv(path, dtype={"image": str})
    frame.columns = frame.columns.str.strip()
    for column in ("image", *ISIC_CLASSES):
        if column not in frame.columns:
            found = ", ".join(frame.columns)
            raise ValueError(f"ISIC ground-truth CSV {path} is missing column {column!r} (found: {found})")
    names = frame["image"].str.strip().tolist()
    repeated = frame["image"][frame["image"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"ISIC ground-truth CSV {path} lists {', '.join(repeated[:5])} more than once")

    class_columns = [c for c in frame.columns if c != "image"]
    onehot = frame[class_columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(onehot, (0.0, 1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"ISIC ground-truth CSV {path}: image {names[row]} has {frame.iloc[row][class_columns[col]]!r} "
            f"in column {class_columns[col]!r}; expected one-hot 0/1 values"
        )
    per_row = onehot.sum(axis=1)
    for rows, what in (
        (np.flatnonzero(per_row == 0), "no class"),
        (np.flatnonzero(per_row > 1), "two classes"),
    ):
        if len(rows):
            marked = ", ".join(c for c, v in zip(class_columns, onehot[rows[0]], strict=True) if v) or "all 0"
            more = f"; {len(rows) - 1} more images too" if len(rows) > 1 else ""
            raise ValueError(
                f"ISIC ground-truth CSV {path}: image {names[rows[0]]} has {what} ({marked}){more}; "
                "each row needs exactly one 1"
            )

    used = onehot.sum(axis=0) > 0
    unused = [c for c, u in zip(class_columns, used, strict=True) if not u]
    if unused:  # UNK is always empty in the training set; other empty columns mean a subset CSV
        log.info("ISIC ground truth %s: no image has class %s; left out of the classes", path, unused)
    labels = onehot[:, used].argmax(axis=1)
    return names, labels, [c for c, u in zip(class_columns, used, strict=True) if u]


def _canonical_ids(names: list[str]) -> list[str]:
    ids = [canonical_isic_id(n) for n in names]
    counts = pd.Series(ids).value_counts()
    clashes = set(counts.index[counts > 1])
    # An image listed both with and without the suffix keeps its full name, so ids stay unique.
    return [n if i in clashes else i for n, i in zip(names, ids, strict=True)]


def _locate_images(names: list[str], folder: Path, ground_truth: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"ISIC images folder {folder} does not exist")
    by_stem = {}
    for entry in os.scandir(folder):
        if is_image_file(entry.name):
            by_stem.setdefault(Path(entry.name).stem, entry.name)
    paths, missing = [], []
    for name in names:
        canonical = canonical_isic_id(name)
        found = next(
            (by_stem[s] for s in (name, canonical, canonical + DOWNSAMPLED_SUFFIX) if s in by_stem), None
        )
        if found is None:
            missing.append(name)
        else:
            paths.append(folder / found)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(
            f"{len(missing)} images listed in {ground_truth} are not in {folder}: "
            f"{', '.join(missing[:3])}{more}; restore them, or give a ground-truth CSV without their rows "
            "with --ground-truth (to leave out images that exist but cannot be read, use --on-error skip)"
        )
    return paths


def _read_metadata(path: Path, names: list[str]) -> pd.DataFrame:
    """Metadata rows in ground-truth order (matched on the canonical id); empty cells become NaN."""
    frame = pd.read_csv(path, dtype={"image": str, "lesion_id": str})
    frame.columns = frame.columns.str.strip()
    if "image" not in frame.columns:
        raise ValueError(
            f"ISIC metadata CSV {path} is missing column 'image' (found: {', '.join(frame.columns)})"
        )
    frame.index = frame.pop("image").str.strip().map(canonical_isic_id)
    frame = frame[~frame.index.duplicated()]
    aligned = frame.reindex([canonical_isic_id(n) for n in names]).reset_index(drop=True)
    unmatched = int(aligned.isna().all(axis=1).sum())
    if unmatched:
        log.info("ISIC metadata %s has no row for %d of %d images", path, unmatched, len(names))
    return aligned


def _groups(metadata: pd.DataFrame | None) -> list[str | None]:
    if metadata is None or "lesion_id" not in metadata.columns:
        return []
    return [None if pd.isna(g) or not str(g).strip() else str(g).strip() for g in metadata["lesion_id"]]
