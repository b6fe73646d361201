"""Rotation groups acting on feature maps: the cyclic group C_k and the dihedral group D_k.

An element is an integer index. It acts on the last two axes of a tensor (…, H, W), seen as
an image with row 0 at the top; positive angles turn the picture counterclockwise, as
``torch.rot90`` does. Multiples of 90° act by exact index permutation; other angles resample
bilinearly, so the action is exact only up to interpolation and loses the corners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate the last two axes of ``x`` counterclockwise by ``angle`` degrees about the centre."""
    turns = round(angle / 90.0)
    if math.isclose(angle, 90.0 * turns, abs_tol=1e-9):
        turns %= 4
        if turns % 2 and x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"cannot rotate a non-square feature map of shape {tuple(x.shape)} by {angle:g}° "
                "exactly; crop or resize the input to a square (H == W) first"
            )
        return torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return _rotate_bilinear(x, angle)


def _rotate_bilinear(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Resampled in at least float32: a half-precision sampling grid (AMP) would misplace pixels."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return _rotate_bilinear(x.float(), angle).to(x.dtype)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, 1, h, w) if x.dim() != 4 else x
    t = math.radians(angle)
    cos, sin = math.cos(t), math.sin(t)
    # affine_grid maps output coordinates (x right, y down, in [-1, 1]) to input coordinates.
    theta = torch.tensor(
        [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=flat.dtype, device=flat.device
    )
    theta = theta.unsqueeze(0).expand(flat.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(*lead, h, w) if x.dim() != 4 else out


def mirror(x: torch.Tensor) -> torch.Tensor:
    """Reflect the last axis (left-right), the dihedral group's generating mirror."""
    return torch.flip(x, dims=(-1,))


class RotationGroup:
    """A finite group of rotations (and mirrors) of the plane, acting on the last two axes.

    Elements are integers 0..order-1 with 0 the identity. Subclasses define the algebra
    (``order``, ``compose``, ``inverse``) and the action on maps (``act``).
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"{type(self).__name__} needs k >= 1 rotations, got k={k}")
        self.k = k

    @property
    def order(self) -> int:
        raise NotImplementedError

    @property
    def elements(self) -> range:
        return range(self.order)

    @property
    def identity(self) -> int:
        return 0

    @property
    def is_exact(self) -> bool:
        """True when every element acts by index permutation (rotations by multiples of 90°)."""
        return 4 % self.k == 0

    def angle(self, g: int) -> float:
        """The rotation angle of g in degrees (after its mirror, for a reflection)."""
        raise NotImplementedError

    def compose(self, a: int, b: int) -> int:
        """The element a·b (apply b first, then a)."""
        raise NotImplementedError

    def inverse(self, g: int) -> int:
        raise NotImplementedError

    def act(self, x: torch.Tensor, g: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.k == self.k  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.k))


class CyclicGroup(RotationGroup):
    """C_k: the k rotations by multiples of 360°/k. Element g is the rotation by g·360°/k."""

    @property
    def order(self) -> int:
        return self.k

    def angle(self, g: int) -> float:
        return 360.0 * (g % self.k) / self.k

    def compose(self, a: int, b: int) -> int:
        return (a + b) % self.k

    def inverse(self, g: int) -> int:
        return (-g) % self.k

    def act(self, x: torch.Tensor, g: int) -> torch.Tensor:
        return rotate(x, self.angle(g))


class DihedralGroup(RotationGroup):
    """D_k: k rotations and k reflections (2k elements).

    Element g = r + k·m stands for "mirror m times (0 or 1), then rotate by r·360°/k".
    """

    @property
    def order(self) -> int:
        return 2 * self.k

    def _split(self, g: int) -> tuple[int, int]:
        g %= self.order
        return g % self.k, g // self.k

    def angle(self, g: int) -> float:
        return 360.0 * self._split(g)[0] / self.k

    def is_mirrored(self, g: int) -> bool:
        return self._split(g)[1] == 1

    def compose(self, a: int, b: int) -> int:
        (r1, m1), (r2, m2) = self._split(a), self._split(b)
        r = (r1 - r2 if m1 else r1 + r2) % self.k
        return r + self.k * (m1 ^ m2)

    def inverse(self, g: int) -> int:
        r, m = self._split(g)
        return g % self.order if m else (-r) % self.k

    def act(self, x: torch.Tensor, g: int) -> torch.Tensor:
        r, m = self._split(g)
        return rotate(mirror(x) if m else x, 360.0 * r / self.k)


def make_group(k: int = 4, dihedral: bool = False) -> RotationGroup:
    """C_k, or D_k when ``dihedral`` (rotations and their mirror images)."""
    return DihedralGroup(k) if dihedral else CyclicGroup(k)


def act_all(group: RotationGroup, x: torch.Tensor, elements: Sequence[int] | None = None) -> torch.Tensor:
    """Stack g·x for every element g along a new leading axis: (|G|, …, H, W)."""
    elements = group.elements if elements is None else elements
    return torch.stack([group.act(x, g) for g in elements])
