"""A preset backbone (PresetNet) and the same with Rotation Meanout embedded (RMNet).

The backbone's modules stay registered at their torchvision paths, so the state_dict keys of
an RM model are those of the plain network: ImageNet weights load unchanged. RM regions run
those modules through :func:`rotation_meanout` without owning them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
from torch import nn

from rmnet.meanout import RotationMeanout
from rmnet.models.base import ImageClassifier
from rmnet.models.factory import register_model
from rmnet.models.presets import PRESETS, BackbonePreset
from rmnet.models.pretrained import load_pretrained
from rmnet.models.weights import resolve_weights

RMSpec = str | Sequence[str] | None


class ModuleChain(nn.Module):
    """Run modules that are registered elsewhere, in order, without owning them."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.chain = tuple(modules)  # a tuple is not registered: no parameters, no state_dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.chain:
            x = module(x)
        return x

    def owned_copy(self) -> nn.Sequential:
        """An independent copy that owns its modules (RM-NWS branches need their own weights)."""
        return nn.Sequential(*(copy.deepcopy(m) for m in self.chain))


def parse_rm_spec(spec: RMSpec, preset: BackbonePreset) -> list[tuple[int, int]]:
    """Turn an RM position into regions: inclusive (first, last) indices into stem + blocks.

    "5-8" strict RM over blocks 5..8; "relaxed:5" RM around block 5 only; "C-E" uses the
    backbone's block groups; "paper" the paper's position; "all" the whole trunk (invariance
    to rotations of the image itself); a list of module paths gives each path its own RM.
    """
    if spec is None or spec == "none":
        return []
    plan = (*preset.stem, *preset.blocks)
    offset = len(preset.stem)
    if isinstance(spec, str):
        if spec == "paper":
            return parse_rm_spec(preset.paper_rm, preset)
        if spec == "all":
            return [(0, len(plan) - 1)]
        relaxed = spec.startswith("relaxed:")
        body = spec.removeprefix("relaxed:")
        first, _, last = body.partition("-")
        lo, hi = _block_range(first.strip(), preset), _block_range((last or first).strip(), preset)
        start, end = lo[0], hi[1]
        if relaxed and last:
            return [(offset + b - 1, offset + b - 1) for b in range(start, end + 1)]
        if start > end:
            raise ValueError(f"RM position {spec!r}: block {first} comes after block {last}")
        return [(offset + start - 1, offset + end - 1)]
    regions = []
    for path in spec:
        covered = [i for i, p in enumerate(plan) if p == path or p.startswith(path + ".")]
        if not covered:
            raise ValueError(
                f"module path {path!r} is not a block of {preset.name}; blocks are: {', '.join(plan)}"
            )
        regions.append((covered[0], covered[-1]))
    return regions


def _block_range(token: str, preset: BackbonePreset) -> tuple[int, int]:
    if token in preset.block_groups:
        return preset.block_groups[token]
    if token.isdigit() and 1 <= int(token) <= len(preset.blocks):
        return int(token), int(token)
    names = ", ".join(preset.block_groups) or f"1..{len(preset.blocks)}"
    raise ValueError(
        f"unknown block {token!r} for {preset.name}: use block numbers 1..{len(preset.blocks)}"
        + (f" or module types {names}" if preset.block_groups else "")
        + ", e.g. rm='"
        + preset.paper_rm
        + "'"
    )


class PresetNet(ImageClassifier):
    """A preset backbone as published → global average pool → [hash layer] → classifier.

    The backbone's modules stay registered at their torchvision paths, so ImageNet weights load.
    """

    def __init__(
        self,
        preset: BackbonePreset,
        num_classes: int,
        *,
        hash_bits: int | None = None,
        weights: str | os.PathLike | None = None,
        **build_kwargs,
    ) -> None:
        super().__init__()
        self.preset = preset
        plain = preset.build(**build_kwargs)
        for name, child in plain.named_children():
            self.add_module(name, child)
        self.input_transform = (
            _Lambda(preset.input_transform) if weights is not None and preset.input_transform else None
        )
        classifier = self.get_submodule(preset.classifier)
        self.num_features = classifier.in_features
        self.hash_bits = hash_bits
        self.hash = nn.Linear(self.num_features, hash_bits) if hash_bits else None
        self.set_submodule(preset.classifier, nn.Linear(hash_bits or self.num_features, num_classes))
        for path in preset.head:  # EfficientNet's in-place dropout would overwrite the codes returned
            for module in self.get_submodule(path).modules():
                if isinstance(module, nn.Dropout):
                    module.inplace = False
        self.num_classes = num_classes
        if weights is not None:
            load_pretrained(self, weights, preset.classifier)
        self._trunk = self._plain_trunk()

    def _plan(self) -> list[nn.Module]:
        """The stem and the numbered blocks, in order."""
        return [self.get_submodule(p) for p in (*self.preset.stem, *self.preset.blocks)]

    def _plain_trunk(self) -> tuple[nn.Module, ...]:
        return tuple(([self.input_transform] if self.input_transform else []) + self._plan())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features): rotation-invariant after a strict RM region."""
        for step in self._trunk:
            x = step(x)
        return x.mean(dim=(-2, -1))

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = features if self.hash is None else self.hash(features)
        logits = codes
        for path in self.preset.head:
            logits = self.get_submodule(path)(logits)
        return codes, logits


class RMNet(PresetNet):
    """A preset backbone with Rotation Meanout around some of its blocks (``rm``).

    RM regions run the backbone's modules through :func:`rotation_meanout` without owning them,
    so the state_dict keys are those of the plain network.
    """

    def __init__(
        self,
        preset: BackbonePreset,
        num_classes: int,
        rm: RMSpec = None,
        k: int = 4,
        fusion: str = "mean",
        *,
        dihedral: bool = False,
        rotate: bool = True,
        share_weights: bool = True,
        rm_padding: str = "none",
        hash_bits: int | None = None,
        weights: str | os.PathLike | None = None,
        **build_kwargs,
    ) -> None:
        # The weights load first, so RM-NWS branches copy the loaded weights.
        super().__init__(preset, num_classes, hash_bits=hash_bits, weights=weights, **build_kwargs)
        self.rm_spec = rm
        self.rm_options = dict(
            k=k, fusion=fusion, dihedral=dihedral, rotate=rotate, share_weights=share_weights,
            padding=rm_padding,
        )  # fmt: skip
        self.regions = parse_rm_spec(rm, preset)
        self.rm = nn.ModuleList()
        self._build_trunk()

    def _build_trunk(self) -> None:
        """Lay out the forward pass: stem + blocks, with RM around each region."""
        plan = self._plan()
        steps: list[nn.Module] = [self.input_transform] if self.input_transform else []
        regions = sorted(self.regions)
        for (_, b), (c, _) in zip(regions, regions[1:], strict=False):
            if c <= b:
                raise ValueError(f"RM regions overlap: {self.rm_spec!r}")
        channels = self._region_channels(regions) if self.rm_options["fusion"] == "embedding" else {}
        i = 0
        for a, b in regions:
            steps.extend(plan[i:a])
            region = RotationMeanout(
                ModuleChain(plan[a : b + 1]), channels=channels.get((a, b)), **self.rm_options
            )
            self.rm.append(region)
            steps.append(region)
            i = b + 1
        steps.extend(plan[i:])
        self._trunk = tuple(steps)  # unregistered: the modules live at their backbone paths

    def _region_channels(self, regions: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """Output channels of each region, found by a dry run (needed by embedding fusion)."""
        plan = self._plan()
        size = self.preset.min_input_size
        x = torch.zeros(2, 3, size, size)
        out, was_training = {}, self.training
        self.eval()
        with torch.no_grad():
            for i, module in enumerate(plan):
                x = module(x)
                out.update({r: x.shape[1] for r in regions if r[1] == i})
        self.train(was_training)
        return out

    def rm_regions(self) -> list[tuple[str, str]]:
        """(first, last) module paths of each RM region, for display and checks."""
        plan = (*self.preset.stem, *self.preset.blocks)
        return [(plan[a], plan[b]) for a, b in self.regions]


class _Lambda(nn.Module):
    """A stateless function as a module (so it can sit in the trunk)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def preset_builder(preset: BackbonePreset):
    """The registered builder of ``preset``: the backbone with RM (or a compared method) at any blocks."""

    def build(
        num_classes: int = 8,
        *,
        rm: RMSpec = None,
        k: int = 4,
        fusion: str = "mean",
        dihedral: bool = False,
        rotate: bool = True,
        share_weights: bool = True,
        rm_padding: str = "none",
        hash_bits: int | None = None,
        pretrained: str | os.PathLike | None = None,
        method: str | None = None,
        at: str | None = None,
        dropblock: float = 0.0,
        **build_kwargs,
    ) -> PresetNet:
        weights = resolve_weights(pretrained, preset.weights, preset.name)
        if (method is None) != (at is None):
            raise ValueError(f"give method and at together, e.g. method='gcnn', at='{preset.paper_rm}'")
        if method == "rm":
            if rm is not None:
                raise ValueError("give RM either as rm=POSITIONS or as method='rm', at=POSITIONS, not both")
            method, rm = None, at
        if method is not None:
            from rmnet.models.inserted import InsertedNet

            rm_options = dict(
                rm=rm, k=k, fusion=fusion, dihedral=dihedral, rotate=rotate, share_weights=share_weights
            )
            changed = sorted(key for key, value in rm_options.items() if value != RM_DEFAULTS[key])
            if changed:
                raise ValueError(f"the RM option(s) {', '.join(changed)} do not apply to method {method!r}")
            model = InsertedNet(
                preset, num_classes, method, at, hash_bits=hash_bits, weights=weights, **build_kwargs
            )
        else:
            model = RMNet(
                preset, num_classes, rm=rm, k=k, fusion=fusion, dihedral=dihedral, rotate=rotate,
                share_weights=share_weights, rm_padding=rm_padding, hash_bits=hash_bits, weights=weights,
                **build_kwargs,
            )  # fmt: skip
        return add_dropblock(model, dropblock)

    build.__doc__ = (
        f"{preset.name} with RM at any block range (the paper's position: {preset.paper_rm}), "
        "or a compared method at some blocks (method=…, at=…)."
    )
    return build


RM_DEFAULTS = dict(rm=None, k=4, fusion="mean", dihedral=False, rotate=True, share_weights=True)
DROPBLOCK_SIZE = 5  # MWNL's authors' BLOCK_SIZE


def add_dropblock(model: PresetNet, p: float, block_size: int = DROPBLOCK_SIZE) -> PresetNet:
    """DropBlock (torchvision's DropBlock2d) on the outputs of the last two numbered blocks, in
    training only, as MWNL's authors' RegNet does after its last two stages. ``p`` 0: nothing."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropblock must be a probability in [0, 1), got {p}")
    if p == 0.0:
        return model
    from torchvision.ops import DropBlock2d

    model.dropblock = nn.ModuleList()
    for path in model.preset.blocks[-2:]:
        drop = DropBlock2d(p, block_size)
        model.dropblock.append(drop)
        model.get_submodule(path).register_forward_hook(_DropBlockHook(drop))
    return model


class _DropBlockHook:
    """A forward hook applying ``drop`` to a block's output (group maps flattened to channels);
    on maps smaller than its block, the largest odd block that fits."""

    def __init__(self, drop: nn.Module) -> None:
        self.drop = drop

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import drop_block2d

        if not self.drop.training or self.drop.p == 0.0:
            return output
        maps = output.flatten(1, 2) if output.dim() == 5 else output
        size = min(self.drop.block_size, *maps.shape[-2:])
        dropped = drop_block2d(maps, self.drop.p, size - (size + 1) % 2, training=True)
        return dropped.unflatten(1, output.shape[1:3]) if output.dim() == 5 else dropped


for _preset in PRESETS.values():
    register_model(_preset.name, preset=_preset)(preset_builder(_preset))
