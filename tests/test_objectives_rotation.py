"""RiDe and RIR: losses over the quarter turns of every training image."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmnet import create_model
from rmnet.models.base import HashHead, ImageClassifier
from rmnet.objectives import build_objective


class PooledColours(ImageClassifier):
    """Features = the mean colour (rotation-invariant) or the top-left pixel (not invariant)."""

    def __init__(self, invariant: bool) -> None:
        super().__init__()
        self.invariant, self.num_features, self.num_classes = invariant, 3, 2
        self.head = HashHead(3, 2)
        self.scale = nn.Parameter(torch.ones(()))

    def forward_features(self, x):
        return self.scale * (x.mean(dim=(-2, -1)) if self.invariant else x[..., 0, 0])

    def forward_head(self, features):
        return self.head(features)


def hand_computed_nca(z, labels, instances, temperature, rotation_weight):
    """RiDe's two terms with explicit loops: −log Σ_{j same class} p_ij and −log Σ_{j same image} p_ij."""
    z = F.normalize(z, dim=1).tolist()
    n = len(z)
    class_term = rotation_term = 0.0
    for i in range(n):
        scores = {
            j: math.exp(sum(a * b for a, b in zip(z[i], z[j], strict=True)) / temperature) for j in range(n)
        }
        total = sum(s for j, s in scores.items() if j != i)
        class_term -= math.log(sum(s for j, s in scores.items() if j != i and labels[j] == labels[i]) / total)
        rotation_term -= math.log(
            sum(s for j, s in scores.items() if j != i and instances[j] == instances[i]) / total
        )
    return (class_term + rotation_weight * rotation_term) / n


def test_ride_adds_nca_class_and_rotated_copy_terms_to_the_cross_entropy():
    torch.manual_seed(0)
    model, images, targets = PooledColours(invariant=False), torch.rand(3, 3, 5, 5), torch.tensor([0, 1, 0])
    objective = build_objective("ride", num_classes=2, class_weights=None, hash_bits=None, temperature=0.5)
    loss, logits = objective.train()(model, images, targets)
    copies = torch.cat([torch.rot90(images, g, dims=(-2, -1)) for g in range(4)])
    codes, all_logits = model.forward_codes(copies)
    ce = F.cross_entropy(all_logits, targets.repeat(4))
    nca = hand_computed_nca(codes.detach(), targets.repeat(4).tolist(), list(range(3)) * 4, 0.5, 0.1)
    assert loss.item() == pytest.approx(ce.item() + nca, rel=1e-5)
    torch.testing.assert_close(logits, all_logits[:3])


def test_rir_regulariser_vanishes_for_an_invariant_model_and_not_otherwise():
    images, targets = torch.rand(4, 3, 5, 5), torch.tensor([0, 1, 1, 0])
    objective = build_objective("rir", num_classes=2, class_weights=None, hash_bits=None).train()
    for invariant in (True, False):
        torch.manual_seed(0)
        model = PooledColours(invariant)
        loss, _ = objective(model, images, targets)
        copies = torch.cat([torch.rot90(images, g, dims=(-2, -1)) for g in range(4)])
        ce = F.cross_entropy(model(copies), targets.repeat(4))
        if invariant:
            assert loss.item() == pytest.approx(ce.item(), rel=1e-6)
        else:
            assert loss.item() > ce.item() + 1e-4


def test_rir_is_the_temperature_scaled_kl_between_upright_and_turned_predictions():
    torch.manual_seed(0)
    model, images, targets = PooledColours(invariant=False), torch.rand(2, 3, 5, 5), torch.tensor([0, 1])
    objective = build_objective(
        "rir", num_classes=2, class_weights=None, hash_bits=None, temperature=3.0, weight=0.5
    )
    loss, _ = objective.train()(model, images, targets)
    logits = [model(torch.rot90(images, g, dims=(-2, -1))) for g in range(4)]
    p = [torch.softmax(z / 3.0, dim=1) for z in logits]
    kl = sum((p[0] * (p[0].log() - q.log())).sum(1).mean() for q in p[1:]) / 3
    ce = F.cross_entropy(torch.cat(logits), targets.repeat(4))
    assert loss.item() == pytest.approx(ce.item() + 0.5 * 9 * kl.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["ride", "rir"])
def test_validation_reports_the_cross_entropy_of_the_images_as_given(name):
    torch.manual_seed(0)
    model, images, targets = PooledColours(invariant=False), torch.rand(3, 3, 5, 5), torch.tensor([0, 1, 1])
    objective = build_objective(name, num_classes=2, class_weights=torch.tensor([1.0, 2.0]), hash_bits=None)
    loss, logits = objective.eval()(model, images, targets)
    assert loss.item() == pytest.approx(
        F.cross_entropy(model(images), targets, weight=torch.tensor([1.0, 2.0])).item()
    )


@pytest.mark.parametrize("name", ["ride", "rir"])
def test_trains_a_real_network_with_a_hash_layer(name):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, hash_bits=8, width=4)
    objective = build_objective(name, num_classes=3, class_weights=None, hash_bits=8).train()
    loss, logits = objective(model, torch.rand(4, 3, 9, 9), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (4, 3)
    assert all(p.grad is not None for p in model.parameters())


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="k >= 2"):
        build_objective("ride", num_classes=2, class_weights=None, hash_bits=None, k=1)
    with pytest.raises(ValueError, match="temperature"):
        build_objective("rir", num_classes=2, class_weights=None, hash_bits=None, temperature=0)
