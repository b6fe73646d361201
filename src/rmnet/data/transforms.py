"""The paper's image transforms (torchvision.transforms.v2), for PIL images and tensors alike."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HFLIP = v2.RandomHorizontalFlip(p=1.0)
_VFLIP = v2.RandomVerticalFlip(p=1.0)


def build_transform(
    train: bool,
    image_size: int,
    resize: int | None = None,
    rotation_augmentation: bool = False,
) -> Callable:
    """The paper's recipe (SPEC §3) as a v2 pipeline returning a normalised float tensor (3, S, S).

    Train: short edge to ``resize`` (default ``round(image_size * 256 / 224)``, i.e. 256 for 224),
    a random ``image_size`` crop of the image "or its horizontal flip or vertical flip" (one of the
    three, equally likely; never both flips, which would be a 180° rotation). Eval: the same resize and a
    centre crop. ``rotation_augmentation`` (the "RA" baseline, train only) rotates the resized
    image by an angle uniform in [0, 360) before cropping; the paper's RM runs never use it.
    """
    resize = resize or round(image_size * 256 / 224)
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be at least image_size ({image_size})")
    steps: list[Callable] = [v2.ToImage(), v2.Resize(resize, antialias=True)]
    if train:
        if rotation_augmentation:
            steps.append(v2.RandomRotation(degrees=(0.0, 360.0), interpolation=v2.InterpolationMode.BILINEAR))
        steps += [v2.RandomCrop(image_size), v2.RandomChoice([v2.Identity(), _HFLIP, _VFLIP])]
    else:
        steps.append(v2.CenterCrop(image_size))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)
