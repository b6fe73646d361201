"""Rotation Meanout (RM): expand by rotations, run one shared block, rotate back, fuse.

    RM(X) = p[ f(X), g_1⁻¹ f(g_1 X), …, g_(n-1)⁻¹ f(g_(n-1) X) ]   over the group elements g_i

With mean or max fusion RM is equivariant (RM(g X) = g RM(X)) and adds no parameter, so a
global average pool after it is invariant. The n rotated copies run as one batch of n·B, which
is faster than n calls and lets BatchNorm see one set of statistics for all of them.

Rotations by multiples of 90° permute indices (exact). Other angles resample bilinearly; their
copies either keep the map size (``padding="none"``, the default: a copy contributes where its
rotation covers the map, the consensus of the others fills the rest) or are zero-padded to
⌈√2·side⌉ first (``padding="full"``, the paper's choice: about twice the work per copy).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.groups import RotationGroup, make_group

Fusion = Literal["mean", "max", "embedding"]
FUSIONS: tuple[str, ...] = ("mean", "max", "embedding")
Padding = Literal["none", "full"]
PADDINGS: tuple[str, ...] = ("none", "full")


class MeanFusion(nn.Module):
    """Average the realigned copies (the paper's meanout)."""

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:  # (n, B, C, H, W) -> (B, C, H, W)
        return stacked.mean(dim=0)


class MaxFusion(nn.Module):
    """Element-wise maximum over the realigned copies (maxout)."""

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.amax(dim=0)


class ConvFusion(nn.Module):
    """The paper's "embedding" fusion: a 1×1 convolution from the n·C concatenated channels back to C
    (adds parameters).

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
        return ConvFusion(channels, copies)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


def rotation_meanout(
    x: torch.Tensor,
    branches: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    group: RotationGroup,
    fusion: Callable[[torch.Tensor], torch.Tensor],
    rotate: bool = True,
    padding: Padding = "none",
) -> torch.Tensor:
    """Apply RM to ``x`` (B, C, H, W). One branch means shared weights (one batched call).

    ``padding`` matters only for angles that are not multiples of 90°: "none" keeps the map
    size (see :func:`complete_uncovered`), "full" zero-pads to ⌈√2·side⌉ and crops after
    realignment (the paper).
    """
    if x.dim() != 4:
        raise ValueError(f"RotationMeanout expects feature maps (B, C, H, W), got shape {tuple(x.shape)}")
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    elements = list(group.elements)
    n, b = len(elements), x.shape[0]
    interpolated = rotate and not group.is_exact
    if rotate and any(group.angle(g) % 180 == 90 for g in elements) and x.shape[-1] != x.shape[-2]:
        raise ValueError(
            f"RotationMeanout with 90° rotations needs square feature maps, got shape "
            f"{tuple(x.shape)}; use a square input size (e.g. 224×224)"
        )
    pad = _corner_padding(x.shape[-2], x.shape[-1]) if interpolated and padding == "full" else 0
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
    elif interpolated:
        cover = coverage(group, y.shape[-2:], device=y.device).to(y.dtype)
        if isinstance(fusion, MeanFusion):  # the same as completing, then averaging; cheaper
            return y.sum(dim=0) / cover.sum(dim=0)
        y = complete_uncovered(y, cover)
    # Fusion.
    return fusion(y)


def coverage(
    group: RotationGroup, size: Sequence[int], dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """(n, 1, 1, H, W): how much of each pixel copy i keeps through its rotation and back.

    The round trip g_i⁻¹(g_i 1) of a constant map of the output's size: 1 everywhere for the
    copies rotated by multiples of 90° (index permutation); for an interpolated angle 1 inside the
    map's rotated square, 0 in the corners the rotation leaves off the map (their content was
    lost in the expansion and their output in the realignment), bilinear fractions between.
    """
    ones = torch.ones(1, 1, *size, dtype=dtype, device=device)
    with torch.no_grad():
        return torch.stack([group.act(group.act(ones, g), group.inverse(g)) for g in group.elements])


def complete_uncovered(y: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Fill the part of each realigned copy that its rotation left off the map with the consensus.

    ``y`` (n, B, C, H, W) holds the realigned copies, ``cover`` (n, 1, 1, H, W) their
    :func:`coverage`. The consensus is m = Σ y_i / Σ cover_i, and copy i becomes
    y_i + (1 − cover_i)·m: unchanged where it covers the pixel, m where it does not. The mean of
    the completed copies is exactly m, so mean fusion averages, at each pixel, the copies that
    cover it (an identity block returns a constant map unchanged, corners included); the copies
    rotated by multiples of 90° cover every pixel, so the quarter turns in the group stay exact.
    """
    consensus = y.sum(dim=0) / cover.sum(dim=0)
    return y + (1 - cover) * consensus


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
        padding: for angles that are not multiples of 90° (k = 6, 8, …): "none" (default) keeps
            the map size, each interpolated copy counting where its rotation covers the map;
            "full" zero-pads every copy to ⌈√2·side⌉ first and crops after (the paper; ~2× work).
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
        padding: Padding = "none",
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
        self.group = make_group(k, dihedral)
        self.rotate = rotate
        self.padding = padding
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
        return rotation_meanout(
            x, self.branches, self.group, self.fusion, rotate=self.rotate, padding=self.padding
        )

    def extra_repr(self) -> str:
        return (
            f"group={self.group}, fusion={self.fusion_name}, rotate={self.rotate}, "
            f"share_weights={self.extra_branches is None}"
            + ("" if self.group.is_exact else f", padding={self.padding}")
        )


def insert_rotation_meanout(model: nn.Module, paths: Sequence[str], **rm_kwargs) -> nn.Module:
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


def embed_rotation_meanout(model: nn.Module, paths: Sequence[str], **rm_kwargs) -> nn.Module:
    """Deprecated name of :func:`insert_rotation_meanout` ("embed" now means computing a code)."""
    warnings.warn(
        "embed_rotation_meanout is renamed insert_rotation_meanout; the old name goes in rmnet 0.3",
        DeprecationWarning,
        stacklevel=2,
    )
    return insert_rotation_meanout(model, paths, **rm_kwargs)


EmbeddingFusion = ConvFusion  # deprecated name, kept for one release
