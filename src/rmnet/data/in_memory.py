"""Training data decoded once into memory (on the GPU when training there), then batched transforms.

An :class:`ImageDataset` whose transform came from ``build_transform`` is decoded and resized once by
loader workers (the pipeline's own first steps) into a :class:`~rmnet.data.batched.PackedImages`;
every epoch then draws its batches from there with :func:`~rmnet.data.batched.transform_batch`, so
no JPEG is decoded twice and augmentation runs as a few tensor operations per batch where the
model runs. ISIC 2019 cached at short edge 256 takes about 5 GB.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from rmnet.data.batched import PackedImages, transform_batch
from rmnet.data.dataset import ImageDataset
from rmnet.data.transforms import TransformRecipe, decode_transform
from rmnet.io import progress_bar


def transform_recipe(dataset: object) -> TransformRecipe | None:
    """The recipe of an ImageDataset whose transform ``build_transform`` made; None for any other."""
    if not isinstance(dataset, ImageDataset):
        return None
    return getattr(dataset.transform, "recipe", None)


class _DecodeToArray:
    """A PIL image to a uint8 (H, W, 3) array, short edge ``resize`` (pickled to workers, not shared)."""

    def __init__(self, resize: int) -> None:
        self.decode = decode_transform(resize)

    def __call__(self, image) -> np.ndarray:
        return np.ascontiguousarray(self.decode(image).permute(1, 2, 0).numpy())


def _as_is(item):
    return item


def pack_dataset(dataset: ImageDataset, workers: int = 0, progress: bool = True) -> PackedImages:
    """Decode and resize every image of ``dataset`` once (in ``workers`` processes), packed."""
    recipe = transform_recipe(dataset)
    if recipe is None:
        raise ValueError(
            "only an ImageDataset whose transform build_transform made, without RandAugment or test "
            "crops, can be held in memory (use data_path 'files' for other datasets)"
        )
    decoding = copy.copy(dataset)
    decoding.transform = _DecodeToArray(recipe.resize)
    loader = DataLoader(decoding, batch_size=None, num_workers=workers, collate_fn=_as_is)
    images, labels = [], []
    for image, label in progress_bar(loader, "decoding images into memory", progress, total=len(dataset)):
        images.append(image)
        labels.append(label)
    return PackedImages.from_arrays(images, labels)


class MemoryBatches:
    """Batches ``(images, labels)`` on ``packed``'s device, as a DataLoader over the dataset with its
    ``build_transform`` pipeline would yield them: shuffled (or in ``sampler``'s order), augmented
    with per-image random parameters from torch's generator of that device."""

    def __init__(
        self,
        packed: PackedImages,
        recipe: TransformRecipe,
        batch_size: int,
        shuffle: bool = False,
        sampler: Sampler | None = None,
    ) -> None:
        self.packed, self.recipe, self.batch_size = packed, recipe, batch_size
        self.shuffle, self.sampler = shuffle, sampler

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else len(self.packed)
        return -(-count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        elif self.shuffle:
            order = torch.randperm(len(self.packed))
        else:
            order = torch.arange(len(self.packed))
        order = order.to(self.packed.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield transform_batch(self.packed, index, self.recipe), self.packed.labels[index]
