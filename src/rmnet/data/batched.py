"""The paper's train and eval transforms on a whole batch at once, on any device (CPU or GPU).

Images decoded and resized once (the first steps of ``build_transform``) are packed into one flat
uint8 tensor (:class:`PackedImages`). A batch is then a few tensor operations with per-image random
parameters, the same ones ``build_transform`` draws per image: a rotation by a random angle
(bilinear, zeros outside, before cropping, as ``v2.RandomRotation``) or by a random quarter turn
(exact, as ``torch.rot90``), a random crop, one of
identity / horizontal flip / vertical flip, float conversion and ImageNet normalisation, returned
channels-last. Crops and flips gather exactly the pixels the per-image pipeline would; rotation
samples as torchvision's ``rotate`` does (its fill mask included), up to float rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch

from rmnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformRecipe

CHANNELS = 3


@dataclass(frozen=True)
class PackedImages:
    """Decoded RGB images of any sizes in one tensor: image n is ``pixels[offsets[n]:]`` read as
    (heights[n], widths[n], 3) uint8, so one gather reads pixels of a whole batch."""

    pixels: torch.Tensor  # uint8, every image's (H, W, 3) bytes one after another
    offsets: torch.Tensor  # int64 (N,): where each image starts in pixels
    heights: torch.Tensor  # int64 (N,)
    widths: torch.Tensor  # int64 (N,)
    labels: torch.Tensor  # int64 (N,)

    @classmethod
    def from_arrays(cls, images: list, labels: list[int]) -> PackedImages:
        """Pack uint8 (H, W, 3) arrays or tensors with their labels."""
        arrays = [torch.as_tensor(image) for image in images]
        if any(a.dtype != torch.uint8 or a.ndim != 3 or a.shape[2] != CHANNELS for a in arrays):
            raise ValueError("PackedImages packs uint8 RGB images of shape (H, W, 3)")
        sizes = torch.tensor([a.numel() for a in arrays], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        pixels = torch.cat([a.reshape(-1) for a in arrays]) if arrays else torch.zeros(0, dtype=torch.uint8)
        return cls(
            pixels=pixels,
            offsets=offsets,
            heights=torch.tensor([a.shape[0] for a in arrays], dtype=torch.int64),
            widths=torch.tensor([a.shape[1] for a in arrays], dtype=torch.int64),
            labels=torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
        )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self))

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def to(self, device: torch.device | str) -> PackedImages:
        return PackedImages(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass(frozen=True)
class BatchParameters:
    """Per-image random choices of one batch: rotation angle (degrees) or quarter turns, crop corner
    (in the turned image), flip (0 none, 1 horizontal, 2 vertical)."""

    angle: torch.Tensor | None  # float (B,), or None without rotation
    top: torch.Tensor  # int64 (B,)
    left: torch.Tensor  # int64 (B,)
    flip: torch.Tensor  # int64 (B,)
    turns: torch.Tensor | None = None  # int64 (B,): counter-clockwise quarter turns, as torch.rot90


def draw_parameters(
    recipe: TransformRecipe, heights: torch.Tensor, widths: torch.Tensor, generator=None
) -> BatchParameters:
    """What ``build_transform(recipe)`` draws per image, for a batch at once (eval: the centre crop)."""
    size, count, device = recipe.image_size, len(heights), heights.device
    if not recipe.train:  # torchvision's centre crop rounds half to even, as torch.round does
        top = torch.round((heights - size) / 2.0).long()
        left = torch.round((widths - size) / 2.0).long()
        return BatchParameters(None, top, left, torch.zeros_like(top))
    u = torch.rand(count, 5, device=device, generator=generator)
    angle, turns = None, None
    if recipe.quarter_turns:
        turns = (u[:, 4] * 4).long().clamp_max(3)
        odd = turns % 2 == 1  # the turned image's sides are swapped
        heights, widths = torch.where(odd, widths, heights), torch.where(odd, heights, widths)
    elif recipe.max_angle > 0:
        low, high = (0.0, 360.0) if recipe.max_angle >= 180 else (-recipe.max_angle, recipe.max_angle)
        angle = low + u[:, 0] * (high - low)
    top = torch.minimum((u[:, 1] * (heights - size + 1)).long(), heights - size)
    left = torch.minimum((u[:, 2] * (widths - size + 1)).long(), widths - size)
    flip = (u[:, 3] * 3).long().clamp_max(2) if recipe.flips else torch.zeros_like(top)
    return BatchParameters(angle, top, left, flip, turns)


def transform_batch(
    packed: PackedImages, index: torch.Tensor, recipe: TransformRecipe, generator=None
) -> torch.Tensor:
    """Images ``index`` of ``packed`` through ``recipe``: float32 (B, 3, S, S), channels-last."""
    index = index.to(packed.device)
    heights, widths = packed.heights[index], packed.widths[index]
    params = draw_parameters(recipe, heights, widths, generator)
    return apply_parameters(packed, index, recipe.image_size, params)


def apply_parameters(
    packed: PackedImages, index: torch.Tensor, size: int, params: BatchParameters
) -> torch.Tensor:
    """Rotate, crop, flip and normalise images ``index`` as ``params`` say."""
    heights, widths, offsets = packed.heights[index], packed.widths[index], packed.offsets[index]
    steps = torch.arange(size, device=packed.device)
    rows = params.top[:, None] + torch.where(params.flip[:, None] == 2, size - 1 - steps, steps)
    cols = params.left[:, None] + torch.where(params.flip[:, None] == 1, size - 1 - steps, steps)
    rows, cols = rows[:, :, None], cols[:, None, :]  # (B, S, 1), (B, 1, S)
    geometry = offsets[:, None, None], heights[:, None, None], widths[:, None, None]
    if params.turns is not None:
        rows, cols = _unturned(rows, cols, params.turns[:, None, None], *geometry[1:])
    if params.angle is None:
        pixels = _gather(packed.pixels, *geometry, rows, cols)
    else:
        pixels = _rotated(packed.pixels, *geometry, rows, cols, params.angle[:, None, None])
    return normalise(pixels).permute(0, 3, 1, 2)  # (B, 3, S, S), channels-last in memory


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3) to float ImageNet-normalised, with v2.ToDtype(scale=True) and v2.Normalize's ops."""
    mean, std = _mean_std(pixels.device)
    return pixels.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet's mean and std on ``device``, made once: a copy to a GPU per batch would wait for it."""
    return torch.tensor(IMAGENET_MEAN, device=device), torch.tensor(IMAGENET_STD, device=device)


def _gather(pixels, offsets, heights, widths, rows, cols) -> torch.Tensor:
    """uint8 (B, S, S, 3): pixel (rows, cols) of each image (coordinates inside the image)."""
    del heights
    start = offsets + (rows * widths + cols) * CHANNELS
    return pixels[start[..., None] + torch.arange(CHANNELS, device=pixels.device)]


def _unturned(rows, cols, turns, heights, widths) -> tuple[torch.Tensor, torch.Tensor]:
    """Where pixel (rows, cols) of ``torch.rot90(image, turns)`` lies in the image itself."""
    by_turn = (  # (row, column) in the image for 1, 2 and 3 counter-clockwise quarter turns
        (cols, widths - 1 - rows),
        (heights - 1 - rows, widths - 1 - cols),
        (heights - 1 - cols, rows),
    )
    source_rows, source_cols = torch.broadcast_tensors(rows, cols)  # no turn
    for k, (row, col) in enumerate(by_turn, 1):
        source_rows = torch.where(turns == k, row, source_rows)
        source_cols = torch.where(turns == k, col, source_cols)
    return source_rows, source_cols


def _rotated(pixels, offsets, heights, widths, rows, cols, angle) -> torch.Tensor:
    """uint8 (B, S, S, 3): pixel (rows, cols) of each image rotated by ``angle`` degrees
    counter-clockwise about its centre, bilinear with zeros outside, rounded as torchvision does."""
    theta = torch.deg2rad(torch.remainder(angle, 360.0))
    cos, sin = torch.cos(theta), torch.sin(theta)
    x = cols + 0.5 - widths / 2  # pixel centres relative to the image centre
    y = rows + 0.5 - heights / 2
    source_x = cos * x - sin * y + widths / 2 - 0.5
    source_y = sin * x + cos * y + heights / 2 - 0.5
    x0, y0 = torch.floor(source_x), torch.floor(source_y)
    fx, fy = source_x - x0, source_y - y0
    x0, y0 = x0.long(), y0.long()
    value = torch.zeros((*source_x.shape, CHANNELS), device=pixels.device)
    coverage = torch.zeros_like(source_x)
    corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    for dy, dx, weight in corners:
        xs, ys = x0 + dx, y0 + dy
        inside = (xs >= 0) & (xs < widths) & (ys >= 0) & (ys < heights)
        weight = weight * inside
        neighbour = _gather(pixels, offsets, heights, widths, ys.clamp(0) * inside, xs.clamp(0) * inside)
        value += weight[..., None] * neighbour
        coverage += weight
    return (value * coverage[..., None]).round_().to(torch.uint8)
