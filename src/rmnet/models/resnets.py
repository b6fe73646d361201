"""ResNets in torchvision's layout at any width, with the convolution, pooling and block as arguments.

The compared methods that change one ingredient of a ResNet (ARLNet its block, CyCNN its padding,
STN nothing but its input) build their backbone here. The module names and parameter shapes are
torchvision's (``conv1, bn1, layer1.0.conv1, …, layer1.0.downsample.0, fc``), so at ``width=64``
torchvision's ImageNet state_dict loads unchanged; a smaller ``width`` gives the same network
with fewer channels (64, 128, 256, 512 scaled by width/64), for tests and CPU benchmarks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import torch
from torch import nn

ConvFactory = Callable[..., nn.Conv2d]


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv: ConvFactory = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the residual branch after its last BatchNorm."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class ResNet(nn.Module):
    """conv1 (7×7, stride 2) → bn1 → relu → maxpool (3×3, stride 2) → layer1…4 → mean → fc.

    ``conv`` builds every convolution (signature of ``nn.Conv2d``) and ``pool`` the stem's max-pool
    (signature of ``nn.MaxPool2d``): CyCNN passes cylindrical versions. ``block`` is the residual
    block class (signature of :class:`BasicBlock`), built with ``block_options`` as extra keywords.
    """

    def __init__(
        self,
        depths: Sequence[int],
        *,
        width: int = 64,
        num_classes: int = 1000,
        in_chans: int = 3,
        block: type[BasicBlock] = BasicBlock,
        block_options: dict | None = None,
        conv: ConvFactory = nn.Conv2d,
        pool: Callable[..., nn.Module] = nn.MaxPool2d,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        self.conv1 = conv(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = pool(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, depth in enumerate(depths):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    conv(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            options = dict(conv=conv, **(block_options or {}))
            layers = [block(inplanes, planes, stride, downsample, **options)]
            inplanes = planes * block.expansion
            layers += [block(inplanes, planes, **options) for _ in range(1, depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_layers = len(depths)
        self.fc = nn.Linear(inplanes, num_classes)
        self._initialise(zero_init_residual)

    def _initialise(self, zero_init_residual: bool) -> None:
        """torchvision's initialisation: He (fan-out) for convolutions, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def resnet(depth: int = 18, **kwargs) -> ResNet:
    """ResNet18 or ResNet34 in torchvision's layout; ``width`` (default 64) scales every stage."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"basic-block ResNets have depth 18 or 34, got {depth}")
    known = set(inspect.signature(ResNet).parameters) - {"depths"}
    if unknown := sorted(set(kwargs) - known):
        raise ValueError(
            f"resnet{depth} does not take the option(s) {', '.join(unknown)}; it takes {sorted(known)}"
        )
    return ResNet(RESNET_DEPTHS[depth], **kwargs)


def resnet_preset(depth: int = 18, name: str | None = None, **options):
    """The resnet18/resnet34 preset (block numbering, ImageNet weights) built by :func:`resnet`,
    so that it takes ``width`` and ``in_chans``; ``options`` go to :class:`ResNet` (conv, pool…)."""
    from rmnet.models.presets import PRESETS  # presets import this module (ARLNet)

    base = PRESETS[f"resnet{depth}"]
    return replace(base, name=name or base.name, build=partial(resnet, depth, **options))
