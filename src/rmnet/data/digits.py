"""scikit-learn's 1,797 real 8×8 handwritten digits (ship with it, no download), upsampled for CNNs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def load_digits_tensors(size: int = 29, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as float images (N, channels, size, size) in [0, 1] and int64 labels 0–9.

    Like MNIST, the digit fills the central 20/28 of the frame (bilinear upsampling), so rotating
    it by any angle keeps it in view. An odd ``size`` gives a centre pixel to rotate about. Three
    channels (grey repeated) fit the RGB models unchanged.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8), values 0..16
    inner = round(size * 20 / 28)
    inner += (size - inner) % 2  # equal margins on both sides
    images = F.interpolate(images, size=(inner, inner), mode="bilinear", align_corners=False)
    margin = (size - inner) // 2
    images = F.pad(images, (margin, margin, margin, margin)).clamp_(0.0, 1.0)
    return images.expand(-1, channels, -1, -1).contiguous(), torch.from_numpy(digits.target).long()
