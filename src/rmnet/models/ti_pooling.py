"""TI-pooling (Laptev et al., 2016): one weight-shared network over k rotated copies of the image.

The preset backbone runs on the k copies as one batch of k·B; its pooled feature vectors are
reduced by an element-wise maximum over the copies before the (hash layer and) classifier.
With k = 4 the features are exactly invariant to 90° rotations of the input, at k times the
cost of the whole network and without a single added parameter. No RM is involved: it is the
plain preset network (its state_dict keys unchanged) with another ``forward_features``.
"""

from __future__ import annotations

import os

import torch

from rmnet.groups import CyclicGroup
from rmnet.models.factory import register_model
from rmnet.models.presets import PRESETS, BackbonePreset
from rmnet.models.rmnet import PresetNet
from rmnet.models.weights import resolve_weights


class TIPoolingNet(PresetNet):
    """A plain preset backbone whose pooled features are maxed over k rotated input copies."""

    def __init__(self, preset: BackbonePreset, num_classes: int, k: int = 4, **kwargs) -> None:
        super().__init__(preset, num_classes, **kwargs)
        self.group = CyclicGroup(k)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """max over g of the backbone's pooled features of g·x: (B, num_features), invariant."""
        copies = torch.cat([self.group.act(x, g) for g in self.group.elements])  # (k·B, C, H, W)
        features = super().forward_features(copies)
        return features.unflatten(0, (self.group.order, x.shape[0])).amax(dim=0)

    def extra_repr(self) -> str:
        return f"ti_pooling: {self.group}, max over copies"


def _ti_pooling_builder(preset: BackbonePreset):
    def build(
        num_classes: int = 8,
        *,
        k: int = 4,
        hash_bits: int | None = None,
        pretrained: str | os.PathLike | None = None,
        **kwargs,
    ) -> TIPoolingNet:
        weights = resolve_weights(pretrained, preset.weights, "ti_pooling_" + preset.name)
        return TIPoolingNet(preset, num_classes, k=k, hash_bits=hash_bits, weights=weights, **kwargs)

    build.__doc__ = f"TI-pooling over {preset.name}: the backbone on k rotated copies, max-pooled."
    return build


for _name, _preset in PRESETS.items():
    register_model(f"ti_pooling_{_name}", preset=_preset)(_ti_pooling_builder(_preset))
