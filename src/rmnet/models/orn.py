"""Oriented Response Networks (Zhou, Ye, Qiu & Jiao, CVPR 2017) on ResNet18, in pure PyTorch.

**Active Rotating Filters (ARF).** A layer's learnable weight is (C_out, C_in, N_in, k, k): each
filter has N_in orientation channels. Every forward pass expands it into N rotated versions,
version r turned by r·360°/N spatially and with its orientation axis shifted cyclically by
r·N_in/N, and stacks them into one dense (C_out·N, C_in·N_in, k, k) weight for an ordinary
``conv2d``. Output channel c·N + r is feature c's response at orientation r. The spatial
rotation is an index permutation of the k×k taps (built once, applied with a gather whose
gradient autograd sums over the versions): for quarter turns ``rot90`` exactly; for 45° the taps
of each concentric square ring move (ring side − 1)/2 places around the ring (one place for a
3×3 kernel) — two such steps are exactly a quarter turn. N ∈ {1, 2, 4, 8}.

**ORPool / ORAlign.** After global average pooling each feature is an N-vector of orientation
responses. ORPool keeps its maximum; ORAlign rolls it so that its largest entry comes first
(the dominant orientation d* = argmax, shifted by −d*). Rotating the input by a quarter turn
rolls every vector by N/4 (and moves the maps), so both make the features invariant to quarter
turns: exactly when every strided layer keeps the sampling grid centred, i.e. for ResNet18
input sides ≡ 1 (mod 32) (33, 65, 225 px). ORAlign is ambiguous only at exact ties.

**This network.** ResNet18 with every convolution an ARF and orientation-shared BatchNorm (one
mean, variance and affine pair per feature, over its N orientation channels: per-channel BN
would break the equivariance). Channel scaling: a feature is worth N channels, so the stages
have round(64/√N)·(1, 2, 4, 8) features: N = 4 gives 32…256 features (128…1024 channels), the
same weights as ResNet18 (ORAlign's classifier reads 256·4 features) and about 4× its MACs.
**The 7×7 stem** is an ARF lifting layer (N_in = 1), rotated by the ring permutation like every
other kernel, so the whole network is equivariant (``stem="arf"``, the default). ``stem="plain"``
keeps torchvision's 7×7 stem of 64 plain channels instead (its ImageNet weights can load) and
lifts in layer1's first block; the network is then equivariant only from layer1 on.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.models.base import HashHead, ImageClassifier
from rmnet.models.factory import register_model
from rmnet.models.gcnn import expanded_once
from rmnet.models.pretrained import load_pretrained, read_state_dict
from rmnet.models.weights import IMAGENET, Weights, resolve_weights

ORIENTATIONS = (1, 2, 4, 8)
INVARIANCE = ("align", "pool", "none")


def _check_orientations(n: int) -> int:
    if n not in ORIENTATIONS:
        raise ValueError(
            f"ORN needs N in {ORIENTATIONS} orientations, got {n}: its filters turn by index permutation "
            "(90° exactly, 45° as a ring shift of the kernel taps)"
        )
    return n


def ring_step(kernel_size: int) -> torch.Tensor:
    """Source tap of each tap (k·k,) for one 45° counterclockwise step: each concentric square
    ring of an odd kernel moves by (side − 1)/2 places, so that two steps are ``rot90``."""
    k = kernel_size
    if k % 2 == 0:
        raise ValueError(f"45° turns of a kernel need an odd kernel size, got {k}")
    quarter = torch.rot90(torch.arange(k * k).view(k, k), 1).flatten()  # out[p] = in[quarter[p]]
    source = torch.arange(k * k)
    c = k // 2
    for d in range(1, c + 1):  # the ring at Chebyshev distance d from the centre, 8·d taps
        ring = [(c - d, c + j) for j in range(-d, d)] + [(c + i, c + d) for i in range(-d, d)]
        ring += [(c + d, c - j) for j in range(-d, d)] + [(c - i, c - d) for i in range(-d, d)]
        ring = [r * k + col for r, col in ring]
        position = {tap: i for i, tap in enumerate(ring)}
        quarter_shift = position[int(quarter[ring[0]])]  # rot90 takes ring[i] from ring[i ± 2d]
        half = (quarter_shift if quarter_shift <= 4 * d else quarter_shift - 8 * d) // 2  # ±d: 45°
        for i, tap in enumerate(ring):
            source[tap] = ring[(i + half) % len(ring)]
    return source


def rotation_sources(kernel_size: int, steps: int) -> torch.Tensor:
    """Source tap of each tap after ``steps`` 45° counterclockwise steps (quarter turns: rot90)."""
    k = kernel_size
    if steps % 2 == 0:
        return torch.rot90(torch.arange(k * k).view(k, k), steps // 2).flatten()
    source, step = torch.arange(k * k), ring_step(k)
    for _ in range(steps):
        source = source[step]
    return source


class ActiveRotatingFilter(nn.Module):
    """An ARF convolution: (B, C_in·N_in, H, W) → (B, C_out·N, H', W'), channels feature-major.

    ``in_orientations`` is N (an oriented input) or 1 (lifting plain channels, ORN's arf_config
    (1, N)). Versions are rotated by index gather on the weight; one dense ``conv2d`` applies them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        orientations: int = 4,
        in_orientations: int | None = None,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        n = _check_orientations(orientations)
        n_in = n if in_orientations is None else in_orientations
        if n_in not in (1, n):
            raise ValueError(f"an ARF takes 1 or N={n} input orientations, got {n_in}")
        if n == 8 and kernel_size % 2 == 0:
            raise ValueError(
                f"ORN with N=8 turns kernels by 45°: needs an odd kernel size, got {kernel_size}"
            )
        self.orientations, self.in_orientations = n, n_in
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, n_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # He initialisation (fan-out of the dense convolution, as torchvision's ResNet).
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (out_channels * n * kernel_size**2)))
        self.register_buffer("index", self._expansion_index(), persistent=False)

    def _expansion_index(self) -> torch.Tensor:
        """(N, N_in·k·k): for version r, the flat (orientation, tap) source of each target entry."""
        n, n_in, k = self.orientations, self.in_orientations, self.kernel_size
        rows = []
        for r in range(n):
            taps = rotation_sources(k, r * 8 // n)  # r·360°/N = r·(8/N) steps of 45°
            shift = r * n_in // n
            orientation = (torch.arange(n_in) - shift) % n_in  # target orientation o ← o − shift
            rows.append((orientation[:, None] * k * k + taps[None, :]).flatten())
        return torch.stack(rows)

    def expanded_weight(self) -> torch.Tensor:
        """The dense (C_out·N, C_in·N_in, k, k) weight: every filter in its N rotated versions."""
        c_out, c_in, n_in, k, _ = self.weight.shape
        versions = self.weight.flatten(2)[:, :, self.index]  # (C_out, C_in, N, N_in·k·k)
        versions = versions.view(c_out, c_in, self.orientations, n_in, k, k).transpose(1, 2)
        return versions.reshape(c_out * self.orientations, c_in * n_in, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(self.orientations)
        return F.conv2d(x, expanded_once(self, self.expanded_weight), bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        c_out, c_in, n_in, k, _ = self.weight.shape
        return (
            f"{c_in}, {c_out}, arf_config=({n_in}, {self.orientations}), kernel_size={k}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class OrientedBatchNorm(nn.BatchNorm3d):
    """BatchNorm of (B, C·N, H, W) oriented maps with statistics and affine shared by a feature's N
    orientation channels (so it commutes with the orientation shift)."""

    def __init__(self, features: int, orientations: int) -> None:
        super().__init__(features)
        self.orientations = orientations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unflatten(1, (-1, self.orientations))).flatten(1, 2)


def or_align(features: torch.Tensor, orientations: int) -> torch.Tensor:
    """ORAlign: (B, C·N) pooled responses → each feature's N-vector rolled to start at its maximum."""
    v = features.unflatten(1, (-1, orientations))  # (B, C, N)
    dominant = v.argmax(dim=-1, keepdim=True)
    index = (torch.arange(orientations, device=v.device) + dominant) % orientations
    return v.gather(-1, index).flatten(1)


def or_pool(features: torch.Tensor, orientations: int) -> torch.Tensor:
    """ORPool: (B, C·N) → (B, C), the maximum over each feature's orientations."""
    return features.unflatten(1, (-1, orientations)).amax(dim=-1)


class ORNBlock(nn.Module):
    """ResNet basic block of ARFs and oriented BatchNorm (``lift``: the input is plain channels)."""

    def __init__(self, inplanes: int, planes: int, stride: int, orientations: int, lift: bool = False):
        super().__init__()
        n, n_in = orientations, 1 if lift else None
        self.conv1 = ActiveRotatingFilter(
            inplanes, planes, 3, orientations=n, in_orientations=n_in, stride=stride, padding=1
        )
        self.bn1 = OrientedBatchNorm(planes, n)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = ActiveRotatingFilter(planes, planes, 3, orientations=n, padding=1)
        self.bn2 = OrientedBatchNorm(planes, n)
        self.downsample = None
        if stride != 1 or inplanes != planes or lift:
            self.downsample = nn.Sequential(
                ActiveRotatingFilter(
                    inplanes, planes, 1, orientations=n, in_orientations=n_in, stride=stride
                ),
                OrientedBatchNorm(planes, n),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class OrientedResponseNet(ImageClassifier):
    """ResNet of ARFs → global average pool → ORAlign / ORPool → [hash layer] → classifier."""

    def __init__(
        self,
        num_classes: int = 8,
        *,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        orientations: int = 4,
        width: int | None = None,
        invariance: str = "align",
        stem: str = "arf",
        stem_width: int = 64,
        in_chans: int = 3,
        hash_bits: int | None = None,
    ) -> None:
        super().__init__()
        n = _check_orientations(orientations)
        if invariance not in INVARIANCE:
            raise ValueError(f"unknown ORN invariance {invariance!r}; choose one of {', '.join(INVARIANCE)}")
        if stem not in ("arf", "plain"):
            raise ValueError(f"unknown ORN stem {stem!r}; choose 'arf' or 'plain'")
        width = width if width is not None else max(1, round(64 / math.sqrt(n)))
        self.orientations, self.invariance, self.stem = n, invariance, stem
        if stem == "arf":
            self.conv1 = ActiveRotatingFilter(
                in_chans, width, 7, orientations=n, in_orientations=1, stride=2, padding=3
            )
            self.bn1 = OrientedBatchNorm(width, n)
            inplanes = width
        else:  # torchvision's stem, so that ImageNet weights can start it
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            inplanes = stem_width
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for i, depth in enumerate(depths):
            planes = width * 2**i
            blocks = []
            for j in range(depth):
                lift = stem == "plain" and i == 0 and j == 0
                blocks.append(ORNBlock(inplanes, planes, 2 if i > 0 and j == 0 else 1, n, lift=lift))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.num_features = inplanes * (1 if invariance == "pool" else n)
        self.num_classes, self.hash_bits = num_classes, hash_bits
        self.head = HashHead(self.num_features, num_classes, hash_bits)

    def oriented_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's (B, C·N, H', W') oriented feature maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.layers:
            x = stage(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.oriented_maps(x).mean(dim=(-2, -1))  # (B, C·N)
        if self.invariance == "align":
            return or_align(pooled, self.orientations)
        if self.invariance == "pool":
            return or_pool(pooled, self.orientations)
        return pooled

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)


RESNET18_WEIGHTS = Weights("ResNet18_Weights.IMAGENET1K_V1")
_STEM_KEYS = ("conv1.", "bn1.")


@register_model("orn_resnet18")
def orn_resnet18(
    num_classes: int = 8,
    *,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | None = None,
    orientations: int = 4,
    width: int | None = None,
    invariance: str = "align",
    stem: str = "arf",
    in_chans: int = 3,
) -> OrientedResponseNet:
    """ORN on ResNet18: ARFs with N orientations (4 or 8; width round(64/√N) features), ORAlign,
    ORPool or neither. pretrained: an ORN weights file, or "imagenet" with stem="plain" (the stem)."""
    model = OrientedResponseNet(
        num_classes,
        orientations=orientations,
        width=width,
        invariance=invariance,
        stem=stem,
        in_chans=in_chans,
        hash_bits=hash_bits,
    )
    if pretrained is True or (pretrained is not None and str(pretrained) == IMAGENET):
        if stem != "plain":
            raise ValueError(
                "orn_resnet18 with its ARF stem has no ImageNet weights: pass stem='plain' to start "
                "torchvision's stem from ResNet18's ImageNet weights, or give an ORN weights file"
            )
        path = resolve_weights(pretrained, RESNET18_WEIGHTS, "orn_resnet18")
        stem_weights = {k: v for k, v in read_state_dict(path).items() if k.startswith(_STEM_KEYS)}
        model.load_state_dict(stem_weights, strict=False)
    elif pretrained is not None:
        load_pretrained(model, resolve_weights(pretrained, None, "orn_resnet18"), "head.fc")
    return model
