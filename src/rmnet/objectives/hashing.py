"""The hashing objectives the paper compares in its Table 11 (DCH, DPN, CSQ, CRI), registered by name.

The paper trains every method with the same network: backbone → hash layer (L = 16) → classifier.
Each objective here sees the raw codes and the logits (``model.forward_codes``) and applies its own
term to the codes. DCH, DPN and CSQ default to the published form, with no classifier term
(``ce_weight=0``): the RM paper does not say it added one. ``ce_weight=1`` adds the paper's
weighted cross-entropy on the logits, so the classifier that gives the predicted diagnosis is
trained too (with 0 it stays untrained: pick checkpoints by ``--val-metric loss``, or use last.pt).
CRI is a term on top of the classification loss by construction. Other defaults are those of each
method's paper; docs/retrieval.md discusses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from rmnet.groups import rotate
from rmnet.models.base import unwrap
from rmnet.objectives.base import Objective, register_objective

_MAX_COSINE = 0.99  # keeps the Cauchy distance of a pair away from 0 (log(1 + γ/d) blows up)


class HashingObjective(Objective):
    """Shared parts: the hash length, the class weights and the weighted cross-entropy term."""

    name = "hashing"

    def __init__(
        self, num_classes: int, class_weights: torch.Tensor | None, hash_bits: int | None, ce_weight: float
    ) -> None:
        super().__init__()
        if not hash_bits:
            raise ValueError(
                f"loss {self.name!r} learns hash codes: the model needs a hash layer (hash_bits=16, "
                "or --hash-bits 16 on the command line)"
            )
        self.num_classes, self.hash_bits, self.ce_weight = num_classes, hash_bits, ce_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The paper's weighted cross-entropy on the classifier that follows the hash layer."""
        return F.cross_entropy(logits, targets, weight=self.class_weights)

    def hashing_loss(self, codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The method's own term, on the raw codes (B, K) of a batch."""
        raise NotImplementedError

    def forward(self, model, images, targets):
        codes, logits = codes_and_logits(model, images)
        loss = self.hashing_loss(codes, targets)
        if self.ce_weight:
            loss = loss + self.ce_weight * self.classification_loss(logits, targets)
        return loss, logits


def codes_and_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.forward_codes(images)`` of the bare rmnet model.

    Under DDP the training loop wraps model and objective together (rmnet.train.TrainingStep),
    so the objective always sees the bare model and may call any of its methods.
    """
    return unwrap(model).forward_codes(images)


def cauchy_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) normalised Hamming distance of DCH, d = K/2 · (1 − cos(a_i, b_j)), K the code length."""
    cosine = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)
    return a.shape[-1] / 2 * (1 - cosine.clamp(max=_MAX_COSINE))


def balanced_target_codes(num_codes: int, bits: int, seed: int = 0, draws: int = 20) -> torch.Tensor:
    """Random ±1 codes with half the bits −1 each (Bernoulli(0.5) centres, balanced as in DPN and CSQ).

    Of ``draws`` seeded draws, keeps the one whose closest pair of codes is farthest apart, so
    the same seed gives the same codes in every process.
    """
    generator = torch.Generator().manual_seed(seed)
    best, best_distance = None, -1.0
    for _ in range(draws):
        codes = torch.ones(num_codes, bits)
        for row in codes:
            row[torch.randperm(bits, generator=generator)[: bits // 2]] = -1
        distance = torch.cdist(codes, codes, p=0).fill_diagonal_(bits).min().item() if num_codes > 1 else bits
        if distance > best_distance:
            best, best_distance = codes, distance
    return best


def hash_centres(num_classes: int, bits: int, seed: int = 0) -> torch.Tensor:
    """CSQ's hash centres: rows of [H; −H] (H the K×K Hadamard matrix) when K is a power of two and
    there are at most 2K classes (every pair then differs in K/2 or K bits); random balanced codes
    otherwise, as the CSQ paper prescribes."""
    if bits & (bits - 1) == 0 and num_classes <= 2 * bits:
        hadamard = scipy.linalg.hadamard(bits)
        return torch.from_numpy(np.concatenate([hadamard, -hadamard])[:num_classes]).float()
    return balanced_target_codes(num_classes, bits, seed)


@register_objective("dch")
class DeepCauchyHashing(HashingObjective):
    """Deep Cauchy Hashing (Cao, Long, Liu, Wang, CVPR 2018).

    Cauchy cross-entropy over all pairs of the batch, with the similarity probability γ/(γ + d),
    d the normalised Hamming distance of tanh(codes): s·log(1 + d/γ) + (1 − s)·log(1 + γ/d),
    similar and dissimilar pairs weighted to equal total weight, plus λ · the Cauchy quantisation
    loss log(1 + d(|h|, 1)/γ). γ = 20 (the paper's choice); λ = 0.1 (the DeepHash-pytorch
    reimplementation; the paper sets λ by cross-validation).
    """

    name = "dch"

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        gamma: float = 20.0,
        quantization_weight: float = 0.1,
        ce_weight: float = 0.0,
    ) -> None:
        super().__init__(num_classes, class_weights, hash_bits, ce_weight)
        self.gamma, self.quantization_weight = gamma, quantization_weight

    def hashing_loss(self, codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(codes)
        d = cauchy_distance(h, h)
        same = targets[:, None] == targets[None, :]
        similar = same & ~torch.eye(len(h), dtype=torch.bool, device=h.device)  # i ≠ j
        # The paper's weights |S|/|S_1| and |S|/|S_0| make the mean a sum of two per-kind means.
        loss = h.new_zeros(())
        if similar.any():
            loss = loss + torch.log1p(d[similar] / self.gamma).mean()
        if (~same).any():
            loss = loss + torch.log1p(self.gamma / d[~same]).mean()
        ones = torch.ones_like(h[:1])
        quantization = torch.log1p(cauchy_distance(h.abs(), ones) / self.gamma).mean()
        return loss + self.quantization_weight * quantization


@register_objective("dpn")
class DeepPolarizedNetwork(HashingObjective):
    """Deep Polarized Network (Fan, Ng, Ju, Zhang, Chan, IJCAI 2020).

    Bit-wise polarisation hinge max(m − v_k · t_k, 0) between the raw codes v and the ±1 target
    code t of the image's class, summed over the K bits and averaged over images, as published and
    in the reference code (so all-zero codes cost K·m). Targets are random balanced codes, fixed by
    ``seed`` (the paper shows random assignment suffices; the reference code's default draws the
    sign of Gaussian noise instead, which is not balanced). Margin m = 1, the value of the public
    implementations (the paper studies m in its ablation).
    """

    name = "dpn"

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        margin: float = 1.0,
        ce_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, class_weights, hash_bits, ce_weight)
        self.margin = margin
        self.register_buffer("target_codes", balanced_target_codes(num_classes, hash_bits, seed))

    def hashing_loss(self, codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.relu(self.margin - codes * self.target_codes[targets]).sum(dim=1).mean()


@register_objective("csq")
class CentralSimilarityQuantization(HashingObjective):
    """Central Similarity Quantization (Yuan, Wang, Zhang, Tay, Jie, Feng, CVPR 2020).

    Binary cross-entropy between (tanh(codes) + 1)/2 and the class's hash centre (c + 1)/2, plus
    λ · the quantisation loss log cosh(|h| − 1) of the CSQ paper. Centres come from a Hadamard
    matrix, or are random when there are more than 2K classes (:func:`hash_centres`). λ = 1e-4,
    the weight of DeepHash-pytorch's CSQ. Note that the reference implementations use the squared
    form (|h| − 1)² instead of log cosh (DeepHash-pytorch with 1e-4, the authors' code with 0.05);
    both vanish at |h| = 1 and agree to second order there.
    """

    name = "csq"

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        quantization_weight: float = 1e-4,
        ce_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(num_classes, class_weights, hash_bits, ce_weight)
        self.quantization_weight = quantization_weight
        self.register_buffer("centres", hash_centres(num_classes, hash_bits, seed))

    def hashing_loss(self, codes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # (tanh(z) + 1)/2 = sigmoid(2z): the cross-entropy on logits 2z is the same, and stable.
        central = F.binary_cross_entropy_with_logits(2 * codes, (self.centres[targets] + 1) / 2)
        h = torch.tanh(codes)
        quantization = _log_cosh(h.abs() - 1).mean()
        return central + self.quantization_weight * quantization


@register_objective("cri")
class CauchyRotationInvariance(HashingObjective):
    """Cauchy rotation invariance (Zhang, Xie, Song, Zheng et al., Medical Image Analysis 77, 2022).

    The weighted cross-entropy on the upright images plus ``rotation_weight`` × the Cauchy term
    log(1 + d(h, h_θ)/γ) that pulls the code of each image towards the codes of its copies
    rotated by ``angles`` (tanh codes, d as in DCH). The upright and rotated copies run as one
    batch, so the cost is (1 + len(angles))× a plain step. Defaults: 90° steps, γ = 20, weight 1.
    """

    name = "cri"

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        angles: Sequence[float] = (90.0, 180.0, 270.0),
        gamma: float = 20.0,
        rotation_weight: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_weights, hash_bits, ce_weight=1.0)
        if not angles:
            raise ValueError("loss 'cri' needs at least one rotation angle, e.g. angles=(90, 180, 270)")
        self.angles, self.gamma, self.rotation_weight = tuple(angles), gamma, rotation_weight

    def rotation_loss(self, codes: torch.Tensor, rotated_codes: torch.Tensor) -> torch.Tensor:
        """Mean Cauchy loss between each code (B, K) and its rotated copies' codes (R, B, K)."""
        h, h_rotated = torch.tanh(codes), torch.tanh(rotated_codes)
        cosine = (F.normalize(h, dim=-1) * F.normalize(h_rotated, dim=-1)).sum(-1)
        d = h.shape[-1] / 2 * (1 - cosine)
        return torch.log1p(d / self.gamma).mean()

    def forward(self, model, images, targets):
        batch = torch.cat([images, *(rotate(images, angle) for angle in self.angles)])
        codes, logits = codes_and_logits(model, batch)
        codes = codes.unflatten(0, (1 + len(self.angles), len(images)))
        logits = logits[: len(images)]
        loss = self.classification_loss(logits, targets)
        return loss + self.rotation_weight * self.rotation_loss(codes[0], codes[1:]), logits


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    """log(cosh(x)), computed without overflow for large |x|."""
    return x.abs() + F.softplus(-2 * x.abs()) - np.log(2.0)
