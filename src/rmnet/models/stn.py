"""Spatial Transformers (Jaderberg et al., NeurIPS 2015) in front of ResNet18: rotation-only, or
affine (the paper's STN is a general transformer, "not especially for rotation").

A small localisation network looks at the image and regresses one angle α; the image is turned
by α (``affine_grid`` + bilinear ``grid_sample``, ``align_corners=False``, zeros outside) and the
ResNet sees the turned image. The transform acts on the input image, not on a feature map, so
the backbone is an unchanged ResNet18 and its ImageNet weights load as they are.

The localisation network's last layer starts at weight 0 and bias 0 (α = 0: the identity), so
at step 0 the model computes the plain network (up to the last bit of the bilinear resampling at
unchanged pixel centres). It trains at a lower learning rate: the module carries an
``lr_scale`` attribute (default 0.1) that ``rmnet.train`` turns into its own parameter group
(lr × lr_scale), the usual cure for a localisation network that diverges and turns the images
black. An STN learns to put images in a canonical orientation; it is not invariant by design.

The affine transformer (:class:`AffineLocalizer`) regresses the whole 2×3 matrix θ of
``affine_grid`` (rotation, scale, shear, translation), its last layer starting at θ = identity.
Both also sit before any block of a preset backbone (``create_model(arch, method="stn" or
"stn_affine", at=…)``, rmnet.models.inserted), warping that block's input feature map.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.models.base import ImageClassifier
from rmnet.models.factory import register_model
from rmnet.models.resnets import resnet_preset
from rmnet.models.rmnet import RMNet
from rmnet.models.weights import resolve_weights


def rotation_grid(angles: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The sampling grid (B, H, W, 2) that turns images of ``size`` (B, C, H, W) by ``angles`` (B,)
    radians counterclockwise about their centre (non-square images keep their proportions)."""
    h, w = size[-2:]
    cos, sin = torch.cos(angles), torch.sin(angles)
    # affine_grid maps output coordinates (x right, y down, in [-1, 1]) to input coordinates.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, torch.zeros_like(cos)], dim=-1),
            torch.stack([sin * w / h, cos, torch.zeros_like(cos)], dim=-1),
        ],
        dim=-2,
    )
    return F.affine_grid(theta, list(size), align_corners=False)


def rotate_by(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Turn each image by its own angle (radians), bilinearly, zeros outside."""
    grid = rotation_grid(angles.to(images.dtype), images.shape)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RotationLocalizer(nn.Module):
    """Image → one angle (radians): two conv-pool-ReLU stages, a 4×4 average pool, two linear layers.

    It looks at the image resized to ``input_size`` px (cheap at any resolution). The last layer
    is zero-initialised, so every angle starts at 0. ``lr_scale`` is read by the training loop.
    """

    identity: tuple[float, ...] = (0.0,)  # the output that leaves the input as it is: angle 0

    def __init__(self, in_chans: int = 3, hidden: int = 32, input_size: int = 64, lr_scale: float = 0.1):
        super().__init__()
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be positive, got {lr_scale}")
        self.input_size, self.lr_scale = input_size, lr_scale
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 8, 7, padding=3),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 5, padding=2),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.regress = nn.Sequential(
            nn.Linear(16 * 16, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, len(self.identity))
        )
        nn.init.zeros_(self.regress[-1].weight)
        with torch.no_grad():
            self.regress[-1].bias.copy_(torch.tensor(self.identity))

    def regression(self, x: torch.Tensor) -> torch.Tensor:
        """(B, outputs): the raw regressed transform parameters."""
        if max(x.shape[-2:]) > self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        elif min(x.shape[-2:]) < 4:  # a small feature map (a late block): its two 2×2 pools need 4 px
            x = F.interpolate(x, size=(4, 4), mode="nearest")
        return self.regress(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regression(x).squeeze(1)  # (B,) radians

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` turned by the angles predicted for it."""
        return rotate_by(x, self(x))

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, lr_scale={self.lr_scale}"


class AffineLocalizer(RotationLocalizer):
    """Image → the 2×3 affine matrix θ (B, 2, 3) of ``affine_grid``; it starts at the identity."""

    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regression(x).view(-1, 2, 3)

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` resampled by the affine transforms predicted for it (bilinear, zeros outside)."""
        grid = F.affine_grid(self(x).to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


LOCALIZERS = {"rotation": RotationLocalizer, "affine": AffineLocalizer}


class SpatialTransformer(nn.Module):
    """A localisation network and its warp, as one step of a network (feature maps or images)."""

    def __init__(self, localization: RotationLocalizer) -> None:
        super().__init__()
        self.localization = localization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.localization.warp(x)


class SpatialTransformerNet(ImageClassifier):
    """Localisation network → turn the image by the predicted angle → ResNet → [hash layer] → classifier."""

    def __init__(self, backbone: RMNet, localization: RotationLocalizer) -> None:
        super().__init__()
        self.localization = localization
        self.backbone = backbone
        self.num_classes, self.num_features = backbone.num_classes, backbone.num_features
        self.hash_bits = backbone.hash_bits

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The images warped by the transforms the localisation network predicts for them."""
        return self.localization.warp(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.transform(x))

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.forward_head(features)

    @torch.no_grad()
    def predicted_angles(self, x: torch.Tensor) -> torch.Tensor:
        """The angles (degrees) the localisation network would turn ``x`` by (rotation STN)."""
        if isinstance(self.localization, AffineLocalizer):
            raise TypeError("an affine STN predicts 2×3 matrices, not angles: call model.localization(x)")
        return torch.rad2deg(self.localization(x))


def _stn_resnet18(
    kind: str, num_classes: int, hash_bits, pretrained, width, in_chans, lr_scale, localization_size
) -> SpatialTransformerNet:
    name = "stn_resnet18" if kind == "rotation" else "stn_affine_resnet18"
    preset = resnet_preset(18)
    weights = resolve_weights(pretrained, preset.weights, name)
    options = dict(width=width, in_chans=in_chans)
    backbone = RMNet(preset, num_classes, hash_bits=hash_bits, weights=weights, **options)
    localizer = LOCALIZERS[kind](in_chans, input_size=localization_size, lr_scale=lr_scale)
    return SpatialTransformerNet(backbone, localizer)


@register_model("stn_resnet18", preset=resnet_preset(18))
def stn_resnet18(
    num_classes: int = 8,
    *,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | None = None,
    width: int = 64,
    in_chans: int = 3,
    lr_scale: float = 0.1,
    localization_size: int = 64,
) -> SpatialTransformerNet:
    """Rotation-only STN on the input of ResNet18 (ImageNet weights load into the ResNet)."""
    args = (num_classes, hash_bits, pretrained, width, in_chans, lr_scale, localization_size)
    return _stn_resnet18("rotation", *args)


@register_model("stn_affine_resnet18", preset=resnet_preset(18))
def stn_affine_resnet18(
    num_classes: int = 8,
    *,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | None = None,
    width: int = 64,
    in_chans: int = 3,
    lr_scale: float = 0.1,
    localization_size: int = 64,
) -> SpatialTransformerNet:
    """Affine STN on the input of ResNet18 (ImageNet weights load into the ResNet)."""
    args = (num_classes, hash_bits, pretrained, width, in_chans, lr_scale, localization_size)
    return _stn_resnet18("affine", *args)
