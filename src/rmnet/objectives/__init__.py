"""Training objectives: what the training loop minimises, given the model and a batch.

An objective sees the model, not just its logits, because some need more than one forward
pass (CRI runs rotated copies) or the retrieval codes (the hashing losses). Objectives
register by name, so the config and the command line select them with a string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


class Objective(nn.Module):
    """Maps (model, images, targets) to (loss, logits)."""

    def forward(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Make an Objective subclass selectable as ``name`` (e.g. ``--loss name``)."""

    def decorator(cls: type[Objective]) -> type[Objective]:
        if name in _OBJECTIVES:
            raise ValueError(f"an objective named {name!r} is already registered")
        _OBJECTIVES[name] = cls
        return cls

    return decorator


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def build_objective(name: str, **options) -> Objective:
    """Build a registered objective; options always include num_classes, class_weights, hash_bits."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(list_objectives())}")
    return _OBJECTIVES[name](**options)


def class_weights_from_counts(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights n / (C · n_c), so every class contributes equally on average."""
    counts_t = torch.as_tensor(counts, dtype=torch.float32)
    if (counts_t <= 0).any():
        missing = [i for i, c in enumerate(counts) if c <= 0]
        raise ValueError(f"classes {missing} have no training images; weighted cross-entropy needs all")
    return counts_t.sum() / (len(counts_t) * counts_t)


@register_objective("wce")
class WeightedCrossEntropy(Objective):
    """The paper's loss: cross-entropy with per-class weights against class imbalance."""

    def __init__(self, class_weights: torch.Tensor | None = None, **_: object) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, model, images, targets):
        logits = model(images)
        return F.cross_entropy(logits, targets, weight=self.class_weights), logits
