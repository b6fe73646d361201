"""Rotation Meanout (RM): expand by rotations, run one shared block, rotate back, fuse.

    RM(X) = p[ f(X), g_1⁻¹ f(g_1 X), …, g_(n-1)⁻¹ f(g_(n-1) X) ]   over the group elements g_i

With mean or max fusion RM is equivariant (RM(g X) = g RM(X)) and adds no parameter, so a
global average pool after it is invariant. The n rotated copies run as one batch of n·B, which
is faster than n calls and lets BatchNorm see one set of statistics for all of them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.groups import CyclicGroup, make_group

Fusion = Literal["mean", "max", "embedding"]
FUSIONS: tuple[str, ...] = ("mean", "max", "embedding")


class MeanFusion(nn.Module):
    """Average the realigned copies (the paper's meanout)."""

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:  # (n, B, C, H, W) -> (B, C, H, W)
        return stacked.mean(dim=0)


class MaxFusion(nn.Module):
    """Element-wise maximum over the realigned copies (maxout)."""

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.amax(dim=0)


class EmbeddingFusion(nn.Module):
    """A 1×1 convolution from the n·C concatenated channels back to C (adds parameters).

    It starts as an exact mean, so wrapping a pretrained block does not disturb it; training
    may then break the rotation equivariance, as the paper notes.
    """

    def __init__(self, channels: int, copies: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(copies * channels, channels, kernel_size=1)
        with torch.no_grad():
            eye = torch.eye(channels).repeat(1, copies) / copies  # (C, n·C)
            self.conv.weight.copy_(eye[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        n, b, c, h, w = stacked.shape
        return self.conv(stacked.permute(1, 0, 2, 3, 4).reshape(b, n * c, h, w))


def make_fusion(fusion: str, channels: int | None, copies: int) -> nn.Module:
    if fusion == "mean":
        return MeanFusion()
    if fusion == "max":
        return MaxFusion()
    if fusion == "embedding":
        if channels is None:
            raise ValueError("fusion='embedding' needs the block's output channel count: channels=C")
        return EmbeddingFusion(channels, copies)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


def rotation_meanout(
    x: torch.Tensor,
    branches: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    group: CyclicGroup,
    fusion: Callable[[torch.Tensor], torch.Tensor],
    rotate: bool = True,
) -> torch.Tensor:
    """Apply RM to ``x`` (B, C, H, W). One branch means shared weights (one batched call)."""
    if x.dim() != 4:
        raise ValueError(f"RotationMeanout expects feature maps (B, C, H, W), got shape {tuple(x.shape)}")
    elements = list(group.elements)
    n, b = len(elements), x.shape[0]
    exact = group.is_exact or not rotate
    if rotate and group.is_exact and any(group.angle(g) % 180 for g in elements):
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"RotationMeanout with 90° rotations needs square feature maps, got shape "
                f"{tuple(x.shape)}; use a square input size (e.g. 224×224)"
            )
    pad = 0 if exact else _corner_padding(x.shape[-2], x.shape[-1])
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))

    # Expansion: (n·B, C, H, W), copy i holds g_i·x.
    copies = [group.act(x, g) if rotate else x for g in elements]
    # Feature extraction: the same block on every copy.
    if len(branches) == 1:
        y = branches[0](torch.cat(copies)).unflatten(0, (n, b))
    else:
        y = torch.stack([branch(c) for branch, c in zip(branches, copies, strict=True)])
    # Realignment: rotate copy i back by g_i⁻¹.
    if rotate:
        y = torch.stack([group.act(y[i], group.inverse(g)) for i, g in enumerate(elements)])
    if pad:
        y = _crop_to_fraction(y, x.shape[-2] - 2 * pad, x.shape[-2])
    # Fusion.
    return fusion(y)


def _corner_padding(h: int, w: int) -> int:
    """Zero padding on each side so that a rotation by any angle keeps the corners."""
    side = max(h, w)
    return math.ceil((math.ceil(side * math.sqrt(2)) - side) / 2)


def _crop_to_fraction(y: torch.Tensor, inner: int, outer: int) -> torch.Tensor:
    """Keep the centre of ``y`` that corresponds to the unpadded input (inner/outer of it).

    The kept side has the parity of the full side, so the crop is exactly centred and the
    quarter turns in the group stay exact.
    """
    h, w = y.shape[-2:]
    th, tw = (_centred_length(n, inner / outer) for n in (h, w))
    top, left = (h - th) // 2, (w - tw) // 2
    return y[..., top : top + th, left : left + tw]


def _centred_length(n: int, fraction: float) -> int:
    kept = max(1, round(n * fraction))
    return kept + 1 if (n - kept) % 2 and kept < n else kept


def _independent_copy(block: nn.Module) -> nn.Module:
    """A copy with its own weights; a block that borrows its modules supplies ``owned_copy``."""
    owned_copy = getattr(block, "owned_copy", None)
    return owned_copy() if callable(owned_copy) else copy.deepcopy(block)


class RotationMeanout(nn.Module):
    """Make ``block`` rotation-equivariant by averaging it over a rotation group.

    Args:
        block: any module mapping feature maps (B, C, H, W) to feature maps.
        k: number of rotations (θ = 360°/k); k = 4 is exact, others interpolate.
        fusion: "mean" (the paper's meanout), "max", or "embedding" (a 1×1 conv; needs channels).
        dihedral: also average over the mirror images (the group D_k, 2k copies).
        rotate: False gives the paper's RM-WR ablation (k identical copies, no rotation).
        share_weights: False gives the paper's RM-NWS ablation (k independent copies of block).
        channels: the block's output channels, needed only for fusion="embedding".
    """

    def __init__(
        self,
        block: nn.Module,
        k: int = 4,
        fusion: Fusion = "mean",
        *,
        dihedral: bool = False,
        rotate: bool = True,
        share_weights: bool = True,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        self.group = make_group(k, dihedral)
        self.rotate = rotate
        self.block = block
        copies = self.group.order
        # RM-NWS: copies 1..n-1 get their own weights, initialised from the block's.
        self.extra_branches = (
            nn.ModuleList(_independent_copy(block) for _ in range(copies - 1)) if not share_weights else None
        )
        self.fusion = make_fusion(fusion, channels, copies)
        self.fusion_name = fusion

    @property
    def branches(self) -> list[nn.Module]:
        return [self.block, *(self.extra_branches or [])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rotation_meanout(x, self.branches, self.group, self.fusion, rotate=self.rotate)

    def extra_repr(self) -> str:
        return (
            f"group={self.group}, fusion={self.fusion_name}, rotate={self.rotate}, "
            f"share_weights={self.extra_branches is None}"
        )


def embed_rotation_meanout(model: nn.Module, paths: Sequence[str], **rm_kwargs) -> nn.Module:
    """Wrap each module at ``paths`` of any CNN (torchvision, timm, your own) in its own RM, in place.

    Load pretrained weights before wrapping: the wrapped modules' state_dict keys gain ``.block``.
    """
    for path in paths:
        try:
            block = model.get_submodule(path)
        except AttributeError as err:
            children = ", ".join(name for name, _ in model.named_children())
            raise ValueError(f"model has no module {path!r} (top-level modules: {children})") from err
        model.set_submodule(path, RotationMeanout(block, **rm_kwargs))
    return model
