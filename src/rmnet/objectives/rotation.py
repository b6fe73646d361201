"""RiDe and RIR: rotation-invariance learnt from a loss over rotated copies of each image.

The RM paper's references [26] (RiDe) and [39] (RIR) are missing from our copy of it; its text
groups both with the data-augmentation methods that "utilize siamese CNNs and learn the
representation from a loss function perspective", and cites [39] for remote sensing. The two
remote-sensing papers that match name and description (evidence in docs/methods.md):

- **RiDe**: J. Kang, R. Fernandez-Beltran, Z. Wang, X. Sun, J. Ni, A. Plaza, "Rotation-Invariant
  Deep Embedding for Remote Sensing Images", IEEE TGRS 60, 2022 (doi 10.1109/TGRS.2021.3088398).
  Deep metric learning: the embeddings of rotated copies of an image should be closer to each
  other than to any other image. With L2-normalised embeddings and a temperature τ, p_ij =
  softmax_j≠i(z_i·z_j / τ); the loss is a neighbourhood-component class term −log Σ_{j same class}
  p_ij plus λ times a rotation term −log Σ_{j rotated copy of i} p_ij (τ = 0.05, λ = 0.1 in the
  authors' code, which keeps a memory bank of the whole training set and classifies by kNN).
- **RIR**: K. Qi, C. Yang, C. Hu, Y. Shen, S. Shen, H. Wu, "Rotation Invariance Regularization
  for Remote Sensing Image Scene Classification with Convolutional Neural Networks", Remote
  Sensing 13(4):569, 2021 (doi 10.3390/rs13040569). A siamese CNN trained with cross-entropy on
  images and their rotated copies plus a regulariser that maps the (temperature-softened) class
  predictions of an image and of its rotated copies close to each other.

Our readings, in the rmnet pipeline (one batch, no memory bank, a classifier head to predict):
each training batch runs with its k = 4 quarter turns (the RM paper set every compared method
to 90° intervals) as one batch of k·B through the model, and

    ride:  wce(all copies) + w · [ NCA class term + λ · NCA rotation term ] on the batch's codes
    rir:   wce(all copies) + λ · T² · mean_{g≠0} KL( softmax(z/T) ‖ softmax(z_g/T) )

The exact distance and temperature schedule of RIR are not in the text we could reach: KL
between softened predictions (as in distillation) and a fixed T are our choice. Validation
(the objective in eval mode) reports the weighted cross-entropy of the upright images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmnet.groups import CyclicGroup
from rmnet.models.base import unwrap
from rmnet.objectives.base import Objective, register_objective


class RotatedCopiesObjective(Objective):
    """Weighted cross-entropy on k rotated copies of each batch, plus a method's invariance term."""

    def __init__(self, class_weights: torch.Tensor | None, k: int) -> None:
        super().__init__()
        if k < 2:
            raise ValueError(f"a rotation-invariance loss needs k >= 2 rotated copies, got k={k}")
        self.group = CyclicGroup(k)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def invariance_loss(
        self, codes: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The method's term on (k, B, ·) codes and logits of the copies (copy 0 upright)."""
        raise NotImplementedError

    def forward(self, model, images, targets):
        if not self.training:  # validation: the classifier's loss on the images as given
            logits = model(images)
            return F.cross_entropy(logits, targets, weight=self.class_weights), logits
        k, b = self.group.order, images.shape[0]
        copies = torch.cat([self.group.act(images, g) for g in self.group.elements])  # (k·B, C, H, W)
        codes, logits = unwrap(model).forward_codes(copies)
        ce = F.cross_entropy(logits, targets.repeat(k), weight=self.class_weights)
        loss = ce + self.invariance_loss(codes.view(k, b, -1), logits.view(k, b, -1), targets)
        return loss, logits[:b]


@register_objective("ride")
class RotationInvariantDeepEmbedding(RotatedCopiesObjective):
    """RiDe (Kang et al., 2022): NCA class and rotated-copy terms over the batch's k·B embeddings."""

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        *,
        k: int = 4,
        temperature: float = 0.05,
        rotation_weight: float = 0.1,
        embedding_weight: float = 1.0,
    ) -> None:
        super().__init__(class_weights, k)
        if temperature <= 0:
            raise ValueError(f"RiDe temperature must be positive, got {temperature}")
        self.temperature, self.rotation_weight = temperature, rotation_weight
        self.embedding_weight = embedding_weight

    def invariance_loss(self, codes, logits, targets):
        k, b = codes.shape[:2]
        z = F.normalize(codes.reshape(k * b, -1).float(), dim=1)
        similarity = z @ z.T / self.temperature
        itself = torch.eye(k * b, dtype=torch.bool, device=z.device)
        log_p = torch.log_softmax(similarity.masked_fill(itself, float("-inf")), dim=1)  # p_ij, j ≠ i
        labels, instance = targets.repeat(k), torch.arange(b, device=z.device).repeat(k)
        same_class = (labels[:, None] == labels[None, :]) & ~itself
        same_image = (instance[:, None] == instance[None, :]) & ~itself
        class_term = -torch.logsumexp(log_p.masked_fill(~same_class, float("-inf")), dim=1).mean()
        rotation_term = -torch.logsumexp(log_p.masked_fill(~same_image, float("-inf")), dim=1).mean()
        return self.embedding_weight * (class_term + self.rotation_weight * rotation_term)


@register_objective("rir")
class RotationInvarianceRegularization(RotatedCopiesObjective):
    """RIR (Qi et al., 2021): cross-entropy on the copies + λ·T²·KL between softened predictions."""

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        hash_bits: int | None = None,
        *,
        k: int = 4,
        temperature: float = 2.0,
        weight: float = 1.0,
    ) -> None:
        super().__init__(class_weights, k)
        if temperature <= 0:
            raise ValueError(f"RIR temperature must be positive, got {temperature}")
        self.temperature, self.weight = temperature, weight

    def invariance_loss(self, codes, logits, targets):
        t = self.temperature
        log_p = torch.log_softmax(logits.float() / t, dim=-1)  # (k, B, C)
        upright, rotated = log_p[:1].expand_as(log_p[1:]), log_p[1:]
        kl = F.kl_div(rotated, upright, log_target=True, reduction="none").sum(-1)  # KL(p_0 ‖ p_g)
        return self.weight * t**2 * kl.mean()
