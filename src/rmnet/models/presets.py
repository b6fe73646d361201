"""The paper's backbones as data: which module paths form the stem and the numbered blocks.

Block numbers follow the paper (SPEC §2): ResNet18 Res1–Res8 are layer1.0 … layer4.1;
Inception-V3 modules are grouped by type A–E; EfficientNet-b0 stages 1–9 are features.0–8;
RegNetY-800MF stages 1–5 are the stem and trunk_output.block1–4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

import torch
import torchvision
from torch import nn

from rmnet.models.arlnet import arlnet
from rmnet.models.weights import IMAGENET_MEAN, IMAGENET_STD, Weights


@dataclass(frozen=True)
class BackbonePreset:
    """How to build a backbone and where its numbered blocks are."""

    name: str
    build: Callable[..., nn.Module]  # builds the plain network with an ImageNet-sized head
    stem: tuple[str, ...]  # module paths run before block 1
    blocks: tuple[str, ...]  # module paths of blocks 1..N, in order
    head: tuple[str, ...]  # module paths run after pooling (dropout, classifier)
    classifier: str  # path of the final nn.Linear
    paper_rm: str  # where the paper puts RM (its best strict RM-GAP position)
    input_size: int = 224
    min_input_size: int = 32
    weights: Weights | None = None  # published ImageNet weights of the plain network
    block_groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # "C" -> (5, 8)
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # with pretrained only


def _resnet_blocks(depths: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"layer{i + 1}.{j}" for i, d in enumerate(depths) for j in range(d))


_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")


def inception_input_transform(x: torch.Tensor) -> torch.Tensor:
    """Map ImageNet-normalised input to the [-1, 1] scaling Inception-V3's weights expect."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean - 0.5) / 0.5


def _inception_v3(**kwargs) -> nn.Module:
    # The auxiliary head is left out: the paper's recipe does not train it, and an unused
    # registered head breaks DDP. Its ImageNet weights are skipped when loading.
    return torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True, **kwargs)


class ConvNormAct(nn.Sequential):
    """Convolution, BatchNorm, ReLU: one block of the small CNN."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 5, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class SmallCNN(nn.Module):
    """Four 5×5 conv blocks (the source blog's plain CNN, with BatchNorm): for tests and demos."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: int = 32) -> None:
        super().__init__()
        self.block1 = ConvNormAct(in_chans, width)
        self.block2 = ConvNormAct(width, width, stride=2)
        self.block3 = ConvNormAct(width, width, stride=2)
        self.block4 = ConvNormAct(width, width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in (self.block1, self.block2, self.block3, self.block4):
            x = block(x)
        return self.fc(x.mean(dim=(-2, -1)))


PRESETS: dict[str, BackbonePreset] = {
    p.name: p
    for p in (
        BackbonePreset(
            name="resnet18",
            build=lambda **kw: torchvision.models.resnet18(weights=None, **kw),
            stem=_RESNET_STEM,
            blocks=_resnet_blocks((2, 2, 2, 2)),
            head=("fc",),
            classifier="fc",
            paper_rm="5-8",
            weights=Weights("ResNet18_Weights.IMAGENET1K_V1"),
        ),
        BackbonePreset(
            name="resnet34",
            build=lambda **kw: torchvision.models.resnet34(weights=None, **kw),
            stem=_RESNET_STEM,
            blocks=_resnet_blocks((3, 4, 6, 3)),
            head=("fc",),
            classifier="fc",
            paper_rm="8-16",
            weights=Weights("ResNet34_Weights.IMAGENET1K_V1"),
        ),
        BackbonePreset(
            name="inception_v3",
            build=_inception_v3,
            stem=(
                "Conv2d_1a_3x3",
                "Conv2d_2a_3x3",
                "Conv2d_2b_3x3",
                "maxpool1",
                "Conv2d_3b_1x1",
                "Conv2d_4a_3x3",
                "maxpool2",
            ),
            blocks=(
                "Mixed_5b",
                "Mixed_5c",
                "Mixed_5d",  # A
                "Mixed_6a",  # B
                "Mixed_6b",
                "Mixed_6c",
                "Mixed_6d",
                "Mixed_6e",  # C
                "Mixed_7a",  # D
                "Mixed_7b",
                "Mixed_7c",  # E
            ),
            block_groups={"A": (1, 3), "B": (4, 4), "C": (5, 8), "D": (9, 9), "E": (10, 11)},
            head=("dropout", "fc"),
            classifier="fc",
            paper_rm="C-E",
            input_size=299,
            min_input_size=75,
            weights=Weights("Inception_V3_Weights.IMAGENET1K_V1", input_size=299),
            input_transform=inception_input_transform,
        ),
        BackbonePreset(
            name="efficientnet_b0",
            build=lambda **kw: torchvision.models.efficientnet_b0(weights=None, **kw),
            stem=(),
            blocks=tuple(f"features.{i}" for i in range(9)),
            head=("classifier",),
            classifier="classifier.1",
            paper_rm="5-9",
            weights=Weights("EfficientNet_B0_Weights.IMAGENET1K_V1"),
        ),
        BackbonePreset(
            name="regnet_y_800mf",
            build=lambda **kw: torchvision.models.regnet_y_800mf(weights=None, **kw),
            stem=(),
            blocks=("stem", *(f"trunk_output.block{i}" for i in range(1, 5))),
            head=("fc",),
            classifier="fc",
            # The paper does not say; the last two stages, by analogy with its other best
            # positions (the second half of the network). See docs/backbones.md.
            paper_rm="4-5",
            weights=Weights("RegNet_Y_800MF_Weights.IMAGENET1K_V2"),
        ),
        BackbonePreset(
            name="small_cnn",
            build=SmallCNN,
            stem=(),
            blocks=("block1", "block2", "block3", "block4"),
            head=("fc",),
            classifier="fc",
            paper_rm="3-4",
            input_size=64,
            min_input_size=8,
        ),
    )
}

# ARLNet18/34 (rmnet.models.arlnet): the ResNet presets with attention residual learning blocks;
# same block numbering, same ImageNet weights (the blocks add no convolution).
for _depth in (18, 34):
    _preset = replace(PRESETS[f"resnet{_depth}"], name=f"arlnet{_depth}", build=partial(arlnet, _depth))
    PRESETS[_preset.name] = _preset
