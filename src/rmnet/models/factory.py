"""One door to every model: ``create_model(name, num_classes=…, rm=…, k=…, fusion=…, hash_bits=…)``."""

from __future__ import annotations

import os
from collections.abc import Callable

import torchvision
from torch import nn

from rmnet.meanout import embed_rotation_meanout
from rmnet.models.presets import PRESETS
from rmnet.models.pretrained import load_pretrained, resolve_pretrained
from rmnet.models.rmnet import RMNet, RMSpec

_CUSTOM: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder ``fn(num_classes=…, **kwargs) -> nn.Module`` under ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _CUSTOM or name in PRESETS:
            raise ValueError(f"a model named {name!r} is already registered")
        _CUSTOM[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names with a preset (RM positions by block number) or a registered builder."""
    return sorted([*PRESETS, *_CUSTOM])


def create_model(
    name: str,
    num_classes: int = 8,
    *,
    rm: RMSpec = None,
    k: int = 4,
    fusion: str = "mean",
    dihedral: bool = False,
    rotate: bool = True,
    share_weights: bool = True,
    hash_bits: int | None = None,
    pretrained: str | os.PathLike | bool | None = None,
    **kwargs,
) -> nn.Module:
    """Build ``name`` with RM at ``rm`` ("5-8", "relaxed:5", "paper", "all", module paths, None).

    ``pretrained`` is a local weights file of the plain network, or True for the torch hub cache;
    nothing is downloaded. Any torchvision classification model also works by name, with RM
    by module path (each path its own RM) and without a hash layer.
    """
    rm_options = dict(k=k, fusion=fusion, dihedral=dihedral, rotate=rotate, share_weights=share_weights)
    if hash_bits is not None and hash_bits < 1:
        raise ValueError(f"hash_bits must be a positive number of bits, got {hash_bits}")
    if name in _CUSTOM:
        # A registered builder gets the common options the caller set, and fails loudly on
        # one it does not support rather than ignoring it.
        defaults = dict(
            rm=None,
            k=4,
            fusion="mean",
            dihedral=False,
            rotate=True,
            share_weights=True,
            hash_bits=None,
            pretrained=None,
        )
        given = dict(rm=rm, hash_bits=hash_bits, pretrained=pretrained, **rm_options)
        common = {key: v for key, v in given.items() if v != defaults[key]}
        try:
            return _CUSTOM[name](num_classes=num_classes, **common, **kwargs)
        except TypeError as err:
            raise ValueError(f"model {name!r} does not take these options {sorted(common)}: {err}") from err
    if name in PRESETS:
        preset = PRESETS[name]
        weights = resolve_pretrained(pretrained, preset.weights, name) if pretrained else None
        return RMNet(preset, num_classes, rm=rm, hash_bits=hash_bits, weights=weights, **rm_options, **kwargs)
    if name in torchvision.models.list_models(module=torchvision.models):
        if hash_bits is not None:
            raise ValueError(f"hash_bits needs a preset backbone ({', '.join(PRESETS)}), not {name}")
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if pretrained:
            path = resolve_pretrained(pretrained, None, name)
            classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
            load_pretrained(model, path, classifier)
        if isinstance(rm, str):
            raise ValueError(f"{name} has no block numbering: give RM positions as module paths")
        return embed_rotation_meanout(model, rm or [], **rm_options)
    raise ValueError(
        f"unknown model {name!r}. Presets: {', '.join(list_models())}; "
        "or any torchvision classification model name (torchvision.models.list_models())"
    )
