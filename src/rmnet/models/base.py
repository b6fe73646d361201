"""The contract every rmnet model keeps, so that training, evaluation, retrieval and the service
treat all of them alike: logits for classification, codes for retrieval, pooled features for
plots, from one declared base rather than ``hasattr`` probes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class ImageClassifier(nn.Module, ABC):
    """An image model with a feature extractor, an optional hash layer and a classifier.

    Subclasses set ``num_classes``, ``num_features`` and ``hash_bits`` and implement
    :meth:`forward_features` (images → pooled features) and :meth:`forward_head`
    (features → codes, logits). ``forward``, ``forward_codes`` and ``embed`` follow from them.
    """

    num_classes: int
    num_features: int
    hash_bits: int | None = None

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features) of images (B, C, H, W)."""

    @abstractmethod
    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, logits) from pooled features; codes are the hash layer's raw output, or the
        features themselves when there is no hash layer (hashing objectives apply tanh)."""

    def forward_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, logits) of images in one pass: what hashing objectives train on."""
        return self.forward_head(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.forward_codes(x)[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval code (B, code_length) of images."""
        return self.forward_codes(x)[0]

    @property
    def code_length(self) -> int:
        """Length of :meth:`embed`'s output: hash bits, or the feature width without a hash layer."""
        return self.hash_bits or self.num_features


class HashHead(nn.Module):
    """Pooled features → [hash layer] → classifier: the head most models share."""

    def __init__(self, num_features: int, num_classes: int, hash_bits: int | None = None) -> None:
        super().__init__()
        if hash_bits is not None and hash_bits < 1:
            raise ValueError(f"hash_bits must be a positive number of bits, got {hash_bits}")
        self.hash = nn.Linear(num_features, hash_bits) if hash_bits else None
        self.fc = nn.Linear(hash_bits or num_features, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = features if self.hash is None else self.hash(features)
        return codes, self.fc(codes)


def unwrap(model: nn.Module) -> ImageClassifier:
    """The rmnet model inside a DDP/compile wrapper; a clear error for any other module."""
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    if not isinstance(inner, ImageClassifier):
        raise TypeError(
            f"{type(inner).__name__} is not an rmnet model (rmnet.models.ImageClassifier); "
            "build models with rmnet.create_model"
        )
    return inner
