"""The stratified train/val/test split (8:1:1 by default), optionally keeping each lesion on one side.

Each class is split on its own, so every part keeps the class proportions, down to the
smallest class. Within a class, the images (or, with ``group_by_lesion``, the lesions, each
with all its images) are shuffled with the seed and laid end to end; a unit goes to the part
in which its midpoint falls. The first unit of every class goes to train, so every class is
learnt even when it has one or two images. This handles tiny classes and tiny data sets that
scikit-learn's stratified splitters refuse (fewer members than folds, test smaller than the
number of classes), and puts whole lesions on one side without rounding the ratios to folds.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rmnet.data.table import ImageTable
from rmnet.io import atomic_write_text

PARTS = ("train", "val", "test")


@dataclass
class Split:
    """Indices into an ImageTable for each part; ``ids`` are the table's ids when the split was made."""

    train: list[int]
    val: list[int]
    test: list[int]
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    group_by_lesion: bool = False
    ids: list[str] | None = field(default=None, repr=False)

    def part(self, name: str) -> list[int]:
        """The indices of "train", "val" or "test"."""
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}; choose one of {', '.join(PARTS)}")
        return getattr(self, name)


def make_split(
    table: ImageTable,
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    group_by_lesion: bool = False,
) -> Split:
    """Split ``table`` per class in ``ratios`` (train, val, test); reproducible for a given seed.

    With ``group_by_lesion`` all images of one ``lesion_id`` land in the same part (an image
    without one is its own group), so no lesion is seen in training and tested again.
    """
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(
            f"ratios must be three non-negative fractions (train > 0) summing to 1, got {ratios}"
        )
    units = _units(table, group_by_lesion)
    unit_labels = np.array([np.bincount(table.labels[u]).argmax() for u in units], dtype=np.int64)
    bounds = np.cumsum(ratios)[:2]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name in PARTS}
    for label in range(table.num_classes):
        members = rng.permutation(np.flatnonzero(unit_labels == label))
        sizes = np.array([len(units[u]) for u in members], dtype=np.float64)
        midpoints = (np.cumsum(sizes) - sizes / 2) / max(sizes.sum(), 1)
        where = np.searchsorted(bounds, midpoints, side="right")
        where[:1] = 0  # the first unit of every class trains
        for unit, part in zip(members, where, strict=True):
            parts[PARTS[part]].extend(units[unit])
    return Split(
        *(sorted(parts[name]) for name in PARTS),
        seed=seed,
        ratios=ratios,
        group_by_lesion=group_by_lesion,
        ids=list(table.ids),
    )


def min_per_class(ratios: Sequence[float], max_units: int = 10_000) -> int:
    """The fewest images (lesions, with ``group_by_lesion``) one class needs so that, split in
    ``ratios`` by :func:`make_split`, it puts at least one in validation and, when its ratio is not
    0, one in test: what a data set too small for its split is told."""
    bounds = np.cumsum([float(r) for r in ratios])[:2]
    for n in range(1, max_units + 1):
        where = np.searchsorted(bounds, (np.arange(n) + 0.5) / n, side="right")
        where[:1] = 0
        if (where == 1).any() and ((where == 2).any() or float(ratios[2]) == 0):
            return n
    return max_units


def _units(table: ImageTable, group_by_lesion: bool) -> list[list[int]]:
    """What the split moves as a whole: single images, or all images of one lesion."""
    if not group_by_lesion:
        return [[i] for i in range(len(table))]
    if all(g is None for g in table.groups):
        warnings.warn(
            "group_by_lesion: the table has no lesion_id; every image is its own group", stacklevel=3
        )
    by_group: dict[object, list[int]] = {}
    for i, group in enumerate(table.groups):
        by_group.setdefault(("image", i) if group is None else group, []).append(i)
    return list(by_group.values())


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON (seed, ratios, table ids and indices), atomically."""
    path = Path(path)
    record = {
        "seed": split.seed,
        "ratios": list(split.ratios),
        "group_by_lesion": split.group_by_lesion,
        "sizes": {name: len(split.part(name)) for name in PARTS},
        **{name: [int(i) for i in split.part(name)] for name in PARTS},
        "ids": split.ids,
    }
    # One key per line, each value compact: the header stays readable above long index lists.
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items()]
    atomic_write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")
    return path


def load_split(path: str | os.PathLike, table: ImageTable | None = None) -> Split:
    """Read a split saved by ``save_split``; with ``table``, check it was made for that table.

    If the table holds the same images in another order, the indices are mapped onto it by id;
    if images of the split are missing from the table, that is an error naming them.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        split = Split(
            *(list(record[name]) for name in PARTS),
            seed=int(record["seed"]),
            ratios=tuple(record["ratios"]),
            group_by_lesion=bool(record.get("group_by_lesion", False)),
            ids=record.get("ids"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a split file written by save_split ({error})") from error
    return split if table is None else match_split(split, table, where=str(path))


def match_split(split: Split, table: ImageTable, where: str = "the split") -> Split:
    """``split`` with its indices pointing at the same images in ``table`` (an error if some are gone)."""
    if split.ids is None:
        if max([*split.train, *split.val, *split.test], default=-1) >= len(table):
            raise ValueError(f"{where} has indices beyond the table's {len(table)} images")
        return split
    if split.ids == table.ids:
        return split
    position = {image_id: i for i, image_id in enumerate(table.ids)}
    used = [i for name in PARTS for i in split.part(name)]
    missing = [split.ids[i] for i in used if split.ids[i] not in position]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(
            f"{where} was made for a different table: {len(missing)} of its images are not in this one "
            f"({', '.join(missing[:3])}{more}); make a new split for this data"
        )
    left_out = len(table) - len(used)
    if left_out:
        warnings.warn(f"{where}: {left_out} images of the table are in no part of the split", stacklevel=3)
    remapped = {name: sorted(position[split.ids[i]] for i in split.part(name)) for name in PARTS}
    return replace(split, **remapped, ids=list(table.ids))
