"""ARL-CNN / ARLNet (Zhang, Xie, Xia & Shen, IEEE TMI 38(9), 2019): attention residual learning.

An ARL block is a ResNet basic block whose output gains an attention term computed from the
block's own features, with no convolution of its own (one learnable scalar α per block):

    y = ReLU( x' + F(x) + α · A(F(x)) ⊙ x' )

F is the residual branch (after its last BatchNorm), x' the shortcut (x, or its downsampled
projection) and A a softmax normalisation of F(x): "the feature maps learned by a high layer
generate the attention map for a low layer". The paper's full text was not reachable here; the
reading we chose (docs/methods.md) follows the public ports: a softmax over the channels at
each position (``attention="channel"``, torch's Softmax2d), α learnable and started at 0.001
(the ports' value, there fixed). ``attention="spatial"`` normalises each channel over its
positions instead. Both commute with rotations of the feature map, so RM can wrap ARL blocks.

The networks are registered as presets (``arlnet18``, ``arlnet34`` in rmnet.models.presets), so
RM, hashing, ImageNet weights (the block adds no convolution: torchvision's ResNet file loads,
the α's keep their initial value) and ``width`` work exactly as for ResNet18/34.
"""

from __future__ import annotations

import torch
from torch import nn

from rmnet.models.resnets import BasicBlock, ConvFactory, resnet

ATTENTION_AXES = ("channel", "spatial")


def attention_map(features: torch.Tensor, kind: str) -> torch.Tensor:
    """A(F): softmax of (B, C, H, W) features over the channels at each position, or over the
    positions of each channel (``kind="spatial"``)."""
    if _checked(kind) == "channel":
        return torch.softmax(features, dim=1)
    return torch.softmax(features.flatten(-2), dim=-1).view_as(features)


def _checked(kind: str) -> str:
    if kind not in ATTENTION_AXES:
        raise ValueError(f"unknown ARL attention {kind!r}; choose one of {', '.join(ATTENTION_AXES)}")
    return kind


class ARLBlock(BasicBlock):
    """A basic block with attention residual learning: y = ReLU(x' + F(x) + α·A(F(x))⊙x')."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv: ConvFactory = nn.Conv2d,
        *,
        attention: str = "channel",
        alpha_init: float = 0.001,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, conv=conv)
        self.attention = _checked(attention)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        identity = self.shortcut(x)
        return self.relu(out + identity + self.alpha * attention_map(out, self.attention) * identity)

    def extra_repr(self) -> str:
        return f"attention={self.attention!r}"


def arlnet(depth: int = 18, *, attention: str = "channel", alpha_init: float = 0.001, **kwargs) -> nn.Module:
    """ARLNet18/34: torchvision's ResNet layout with ARL blocks (``width`` and the rest as in resnet)."""
    options = dict(attention=_checked(attention), alpha_init=alpha_init)
    return resnet(depth, block=ARLBlock, block_options=options, **kwargs)
