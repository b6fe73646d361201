"""Data: ISIC 2019, folders of images, the embedded demo data, transforms, splits and the resize cache.

The names below load on first use (PEP 562), so a module that needs one part (the resize cache's
worker processes, ``rmnet prepare``) does not pay for PyTorch and torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "prepare_cache": "cache",
    "read_skipped": "images",
    "save_skipped": "images",
    "ImageDataset": "dataset",
    "TensorImageDataset": "dataset",
    "load_digits_tensors": "digits",
    "SKIPPED_FILE": "images",
    "SkippedImage": "images",
    "UnreadableImageError": "images",
    "open_rgb": "images",
    "ISIC_CLASSES": "isic",
    "load_isic2019": "isic",
    "LESION_KINDS": "lesions",
    "make_lesion_dataset": "lesions",
    "render_lesion": "lesions",
    "save_contact_sheet": "preview",
    "load_image_table": "sources",
    "Split": "split",
    "load_split": "split",
    "make_split": "split",
    "match_split": "split",
    "save_split": "split",
    "ImageTable": "table",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "build_transform": "transforms",
}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISIC_CLASSES",
    "ImageDataset",
    "ImageTable",
    "LESION_KINDS",
    "SKIPPED_FILE",
    "SkippedImage",
    "Split",
    "TensorImageDataset",
    "UnreadableImageError",
    "build_transform",
    "load_digits_tensors",
    "load_image_table",
    "load_isic2019",
    "load_split",
    "make_lesion_dataset",
    "make_split",
    "match_split",
    "open_rgb",
    "prepare_cache",
    "read_skipped",
    "render_lesion",
    "save_contact_sheet",
    "save_skipped",
    "save_split",
]

if TYPE_CHECKING:
    from rmnet.data.cache import prepare_cache
    from rmnet.data.dataset import ImageDataset, TensorImageDataset
    from rmnet.data.digits import load_digits_tensors
    from rmnet.data.images import (
        SKIPPED_FILE,
        SkippedImage,
        UnreadableImageError,
        open_rgb,
        read_skipped,
        save_skipped,
    )
    from rmnet.data.isic import ISIC_CLASSES, load_isic2019
    from rmnet.data.lesions import LESION_KINDS, make_lesion_dataset, render_lesion
    from rmnet.data.preview import save_contact_sheet
    from rmnet.data.sources import load_image_table
    from rmnet.data.split import Split, load_split, make_split, match_split, save_split
    from rmnet.data.table import ImageTable
    from rmnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    try:  # a submodule, as `import rmnet.data` followed by `rmnet.data.lesions` found it before
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
