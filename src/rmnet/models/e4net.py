"""E4-Net (He, Chen, Lin & Yang, "Efficient Equivariant Network", NeurIPS 2021) and its C4 GCNN
baseline, both as ResNet18 at ImageNet-style input.

Feature maps live on the group C4 (rotations by quarter turns), as in rmnet.models.gcnn:
(B, C, 4, H, W), plane r being the response at orientation r. The lifting convolution, group
convolutions, group BatchNorm and the group action are gcnn's, so the two models share one
definition of equivariance.

**The E4 layer** replaces a 3×3 group convolution by a dynamic, equivariant kernel (an
involution on the group): from the input, a C4 1×1 convolution (C → C/reduction), GroupNorm
(statistics per channel over its 4 planes and space), ReLU and a 1×1 linear map shared by the
4 planes produce, at every pixel and orientation, k·k kernel values for each of
C_out/group_channels kernel groups. The values of orientation r are laid out as a k×k kernel
and turned by r quarter turns, and applied to the k×k neighbourhood (``unfold``) of a C4 1×1
projection v of the input, each kernel shared by ``group_channels`` output channels:

    out[c, r, p] = Σ_o K_r(p)[o] · v[c, r, p + o]

Because the kernel turns with the orientation it is generated for, the layer commutes with the
C4 action, with far fewer weights than a group convolution.

**Blocks and network.** A basic block is group conv 3×3 (stride s) → BN → ReLU → E4 layer → BN,
plus the shortcut (group conv 1×1, stride s, and BN when the shape changes). The reference code
is CIFAR-style (3×3 stem, no max-pool, stride-1 convolution followed by 2×2 max-pooling); for
224 px input we use ResNet18's layout: a 7×7 lifting stem with stride 2, a 3×3 stride-2 max-pool,
and strided convolutions. Features: max over the 4 orientations, then the spatial mean:
invariant to quarter turns, exactly when every strided layer keeps the sampling grid centred
(input sides ≡ 1 mod 32: 33, 65, 225 px). Width 32·(1, 2, 4, 8) features per orientation, as
the reference's C4 ResNet18 (a 3×3 group convolution then has ResNet18's weight count).

``gcnn_resnet18`` is the same network with a group convolution in place of the E4 layer: the
reference's C4ResNet18, i.e. the GCNN row of the paper's Table 8 on a ResNet18 baseline.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.groups import CyclicGroup
from rmnet.models.base import HashHead, ImageClassifier
from rmnet.models.factory import register_model
from rmnet.models.gcnn import GroupBatchNorm, GroupConvolution, LiftingConvolution
from rmnet.models.pretrained import load_pretrained
from rmnet.models.weights import resolve_weights

C4 = CyclicGroup(4)


class E4Convolution(nn.Module):
    """The E4 layer on C4 group maps: (B, C_in, 4, H, W) → (B, C_out, 4, H, W), stride 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        reduction: float = 2,
        group_channels: int = 2,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"the E4 layer needs an odd kernel size, got {kernel_size}")
        if out_channels % group_channels:
            raise ValueError(
                f"E4 layer: {out_channels} output channels cannot be split into groups of {group_channels}"
            )
        hidden = max(1, int(in_channels // reduction))
        self.kernel_size, self.group_channels = kernel_size, group_channels
        self.groups = out_channels // group_channels
        self.values = GroupConvolution(C4, in_channels, out_channels, kernel_size=1)
        self.reduce = GroupConvolution(C4, in_channels, hidden, kernel_size=1)
        self.norm = nn.GroupNorm(hidden, hidden)  # per channel, over its 4 planes and space
        self.span = nn.Conv3d(hidden, kernel_size**2 * self.groups, 1)  # shared by the 4 planes

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, groups, k·k, 4, H, W): the kernel at every pixel and orientation, turned by r·90°."""
        b, _, n, h, w = x.shape
        k = self.kernel_size
        raw = self.span(F.relu(self.norm(self.reduce(x)))).view(b, self.groups, k, k, n, h, w)
        turned = torch.stack([torch.rot90(raw[:, :, :, :, r], r, dims=(2, 3)) for r in range(n)], dim=4)
        return turned.reshape(b, self.groups, k * k, n, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, h, w = x.shape
        k = self.kernel_size
        v = self.values(x)  # (B, C_out, 4, H, W)
        patches = F.unfold(v.flatten(1, 2), k, padding=k // 2)  # (B, C_out·4·k·k, H·W)
        patches = patches.view(b, self.groups, self.group_channels, n, k * k, h, w)
        out = torch.einsum("bgknhw,bgcnkhw->bgcnhw", self.kernels(x), patches)
        return out.reshape(b, -1, n, h, w)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, groups={self.groups}, group_channels={self.group_channels}"


def initialise_group_convolutions(module: nn.Module) -> None:
    """ResNet's initialisation (torchvision's) for every group convolution in ``module``: He normal
    with the fan-out of the dense convolution it becomes (C_out·|G|·k²), biases 0."""
    for m in module.modules():
        if isinstance(m, (LiftingConvolution, GroupConvolution)):
            c_out, k = m.weight.shape[0], m.weight.shape[-1]
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / (c_out * C4.order * k * k)))
            nn.init.zeros_(m.bias)


class C4BasicBlock(nn.Module):
    """Group conv 3×3 → BN → ReLU → (E4 layer | group conv 3×3) → BN, plus the shortcut, ReLU.

    ``lift``: the block takes plain maps (B, C, H, W) and lifts them (its 3×3 and shortcut
    convolutions are lifting convolutions): the first block of a C4 region inside a CNN."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        e4: bool = True,
        dropout: float = 0.0,
        lift: bool = False,
        **e4_options,
    ) -> None:
        super().__init__()
        conv = LiftingConvolution if lift else GroupConvolution  # lift: plain (B, C, H, W) input
        self.conv1 = conv(C4, inplanes, planes, 3, stride=stride, padding=1)
        self.bn1 = GroupBatchNorm(planes)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        if e4:
            self.conv2 = E4Convolution(planes, planes, **e4_options)
        else:
            self.conv2 = GroupConvolution(C4, planes, planes, 3, padding=1)
        self.bn2 = GroupBatchNorm(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes or lift:
            self.downsample = nn.Sequential(
                conv(C4, inplanes, planes, 1, stride=stride), GroupBatchNorm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.dropout(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class C4ResNet(ImageClassifier):
    """Lifting stem (7×7, stride 2) → max-pool → 4 stages of C4 blocks → max over orientations →
    spatial mean → [hash layer] → classifier. ``e4=False`` gives the plain C4 GCNN ResNet."""

    def __init__(
        self,
        num_classes: int = 8,
        *,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 32,
        e4: bool = True,
        in_chans: int = 3,
        hash_bits: int | None = None,
        dropout: float = 0.0,
        **e4_options,
    ) -> None:
        super().__init__()
        self.conv1 = LiftingConvolution(C4, in_chans, width, kernel_size=7, stride=2, padding=3)
        self.bn1 = GroupBatchNorm(width)
        stages, inplanes = [], width
        for i, depth in enumerate(depths):
            planes = width * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(C4BasicBlock(inplanes, planes, stride, e4=e4, dropout=dropout, **e4_options))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(stages)
        self.num_features, self.num_classes, self.hash_bits = inplanes, num_classes, hash_bits
        self.head = HashHead(inplanes, num_classes, hash_bits)
        self._initialise()

    def _initialise(self) -> None:
        """ResNet's initialisation (torchvision's): He normal with the fan-out of the dense
        convolution a group convolution becomes (C_out·|G|·k²), biases 0. gcnn's own default (PyTorch's
        conv init) is ~2.5× smaller, which under BatchNorm means a ~6× larger effective step."""
        initialise_group_convolutions(self)

    def group_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's C4 group maps (B, C, 4, H', W'), equivariant to quarter turns of x."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))  # each orientation plane, 3×3 stride 2
        for stage in self.layers:
            x = stage(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.group_maps(x).amax(dim=2).mean(dim=(-2, -1))

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)


def _load(model: C4ResNet, pretrained: str | os.PathLike | None, name: str) -> C4ResNet:
    if pretrained is not None:  # no published ImageNet weights: a file of this model only
        load_pretrained(model, resolve_weights(pretrained, None, name), "head.fc")
    return model


@register_model("e4net_resnet18")
def e4net_resnet18(
    num_classes: int = 8,
    *,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | None = None,
    width: int = 32,
    in_chans: int = 3,
    kernel_size: int = 3,
    reduction: float = 2,
    group_channels: int = 2,
    dropout: float = 0.0,
) -> C4ResNet:
    """E4-Net (C4) ResNet18: group conv + E4 layer blocks (reference defaults: k 3, reduction 2,
    2 channels per kernel), invariant to quarter turns."""
    e4 = dict(kernel_size=kernel_size, reduction=reduction, group_channels=group_channels)
    model = C4ResNet(num_classes, width=width, in_chans=in_chans, hash_bits=hash_bits, dropout=dropout, **e4)
    return _load(model, pretrained, "e4net_resnet18")


@register_model("gcnn_resnet18")
def gcnn_resnet18(
    num_classes: int = 8,
    *,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | None = None,
    width: int = 32,
    in_chans: int = 3,
    dropout: float = 0.0,
) -> C4ResNet:
    """A C4 GCNN ResNet18 (lifting + group convolutions, E4-Net's C4ResNet18 baseline)."""
    model = C4ResNet(
        num_classes, width=width, e4=False, in_chans=in_chans, hash_bits=hash_bits, dropout=dropout
    )
    return _load(model, pretrained, "gcnn_resnet18")
