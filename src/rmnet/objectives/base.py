"""The objective contract and registry: (model, images, targets) → (loss, logits), by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

_OBJECTIVES: dict[str, Callable[..., Objective]] = {}


class Objective(nn.Module):
    """Maps (model, images, targets) to (loss, logits)."""

    def forward(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop before every epoch (0-based; again after a resume), for
        objectives whose terms follow a schedule (MWNL's class weights). Does nothing by default."""


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
