"""Pretrained weights as data: where the file lives and the input transform it was trained with.

Like torchvision's ``Weights`` and timm's ``pretrained_cfg``, a :class:`Weights` carries its own
normalisation and resize rule, so they are written once. Nothing is ever downloaded: ImageNet
weights are read from the torch hub cache, where torchvision would have stored them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = "imagenet"  # the name users give (`--pretrained imagenet`) for a preset's ImageNet weights


def resize_for(image_size: int) -> int:
    """The short edge to resize to before cropping ``image_size``: ImageNet's 256 for 224."""
    return round(image_size * 256 / 224)


@dataclass(frozen=True)
class Weights:
    """Published weights of a plain backbone and the transform they expect."""

    name: str  # torchvision's enum name, e.g. "ResNet18_Weights.IMAGENET1K_V1"
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize_size(self) -> int:
        return resize_for(self.input_size)

    @property
    def filename(self) -> str:
        """The file name torchvision caches these weights under (e.g. resnet18-f37072fd.pth)."""
        import torchvision

        return os.path.basename(torchvision.models.get_weight(self.name).url)

    def cache_path(self) -> Path:
        """Where the torch hub cache holds (or would hold) the file."""
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename


def resolve_weights(pretrained: str | os.PathLike | None, weights: Weights | None, arch: str) -> Path | None:
    """A local weights file for ``pretrained``: None, "imagenet" (the torch hub cache), or a path."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True or str(pretrained) == IMAGENET:
        if weights is None:
            raise ValueError(f"{arch} has no published ImageNet weights; give a weights file instead")
        path = weights.cache_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"ImageNet weights for {arch} are not in the torch hub cache: {path} is missing. rmnet "
                f"never downloads: copy torchvision's file {weights.filename} there (or set TORCH_HOME), "
                "or give a state_dict file instead (pretrained=PATH in Python, --pretrained PATH on the "
                "command line)."
            )
        return path
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    return path
