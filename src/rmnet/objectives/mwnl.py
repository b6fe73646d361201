"""MWNL, the multi-weighted new loss (Yao, Shen, Xu et al., IEEE TMI 41(5), 2022), as ``--loss mwnl``.

For logits z (B, C) and one-hot targets y, every logit is its own one-vs-all problem:

    ℓ_bc   = BCE-with-logits(z_bc, y_bc)                       not a softmax
    ℓ_bc  ← min(ℓ_bc, −ln β)                                   "fix" clipping (β = 0.1)
    f_bc   = (1 − p_t)^γ = exp(−γ·(y_bc·z_bc + softplus(−z_bc)))   focal factor, γ = 2
    loss   = 30 · mean_bc( w_{y_b} · f_bc · ℓ_bc )              "enlarge"; or Σ w f ℓ / Σ w

with class weights w_c = C · n_c^(−p) / Σ_j n_j^(−p) that follow a cumulative schedule over the
(1-based) epoch e: p = 0 up to epoch 20, p = 1.2 · ((e − 20) / 40)² until epoch 60, 1.2 after.
These are the authors' ISIC 2019 settings (configs/isic_2019.yaml of yaopengUSTC/mbit-skin-cancer:
WEIGHT_POWER 1.2, SCHEDULER "cls", CLS_EPOCH_MIN 20, CLS_EPOCH_MAX 60, BETA 0.1, TYPE "fix",
SIGMOID "enlarge", focal GAMMA 2), each an option here. Clipping caps a term's value, so a very
wrong logit (p_t < β) stops pulling. The class counts come from the training loop's class
weights (inverse frequency, so n_c ∝ 1/w_c), and the epoch from :meth:`set_epoch`.

MWNL trains the classifier only: it has no retrieval term, so a hashing run (``hash_bits``)
is refused rather than left with an untrained hash layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rmnet.objectives.base import Objective, register_objective

CLIPPING = ("fix", "zero", "decrease", "none")
REDUCTIONS = ("enlarge", "normal")


def mwnl_power(epoch: int, power: float = 1.2, start: int = 20, end: int = 60) -> float:
    """Exponent p at 1-based ``epoch``: 0 up to ``start``, rising quadratically to ``power`` at ``end``."""
    if epoch <= start:
        return 0.0
    if epoch >= end:
        return power
    return power * ((epoch - start) / (end - start)) ** 2


def mwnl_class_weights(inverse_frequency: torch.Tensor, p: float) -> torch.Tensor:
    """w_c = C · n_c^(−p) / Σ_j n_j^(−p), from weights ∝ 1/n_c (the training loop's class weights)."""
    w = inverse_frequency.double() ** p
    return (w / w.sum() * len(w)).float()


def mwnl_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    *,
    gamma: float = 2.0,
    beta: float = 0.1,
    clipping: str = "fix",
    reduction: str = "enlarge",
    scale: float = 30.0,
) -> torch.Tensor:
    """The MWNL value for logits (B, C) and integer targets (B,), weights w_c per class (C,)."""
    y = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if beta > 0 and clipping != "none":
        threshold = -math.log(beta)
        if clipping == "fix":
            loss = loss.clamp(max=threshold)
        elif clipping == "zero":
            loss = torch.where(loss <= threshold, loss, torch.zeros_like(loss))
        else:  # "decrease": beyond the threshold, p_t · (−ln β) / β
            loss = torch.where(loss <= threshold, loss, torch.exp(-loss) * threshold / beta)
    if gamma:
        loss = torch.exp(-gamma * (y * logits + F.softplus(-logits))) * loss  # (1 − p_t)^γ, stably
    weights = (
        torch.ones_like(loss) if class_weights is None else class_weights[targets][:, None].expand_as(loss)
    )
    if reduction == "enlarge":
        return (weights * loss).mean() * scale
    return (weights * loss).sum() / weights.sum()


@register_objective("mwnl")
class MultiWeightedNewLoss(Objective):
    """One-vs-all BCE, clipped at −ln β, focal (1 − p_t)^γ, class weights n_c^(−p) on a schedule."""

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        *,
        power: float = 1.2,
        schedule_start: int = 20,
        schedule_end: int = 60,
        gamma: float = 2.0,
        beta: float = 0.1,
        clipping: str = "fix",
        reduction: str = "enlarge",
        scale: float = 30.0,
    ) -> None:
        super().__init__()
        if hash_bits:
            raise ValueError(
                "loss 'mwnl' trains the classifier only and has no retrieval term: train it without "
                "--hash-bits, or choose a hashing loss (dch, dpn, csq, cri) for a hashing run"
            )
        if clipping not in CLIPPING:
            raise ValueError(f"unknown MWNL clipping {clipping!r}; choose one of {', '.join(CLIPPING)}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown MWNL reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if not 0.0 <= beta <= 0.4:
            raise ValueError(f"MWNL beta must lie in [0, 0.4] (the authors' range), got {beta}")
        if not 0 <= schedule_start < schedule_end:
            raise ValueError(
                f"MWNL needs 0 <= schedule_start < schedule_end, got {schedule_start}, {schedule_end}"
            )
        self.num_classes = num_classes
        self.power, self.schedule = power, (schedule_start, schedule_end)
        self.options = dict(gamma=gamma, beta=beta, clipping=clipping, reduction=reduction, scale=scale)
        inverse = class_weights if class_weights is not None else torch.ones(num_classes)
        self.register_buffer("inverse_frequency", inverse.float(), persistent=False)
        self.register_buffer("weights", torch.ones(num_classes), persistent=False)
        self.epoch = 1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Recompute the class weights for 0-based training ``epoch`` (the schedule counts from 1)."""
        self.epoch = epoch + 1
        self.p = mwnl_power(self.epoch, self.power, *self.schedule)
        self.weights = mwnl_class_weights(self.inverse_frequency, self.p).to(self.weights.device)

    def forward(self, model, images, targets):
        logits = model(images)
        return mwnl_loss(logits, targets, self.weights, **self.options), logits

    def extra_repr(self) -> str:
        return f"epoch={self.epoch}, p={self.p:.3f}, " + ", ".join(
            f"{k}={v}" for k, v in self.options.items()
        )
