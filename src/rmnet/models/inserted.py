"""The compared methods inserted into a pretrained backbone the way RM is: at chosen blocks.

The paper (§4.4) inserts GCNN, ORN, STN and E4-Net "into different parts of the networks" of a
pretrained ResNet18 and keeps the best position; only the changed layers lose their ImageNet
weights. ``create_model(arch, method=NAME, at=POSITIONS, pretrained=…)`` builds that network:

- **gcnn, e4net, orn** replace ResNet basic blocks ``at`` ("5-8", "3", "all") by their C4
  versions (rmnet.models.e4net's C4 blocks; rmnet.models.orn's ARF blocks with N = 4): the first
  changed block *lifts* (its 3×3 and shortcut convolutions take the plain maps), and after the
  last a max over the 4 orientations (GCNN/E4-Net's orientation pooling, ORN's ORPool) gives
  plain maps of the block's own width back to the next block. Each orientation has as many
  channels as the plain block (so a 3×3 group convolution has 4× its weights: the paper's "extra
  parameters"). "all" also lifts the stem (the 7×7 convolution, its BatchNorm and max-pool).
- **stn, stn_affine** put a spatial transformer (rmnet.models.stn's localisation networks) in
  front of one block ``at`` ("5"), warping its input feature map; "all" warps the image.
- **cycnn** maps the input of block ``at``'s first block to polar coordinates
  (rmnet.models.cycnn.PolarTransform) and makes every convolution and max-pool from there on
  cylindrical (same weights: they stay pretrained). The polar maps cannot go back to the image
  grid, so its blocks run to the last one ("5-8"); "all" maps the image itself.
- **rm** is RMNet (``rm=at``).

Every other module keeps its torchvision path, so its ImageNet weights load unchanged. When the
changed blocks reach the last block, global average pooling makes the features invariant to
quarter turns of the changed part's input (GCNN, E4-Net, ORN: exactly when every strided layer
sees an odd side; CyCNN: when the polar map's rows are a multiple of 4 × the region's stride);
with "all" that input is the image. STN promises nothing.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from rmnet.models.cycnn import CylindricalConv2d, CylindricalMaxPool2d, PolarTransform
from rmnet.models.e4net import C4, C4BasicBlock, initialise_group_convolutions
from rmnet.models.gcnn import GroupBatchNorm, LiftingConvolution
from rmnet.models.orn import ActiveRotatingFilter, OrientedBatchNorm, ORNBlock
from rmnet.models.presets import PRESETS, BackbonePreset
from rmnet.models.rmnet import PresetNet, parse_rm_spec
from rmnet.models.stn import LOCALIZERS, SpatialTransformer

METHODS = ("rm", "gcnn", "orn", "e4net", "stn", "stn_affine", "cycnn")  # = rmnet.config.METHODS
GROUP_METHODS = ("gcnn", "e4net", "orn")
ORN_ORIENTATIONS = 4  # the paper: "all the rotation intervals of these methods are set to 90-degree"
_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")


def _is_basic_block(module: nn.Module) -> bool:
    """A plain ResNet basic block (torchvision's or rmnet.models.resnets'), not a variant of it."""
    import torchvision

    from rmnet.models import resnets

    return type(module) in (torchvision.models.resnet.BasicBlock, resnets.BasicBlock)


def _group_presets() -> list[str]:
    return [name for name, p in PRESETS.items() if _fits_group_methods(p)]


def _fits_group_methods(preset: BackbonePreset) -> bool:
    """Whether every numbered block of ``preset`` is a plain ResNet basic block."""
    return preset.name.startswith("resnet") and preset.stem == _RESNET_STEM


def _check_method(method: str, preset: BackbonePreset) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method in GROUP_METHODS and not _fits_group_methods(preset):
        raise ValueError(
            f"{method} replaces ResNet basic blocks, and {preset.name}'s blocks are not: use "
            f"{' or '.join(_group_presets())} (stn, stn_affine, cycnn and rm fit the other presets)"
        )
    if method == "cycnn" and preset.name == "inception_v3":
        raise ValueError(
            "cycnn needs every padding as a module to make it cylindrical; inception_v3 pads inside "
            "its forward (avg_pool2d): use resnet18, resnet34, efficientnet_b0 or regnet_y_800mf"
        )


def allowed_positions(method: str, arch: str) -> list[str]:
    """The positions ``method`` may take in preset ``arch``, for a sweep (the paper keeps the best):
    single blocks and ranges to the last block for the group methods, ranges to the last block for
    RM and CyCNN, single blocks for STN; "all" (the stem or the image too) where it fits."""
    preset = _preset(arch)
    _check_method(method, preset)
    n = len(preset.blocks)
    singles = [str(b) for b in range(1, n + 1)]
    to_last = [f"{b}-{n}" for b in range(1, n)]
    if method in GROUP_METHODS:
        return singles + to_last + ["all"]
    if method in ("stn", "stn_affine"):
        return singles + ["all"]
    return to_last + [str(n), "all"]  # rm, cycnn: strict regions ending at the last block


def _preset(arch: str) -> BackbonePreset:
    from rmnet.models.factory import model_entry

    entry = model_entry(arch)
    if entry.preset is None or entry.name not in PRESETS:
        raise ValueError(
            f"methods are inserted into a preset backbone, not {arch!r}: use one of {', '.join(PRESETS)}"
        )
    return entry.preset


def parse_position(method: str, at: str, preset: BackbonePreset) -> tuple[int, int]:
    """(first, last): inclusive indices into stem + blocks of the modules ``method`` changes."""
    if not isinstance(at, str) or not at.strip():
        raise ValueError(f"give {method}'s position as a string such as '5-8', '3' or 'all', got {at!r}")
    if at == "paper" or at.startswith("relaxed:"):
        raise ValueError(
            f"{method} takes block numbers ('5-8', '3') or 'all'; {at!r} is for RM only. "
            f"Positions to try: {', '.join(allowed_positions(method, preset.name))}"
        )
    (first, last), *more = parse_rm_spec(at, preset)
    if more:
        raise ValueError(f"{method} sits at one range of blocks, got {at!r}")
    offset, end = len(preset.stem), len(preset.stem) + len(preset.blocks) - 1
    if at == "all" and method in ("stn", "stn_affine"):
        return 0, 0
    if method in ("stn", "stn_affine") and first != last:
        raise ValueError(
            f"{method} warps the input of one block: give one block number (e.g. '5') or 'all', got {at!r}"
        )
    if method == "cycnn" and last != end:
        raise ValueError(
            f"cycnn's polar maps cannot go back to the image grid: its blocks must run to the last one, "
            f"e.g. '{first - offset + 1}-{len(preset.blocks)}' (got {at!r})"
        )
    return first, last


class InsertedNet(PresetNet):
    """A preset backbone with a compared method at some of its blocks (see the module docstring).

    ``region_input(x)`` is the map entering the first changed module and ``features_from_region``
    runs the rest, so that tests can check invariance to turns of that map.
    """

    def __init__(
        self,
        preset: BackbonePreset,
        num_classes: int,
        method: str,
        at: str,
        *,
        hash_bits: int | None = None,
        weights: str | os.PathLike | None = None,
        **build_kwargs,
    ) -> None:
        _check_method(method, preset)
        if method == "rm":
            raise ValueError("method 'rm' is RMNet: create_model(arch, rm=POSITIONS)")
        super().__init__(preset, num_classes, hash_bits=hash_bits, weights=weights, **build_kwargs)
        self.method, self.at = method, at
        first, last = parse_position(method, at, preset)
        self.changed = (first, last)
        paths = (*preset.stem, *preset.blocks)
        channels = self._input_channels(first)
        before: list[nn.Module] = [self.input_transform] if self.input_transform else []
        plan = self._plan()
        if method in GROUP_METHODS:
            self._lift(paths[first : last + 1], whole=at == "all")
            pool = OrientationPool(method)
            steps = [*plan[:first], *self._plan()[first : last + 1], pool, *plan[last + 1 :]]
        elif method in ("stn", "stn_affine"):
            kind = "rotation" if method == "stn" else "affine"
            in_chans = 3 if at == "all" else channels
            self.transformer = SpatialTransformer(LOCALIZERS[kind](in_chans))
            steps = [*plan[:first], self.transformer, *plan[first:]]
        else:  # cycnn
            for path in paths[first : last + 1]:
                _make_cylindrical(self, path)
            self.polar = PolarTransform()
            steps = [*plan[:first], self.polar, *self._plan()[first:]]
        self.region_start = len(before) + first
        self._trunk = tuple(before + steps)
        self.invariant = method not in ("stn", "stn_affine") and last == len(paths) - 1

    def _input_channels(self, index: int) -> int:
        """Channels of the map entering stem/block ``index`` (a dry run at the smallest input)."""
        size = self.preset.min_input_size
        x = torch.zeros(2, 3, size, size)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for module in self._plan()[:index]:
                x = module(x)
        self.train(was_training)
        return x.shape[1]

    def _lift(self, paths: tuple[str, ...], whole: bool) -> None:
        """Replace the blocks at ``paths`` by their group versions (the first lifting, unless the
        stem was lifted: ``whole``), each registered at the block's own path."""
        if whole:
            self._lift_stem()
            paths = tuple(p for p in paths if p not in _RESNET_STEM)
        for i, path in enumerate(paths):
            block = self.get_submodule(path)
            if not _is_basic_block(block):
                raise ValueError(f"{self.method}: {self.preset.name}'s {path} is not a ResNet basic block")
            inplanes, planes = block.conv1.in_channels, block.conv1.out_channels
            stride, lift = block.conv1.stride[0], i == 0 and not whole
            if self.method == "orn":
                group_block = ORNBlock(inplanes, planes, stride, ORN_ORIENTATIONS, lift=lift)
            else:
                group_block = C4BasicBlock(inplanes, planes, stride, e4=self.method == "e4net", lift=lift)
                initialise_group_convolutions(group_block)
            self.set_submodule(path, group_block)

    def _lift_stem(self) -> None:
        """The ResNet stem as a lifting layer: 7×7 lifting conv (stride 2), BN shared by the
        orientations, ReLU, the 3×3 stride-2 max-pool of each orientation plane."""
        conv = self.get_submodule("conv1")
        c_in, width = conv.in_channels, conv.out_channels
        if self.method == "orn":
            lifting = ActiveRotatingFilter(
                c_in, width, 7, orientations=ORN_ORIENTATIONS, in_orientations=1, stride=2, padding=3
            )
            self.set_submodule("conv1", lifting)
            self.set_submodule("bn1", OrientedBatchNorm(width, ORN_ORIENTATIONS))
            return  # ORN's maps stay (B, C·N, H, W): the plain max-pool is per channel
        lifting = LiftingConvolution(C4, c_in, width, kernel_size=7, stride=2, padding=3)
        initialise_group_convolutions(lifting)
        self.set_submodule("conv1", lifting)
        self.set_submodule("bn1", GroupBatchNorm(width))
        self.set_submodule("maxpool", PlaneMaxPool())

    def region_input(self, x: torch.Tensor) -> torch.Tensor:
        """The map entering the first changed module (for checks of invariance)."""
        for step in self._trunk[: self.region_start]:
            x = step(x)
        return x

    def features_from_region(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features from the map entering the first changed module."""
        for step in self._trunk[self.region_start :]:
            x = step(x)
        return x.mean(dim=(-2, -1))

    def extra_repr(self) -> str:
        return f"method={self.method}, at={self.at!r}"


class OrientationPool(nn.Module):
    """Max over the orientations: (B, C, 4, H, W) group maps, or ORN's (B, C·N, H, W) → (B, C, H, W)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "orn":
            return x.unflatten(1, (-1, ORN_ORIENTATIONS)).amax(dim=2)
        return x.amax(dim=2)

    def extra_repr(self) -> str:
        return self.method


class PlaneMaxPool(nn.Module):
    """ResNet's 3×3 stride-2 max-pool applied to each orientation plane of (B, C, |G|, H, W) maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))


def _make_cylindrical(model: nn.Module, path: str) -> None:
    """Every Conv2d and MaxPool2d under ``path`` as its cylindrical twin, weights kept."""
    root = model.get_submodule(path)
    targets = [root] if isinstance(root, (nn.Conv2d, nn.MaxPool2d)) else []
    names = [(path, root)] if targets else []
    names += [
        (f"{path}.{n}", m) for n, m in root.named_modules() if n and isinstance(m, (nn.Conv2d, nn.MaxPool2d))
    ]
    for name, module in names:
        if isinstance(module, (CylindricalConv2d, CylindricalMaxPool2d)):
            continue
        if isinstance(module, nn.Conv2d):
            twin = CylindricalConv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride,
                module.padding, module.dilation, module.groups, module.bias is not None,
                device=module.weight.device, dtype=module.weight.dtype,
            )  # fmt: skip
            twin.load_state_dict(module.state_dict())
        else:
            twin = CylindricalMaxPool2d(
                module.kernel_size, module.stride, module.padding, module.dilation, ceil_mode=module.ceil_mode
            )
        model.set_submodule(name, twin)
