"""Classification objectives: the paper's weighted cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmnet.objectives.base import Objective, register_objective


@register_objective("wce")
class WeightedCrossEntropy(Objective):
    """The paper's loss: cross-entropy with per-class weights against class imbalance."""

    def __init__(self, class_weights: torch.Tensor | None = None, **_: object) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, model, images, targets):
        logits = model(images)
        return F.cross_entropy(logits, targets, weight=self.class_weights), logits
