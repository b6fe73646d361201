"""A group-equivariant CNN (Cohen & Welling, 2016) built from scratch, as in the source blog.

Feature maps on the group are tensors (B, C, |G|, H, W): one plane per group element. An
element g acts on them by moving every plane (g·f)(h, x) = f(g⁻¹h, g⁻¹x): the planes rotate
spatially and the group axis is permuted. A lifting convolution turns an image into such maps
(one transformed copy of each kernel per element); group convolutions map them to new ones
(the kernel is itself a function on the group, transformed the same way). Both commute with
the action, so pooling over space and the group axis leaves features invariant to G. Group
BatchNorm (statistics shared by the |G| planes of a channel) and ReLU commute with it too.

Only groups whose elements permute pixels exactly (C_1, C_2, C_4, D_1, D_2, D_4) are allowed:
a 5×5 kernel rotated by 45° is not a 5×5 kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rmnet.groups import CyclicGroup, DihedralGroup, RotationGroup, act_all
from rmnet.models.base import HashHead, ImageClassifier
from rmnet.models.factory import register_model


def act_on_group_maps(group: RotationGroup, f: torch.Tensor, g: int) -> torch.Tensor:
    """The regular action g·f on maps (…, |G|, H, W): plane h of the result is g·f[g⁻¹h]."""
    if f.shape[-3] != group.order:
        raise ValueError(
            f"group axis (dim -3) has size {f.shape[-3]}, but {group} has {group.order} elements"
        )
    source = [group.compose(group.inverse(g), h) for h in group.elements]
    return group.act(f[..., source, :, :], g)


def expanded_once(module: nn.Module, expand) -> torch.Tensor:
    """``expand()`` (a layer's dense weight built from its parameter), kept while the layer runs
    without gradients and its weight is unchanged: evaluation at many angles expands it once.
    In training (or with gradients on) it is rebuilt every call, so autograd sees it."""
    if module.training or torch.is_grad_enabled():
        module._expanded = None
        return expand()
    weight = module.weight
    key = (weight._version, weight.data_ptr(), weight.device, weight.dtype)
    cached = getattr(module, "_expanded", None)
    if cached is None or cached[0] != key:
        cached = (key, expand())
        module._expanded = cached
    return cached[1]


def _check_exact(group: RotationGroup) -> None:
    if not group.is_exact:
        raise ValueError(
            f"{group} does not act on the pixel grid exactly (its rotations are not multiples of 90°); "
            "group convolutions here need k in (1, 2, 4)"
        )


class LiftingConvolution(nn.Module):
    """Image (B, C_in, H, W) → group maps (B, C_out, |G|, H', W'): one g-transformed kernel per g."""

    def __init__(
        self,
        group: RotationGroup,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        _check_exact(group)
        self.group, self.stride, self.padding = group, stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))  # one per channel, shared by every g
        _reset_parameters(self.weight, self.bias)

    def transformed_weight(self) -> torch.Tensor:
        """(C_out·|G|, C_in, k, k): output channel c, element g holds g·weight[c]."""
        stacked = act_all(self.group, self.weight)  # (|G|, C_out, C_in, k, k)
        return stacked.transpose(0, 1).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.group.order
        bias = self.bias.repeat_interleave(n)
        y = F.conv2d(x, expanded_once(self, self.transformed_weight), bias, self.stride, self.padding)
        return y.unflatten(1, (-1, n))  # (B, C_out, |G|, H', W')

    def extra_repr(self) -> str:
        c_out, c_in, k, _ = self.weight.shape
        return f"{self.group}, {c_in}, {c_out}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class GroupConvolution(nn.Module):
    """Group maps (B, C_in, |G|, H, W) → (B, C_out, |G|, H', W'); the kernel lives on G × R²."""

    def __init__(
        self,
        group: RotationGroup,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        _check_exact(group)
        self.group, self.stride, self.padding = group, stride, padding
        shape = (out_channels, in_channels, group.order, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(out_channels))
        _reset_parameters(self.weight, self.bias)

    def transformed_weight(self) -> torch.Tensor:
        """(C_out·|G|, C_in·|G|, k, k): output (c, g) holds g·weight[c], its group axis permuted."""
        stacked = torch.stack([act_on_group_maps(self.group, self.weight, g) for g in self.group.elements])
        return stacked.transpose(0, 1).flatten(0, 1).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.group.order
        if x.dim() != 5 or x.shape[2] != n:
            raise ValueError(f"GroupConvolution expects (B, C, {n}, H, W) group maps, got {tuple(x.shape)}")
        bias = self.bias.repeat_interleave(n)
        weight = expanded_once(self, self.transformed_weight)
        y = F.conv2d(x.flatten(1, 2), weight, bias, self.stride, self.padding)
        return y.unflatten(1, (-1, n))

    def extra_repr(self) -> str:
        c_out, c_in, _, k, _ = self.weight.shape
        return f"{self.group}, {c_in}, {c_out}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


def _reset_parameters(weight: nn.Parameter, bias: nn.Parameter) -> None:
    """nn.Conv2d's initialisation; fan-in counts the group axis of a group kernel."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    fan_in = weight[0].numel()
    nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


class GroupBatchNorm(nn.BatchNorm3d):
    """BatchNorm of group maps (B, C, |G|, H, W): one mean, variance and affine pair per channel,
    shared by all |G| planes (statistics over batch, group axis and space), so it commutes with G."""


class GroupLayerNorm(nn.Module):
    """The source blog's normalisation: layer norm over (C, |G|, H, W) without affine weights."""

    def __init__(self, channels: int) -> None:  # the signature of GroupBatchNorm; nothing to learn
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[1:])


NORMS = {"batch": GroupBatchNorm, "layer": GroupLayerNorm}


class GroupEquivariantCNN(ImageClassifier):
    """Lifting conv block → group conv blocks (conv, norm, ReLU) → mean over G and space → linear.

    The default layout is the ``small_cnn`` preset's (four 5×5 blocks with strides 1, 2, 2, 1 and
    BatchNorm), so the two differ only in the group convolutions. ``strides=(1,) * 5,
    padding=0, norm="layer"`` is the source blog's layout. A stride-2 layer is exactly
    equivariant when its input side is odd (its sampling grid then holds the centre): two of
    them need a side ≡ 1 (mod 4), e.g. 21 or 29. Features, codes and logits are invariant to G.
    """

    def __init__(
        self,
        group: RotationGroup,
        num_classes: int = 10,
        *,
        in_chans: int = 3,
        width: int = 16,
        strides: tuple[int, ...] = (1, 2, 2, 1),
        kernel_size: int = 5,
        padding: int | None = None,
        norm: str = "batch",
        hash_bits: int | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r} for the GCNN; choose one of {', '.join(NORMS)}")
        padding = kernel_size // 2 if padding is None else padding
        self.group = group
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, stride in enumerate(strides):
            conv = LiftingConvolution if i == 0 else GroupConvolution
            self.convs.append(conv(group, in_chans if i == 0 else width, width, kernel_size, stride, padding))
            self.norms.append(NORMS[norm](width))
        self.num_features, self.hash_bits, self.num_classes = width, hash_bits, num_classes
        self.head = HashHead(width, num_classes, hash_bits)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, width), invariant to the group."""
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x)))  # (B, width, |G|, H', W')
        return x.mean(dim=(-3, -2, -1))

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(features)


@register_model("gcnn_c4")
def gcnn_c4(num_classes: int = 8, *, hash_bits: int | None = None, **kwargs) -> GroupEquivariantCNN:
    """A C4 GCNN with 16 channels (as in the source blog) in the small_cnn layout."""
    return GroupEquivariantCNN(CyclicGroup(4), num_classes, hash_bits=hash_bits, **kwargs)


@register_model("gcnn_d4")
def gcnn_d4(num_classes: int = 8, *, hash_bits: int | None = None, **kwargs) -> GroupEquivariantCNN:
    """The same over D4 (rotations and mirror images): dermoscopy has no handedness either."""
    return GroupEquivariantCNN(DihedralGroup(4), num_classes, hash_bits=hash_bits, **kwargs)
