"""Datasets returning ``(tensor, label)``: image files listed in an ImageTable, or tensors in memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from rmnet.data.images import SkippedImage, UnreadableImageError, check_image, open_rgb, warn_skipped
from rmnet.data.table import ImageTable
from rmnet.io import progress_bar


class ImageDataset(Dataset):
    """The images of ``table`` at ``indices``: decoded, converted to RGB, then ``transform``-ed.

    ``on_error="raise"`` (default) reads lazily; an unreadable file raises an error naming it.
    ``on_error="skip"`` test-decodes every image once here (JPEGs at 1/8 scale, which still reads
    every byte, so truncated files are caught), leaves out those that fail, lists them in
    ``skipped`` as :class:`SkippedImage` ``(id, path, reason)`` and issues one
    ``SkippedImageWarning`` per image. Images the table already knows to be unreadable
    (``table.unreadable``, found by ``prepare_cache``) are left out without decoding or a second
    warning. Items are never replaced, so a label always belongs to its own image.
    """

    def __init__(
        self,
        table: ImageTable,
        indices: Sequence[int] | np.ndarray | None = None,
        transform: Callable | None = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.table = table
        self.transform = transform
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.skipped: list[SkippedImage] = []
        if on_error == "skip":
            self._leave_out_unreadable()

    def _leave_out_unreadable(self) -> None:
        known = self.table.unreadable
        ids = [self.table.ids[i] for i in self.indices]
        paths = [self.table.paths[i] for i in self.indices]
        to_check = [path for image_id, path in zip(ids, paths, strict=True) if image_id not in known]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
            results = pool.map(check_image, to_check)
            checked = iter(list(progress_bar(results, "checking images", total=len(to_check))))
        problems = [known[image_id] if image_id in known else next(checked) for image_id in ids]
        self.skipped = [
            SkippedImage(image_id, path, problem)
            for image_id, path, problem in zip(ids, paths, problems, strict=True)
            if problem is not None
        ]
        self.indices = self.indices[np.array([problem is None for problem in problems], dtype=bool)]
        warn_skipped(s for s in self.skipped if s.id not in known)  # those known were reported before

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        index = self.indices[item]
        try:
            image = open_rgb(self.table.paths[index])
        except UnreadableImageError as error:
            raise UnreadableImageError(
                f"{error} (image id {self.table.ids[index]}); replace the file, or pass --on-error skip "
                "to leave unreadable images out"
            ) from error
        return (self.transform(image) if self.transform else F.pil_to_tensor(image)), int(
            self.table.labels[index]
        )

    @property
    def labels(self) -> np.ndarray:
        """The label of every item, in order."""
        return self.table.labels[self.indices]

    @property
    def class_names(self) -> list[str]:
        return self.table.class_names


class TensorImageDataset(Dataset):
    """Images already in memory as a tensor (N, C, H, W), with integer labels and an optional transform."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        transform: Callable | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.images = images
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
        if len(self.images) != len(self.targets):
            raise ValueError(f"{len(self.images)} images but {len(self.targets)} labels")
        self.transform = transform
        num_classes = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.class_names = list(class_names) if class_names else [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        image = self.images[item]
        return (self.transform(image) if self.transform else image), int(self.targets[item])

    @property
    def labels(self) -> np.ndarray:
        return self.targets.numpy()
