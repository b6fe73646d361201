"""ImageTable: what every data source loads into (ids, files, labels, lesion groups, metadata)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class ImageTable:
    """One row per image; ``labels[i]`` indexes ``class_names``, ``groups[i]`` is its lesion_id or None.

    ``unreadable`` maps the ids of images already found unreadable (by ``prepare_cache`` with
    ``on_error="skip"``) to what was wrong; ``ImageDataset(on_error="skip")`` leaves them out
    without decoding them again. The rows stay, so a split of the table does not depend on them.
    """

    ids: list[str]
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    groups: list[str | None] = field(default_factory=list)
    metadata: pd.DataFrame | None = None
    unreadable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.class_names = [str(c) for c in self.class_names]
        self.groups = list(self.groups) if len(self.groups) else [None] * len(self.ids)
        n = len(self.ids)
        if not (len(self.paths) == len(self.labels) == len(self.groups) == n):
            raise ValueError(
                f"ImageTable columns differ in length: {n} ids, {len(self.paths)} paths, "
                f"{len(self.labels)} labels, {len(self.groups)} groups"
            )
        if self.metadata is not None and len(self.metadata) != n:
            raise ValueError(f"ImageTable metadata has {len(self.metadata)} rows for {n} images")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in 0..{len(self.class_names) - 1} ({len(self.class_names)} classes)"
            )
        repeated = [image_id for image_id, count in Counter(self.ids).items() if count > 1]
        if repeated:
            raise ValueError(f"image ids must be unique; repeated: {', '.join(repeated[:5])}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """Images per class, in ``class_names`` order (zeros included)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageTable:
        """The rows at ``indices`` (in that order), with the same classes."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        metadata = None if self.metadata is None else self.metadata.iloc[idx].reset_index(drop=True)
        ids = [self.ids[i] for i in idx]
        kept = set(ids) if self.unreadable else set()
        return ImageTable(
            ids=ids,
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            groups=[self.groups[i] for i in idx],
            metadata=metadata,
            unreadable={i: why for i, why in self.unreadable.items() if i in kept},
        )

    def with_classes(self, class_names: Sequence[str]) -> ImageTable:
        """The same rows labelled against ``class_names`` (e.g. a trained model's classes and order)."""
        counts = self.class_counts()
        unknown = [c for c, n in zip(self.class_names, counts, strict=True) if n and c not in class_names]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r} (known classes: {', '.join(class_names)})")
        position = {name: i for i, name in enumerate(class_names)}
        new_label = np.array([position.get(name, -1) for name in self.class_names], dtype=np.int64)
        return replace(self, labels=new_label[self.labels], class_names=list(class_names))
