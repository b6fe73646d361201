"""One door to every model: ``create_model(name, num_classes=…, rm=…, k=…, fusion=…, hash_bits=…)``.

Every model is registered the same way, with :func:`register_model` next to its definition
(the presets in ``rmnet.py``, each compared method in its own file). A name that is not
registered but is a torchvision classification model is built through the same path, wrapped
so that it keeps the :class:`~rmnet.models.base.ImageClassifier` contract.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rmnet.models.base import ImageClassifier
from rmnet.models.presets import BackbonePreset

Builder = Callable[..., ImageClassifier]

# The options every model understands by name; a builder receives those the caller changed.
COMMON_DEFAULTS: dict[str, object] = dict(
    rm=None,
    k=4,
    fusion="mean",
    dihedral=False,
    rotate=True,
    share_weights=True,
    rm_padding="none",
    hash_bits=None,
    pretrained=None,
    method=None,
    at=None,
)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and, when it has one, the backbone preset underneath."""

    name: str
    build: Builder
    preset: BackbonePreset | None = None

    @property
    def input_size(self) -> int:
        """The side of the images the model was designed for (299 for Inception-V3)."""
        if self.preset is None:
            return 224
        return self.preset.weights.input_size if self.preset.weights else self.preset.input_size

    @property
    def has_imagenet_weights(self) -> bool:
        """Whether ``pretrained="imagenet"`` can start it: a preset with published weights, or a
        torchvision model (whole-network GCNN/ORN/E4-Net and small_cnn have none)."""
        if self.preset is not None:
            return self.preset.weights is not None
        return self.name not in _REGISTRY

    @property
    def min_input_size(self) -> int:
        return self.preset.min_input_size if self.preset else 32

    def accepts(self) -> tuple[set[str], bool]:
        """(named keyword options the builder takes, whether it takes any other **kwargs)."""
        params = inspect.signature(self.build).parameters.values()
        named = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        return named, any(p.kind is p.VAR_KEYWORD for p in params)

    @property
    def description(self) -> str:
        return inspect.getdoc(self.build) or self.name


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, preset: BackbonePreset | None = None) -> Callable[[Builder], Builder]:
    """Register ``fn(num_classes=…, **options) -> ImageClassifier`` under ``name``."""

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, fn, preset)
        return fn

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (for tests and notebooks that register temporary models)."""
    _REGISTRY.pop(name, None)


def list_models() -> list[str]:
    """Every registered name: presets, their variants and the compared methods."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; any torchvision classification model name also resolves."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return ModelEntry(name, _torchvision_builder(name))
    raise ValueError(
        f"unknown model {name!r}. Registered: {', '.join(list_models())}; "
        "or any torchvision classification model name (torchvision.models.list_models())"
    )


def create_model(
    name: str,
    num_classes: int = 8,
    *,
    rm: str | list[str] | None = None,
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
    **kwargs,
) -> ImageClassifier:
    """Build ``name`` with RM at ``rm`` ("5-8", "relaxed:5", "paper", "all", module paths, None),
    or a compared ``method`` ("gcnn", "orn", "e4net", "stn", "stn_affine", "cycnn"; "rm" is ``rm``)
    inserted at blocks ``at`` of a preset backbone (rmnet.models.inserted, allowed_positions).

    ``rm_padding`` matters only for RM angles that are not multiples of 90° (k = 6, 8): "none" keeps
    the map size, "full" zero-pads the copies first, as the paper does (:mod:`rmnet.meanout`).
    ``pretrained`` is None (random), "imagenet" (the torch hub cache; nothing is downloaded)
    or a local weights file of the plain network. Options a model does not take are an error.
    """
    if hash_bits is not None and hash_bits < 1:
        raise ValueError(f"hash_bits must be a positive number of bits, got {hash_bits}")
    entry = model_entry(name)
    given = dict(
        rm=rm, k=k, fusion=fusion, dihedral=dihedral, rotate=rotate, share_weights=share_weights,
        rm_padding=rm_padding, hash_bits=hash_bits, pretrained=pretrained, method=method, at=at,
    )  # fmt: skip
    options = {key: v for key, v in given.items() if v != COMMON_DEFAULTS[key]} | kwargs
    named, any_other = entry.accepts()
    refused = sorted(key for key in options if key not in named and (key in COMMON_DEFAULTS or not any_other))
    if refused and {"method", "at"} & set(refused):
        raise ValueError(
            f"model {name!r} takes no inserted method: methods go into a preset backbone "
            "(e.g. create_model('resnet18', method='gcnn', at='5-8'); rmnet.models.allowed_positions)"
        )
    if refused:
        raise ValueError(
            f"model {name!r} does not take the option(s) {', '.join(refused)}; "
            f"it takes: {', '.join(sorted(named - {'num_classes'})) or 'no common option'}"
            + ("" if not any_other else " and its own keyword options")
        )
    return entry.build(num_classes=num_classes, **options)


class TorchvisionClassifier(ImageClassifier):
    """Any torchvision classification model, with its last linear layer as the head."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        path = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        self.classifier = model.get_submodule(path)
        model.set_submodule(path, nn.Identity())
        self.model = model
        self.num_classes, self.num_features = num_classes, self.classifier.in_features

    def forward_features(self, x):
        return self.model(x)

    def forward_head(self, features):
        return features, self.classifier(features)


def _torchvision_builder(name: str) -> Builder:
    def build(
        num_classes: int = 8,
        *,
        rm: list[str] | None = None,
        k: int = 4,
        fusion: str = "mean",
        dihedral: bool = False,
        rotate: bool = True,
        share_weights: bool = True,
        rm_padding: str = "none",
        hash_bits: int | None = None,
        pretrained: str | os.PathLike | None = None,
        **kwargs,
    ) -> ImageClassifier:
        import torchvision

        if hash_bits is not None:
            raise ValueError(f"hash_bits needs a registered model (e.g. resnet18), not torchvision's {name}")

        from rmnet.meanout import insert_rotation_meanout
        from rmnet.models.pretrained import load_pretrained
        from rmnet.models.weights import Weights, resolve_weights

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if pretrained is not None:
            default = torchvision.models.get_model_weights(name).DEFAULT
            path = resolve_weights(pretrained, Weights(f"{type(default).__name__}.{default.name}"), name)
            classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
            load_pretrained(model, path, classifier)
        if isinstance(rm, str):
            raise ValueError(f"{name} has no block numbering: give RM positions as module paths")
        rm_options = dict(
            k=k, fusion=fusion, dihedral=dihedral, rotate=rotate, share_weights=share_weights,
            padding=rm_padding,
        )  # fmt: skip
        return TorchvisionClassifier(insert_rotation_meanout(model, rm or [], **rm_options), num_classes)

    build.__doc__ = f"torchvision's {name}, with RM by module path."
    return build
