"""CyCNN (Kim, Jang, Lee & Moon, 2020): polar mapping and cylindrical convolutions, on ResNet18.

1. **Polar mapping.** The image is resampled on a polar grid about its centre (bilinear
   ``grid_sample`` on a precomputed grid; ``align_corners=False``, so the centre is the middle of
   the pixel grid): row i is the angle 360°·i/H_p, column j the radius (j + ½)/W_p of the
   inscribed disc (linear, or logarithmic with ``log_polar=True``). Corners outside the disc are
   dropped. Turning the image counterclockwise by 360°·m/H_p shifts the polar map by m rows
   (rolls it towards larger row indices), exactly when the turn is a quarter turn and H_p is a
   multiple of 4, up to interpolation otherwise.
2. **Cylindrical convolutions.** Every convolution (and the stem's max-pool) pads the angle axis
   circularly and the radius axis with zeros, so the network commutes with cyclic shifts of the
   rows. With strides, a shift by m rows is exactly a shift of the output when m is a multiple
   of the total stride along the angle axis (32 for ResNet18) and H_p is too.
3. **Invariance.** Global average pooling removes the shift: the features are invariant to
   turns by multiples of 32·360°/H_p exactly, and to quarter turns when H_p is a multiple of
   128; other angles approximately. The lesion must sit at the image centre.

No parameter is added: the layers are ResNet18's (same names and shapes), so its ImageNet
weights load, although they were learnt on Cartesian images.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.models.base import ImageClassifier
from rmnet.models.factory import register_model
from rmnet.models.resnets import resnet_preset
from rmnet.models.rmnet import RMNet
from rmnet.models.weights import resolve_weights


def polar_grid(angles: int, radii: int, *, log_polar: bool = False, min_radius: float = 0.02) -> torch.Tensor:
    """The (1, angles, radii, 2) grid_sample coordinates of the polar map (x right, y down).

    Row i looks along 360°·i/angles counterclockwise from the +x axis (as the picture is shown,
    row 0 on top); column j at radius (j + ½)/radii of the inscribed disc, or its logarithmic
    counterpart from ``min_radius`` to 1.
    """
    theta = 2 * math.pi * torch.arange(angles, dtype=torch.float64) / angles
    t = (torch.arange(radii, dtype=torch.float64) + 0.5) / radii
    r = min_radius ** (1 - t) if log_polar else t
    x = r[None, :] * torch.cos(theta)[:, None]
    y = -r[None, :] * torch.sin(theta)[:, None]  # y points down: counterclockwise on screen
    return torch.stack([x, y], dim=-1).unsqueeze(0).float()


class PolarTransform(nn.Module):
    """Images (B, C, H, W) → polar maps (B, C, H_p, W_p): rows are angles, columns radii.

    ``size`` = (H_p, W_p); None samples as many angles as the image has rows and as many radii
    as half its columns. The grid of a fixed size is computed once, at construction.
    """

    def __init__(self, size: tuple[int, int] | None = None, *, log_polar: bool = False) -> None:
        super().__init__()
        self.size, self.log_polar = (tuple(size) if size is not None else None), log_polar
        grid = polar_grid(*size, log_polar=log_polar) if size is not None else None
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid
        if grid is None:
            grid = polar_grid(x.shape[-2], max(1, x.shape[-1] // 2), log_polar=self.log_polar)
        grid = grid.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, log_polar={self.log_polar}"


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class CylindricalConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose padding wraps around along rows (the angle) and is zero along columns.

    Same parameters and state_dict as ``nn.Conv2d``, so ordinary weights load into it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = _pair(self.padding)
        if rows:
            x = F.pad(x, (0, 0, rows, rows), mode="circular")
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, cols), self.dilation, self.groups)


class CylindricalMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with circular padding along rows and −∞ padding along columns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = _pair(self.padding)
        if rows:
            x = F.pad(x, (0, 0, rows, rows), mode="circular")
        if cols:
            x = F.pad(x, (cols, cols, 0, 0), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)


class CyCNN(ImageClassifier):
    """Polar mapping → ResNet with cylindrical convolutions → global average pool → head."""

    def __init__(self, backbone: RMNet, polar: PolarTransform) -> None:
        super().__init__()
        self.polar = polar
        self.backbone = backbone
        self.num_classes, self.num_features = backbone.num_classes, backbone.num_features
        self.hash_bits = backbone.hash_bits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.polar(x))

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.forward_head(features)


CYLINDRICAL_RESNET18 = resnet_preset(18, conv=CylindricalConv2d, pool=CylindricalMaxPool2d)


@register_model("cycnn_resnet18", preset=CYLINDRICAL_RESNET18)
def cycnn_resnet18(
    num_classes: int = 8,
    *,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | None = None,
    width: int = 64,
    in_chans: int = 3,
    polar_size: tuple[int, int] | None = None,
    log_polar: bool = False,
) -> CyCNN:
    """CyCNN on ResNet18: polar map (``polar_size`` = (angles, radii), default the image's
    (H, W/2)) and cylindrical convolutions; ResNet18's ImageNet weights load."""
    weights = resolve_weights(pretrained, CYLINDRICAL_RESNET18.weights, "cycnn_resnet18")
    options = dict(width=width, in_chans=in_chans)
    backbone = RMNet(CYLINDRICAL_RESNET18, num_classes, hash_bits=hash_bits, weights=weights, **options)
    return CyCNN(backbone, PolarTransform(polar_size, log_polar=log_polar))
