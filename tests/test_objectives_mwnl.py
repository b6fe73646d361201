"""MWNL: one-vs-all BCE, clipped, focal, class weights n_c^(−p) on the authors' schedule."""

import math

import numpy as np
import pytest
import torch

from rmnet.config import TrainConfig
from rmnet.data import TensorImageDataset
from rmnet.objectives import build_objective, class_weights_from_counts
from rmnet.objectives.mwnl import MultiWeightedNewLoss, mwnl_class_weights, mwnl_loss, mwnl_power
from rmnet.train import fit


def hand_computed_mwnl(logits, targets, weights, gamma=2.0, beta=0.1, scale=30.0):
    """The formula written out term by term, in plain Python."""
    terms = []
    for row, y_true in zip(logits, targets, strict=True):
        for c, z in enumerate(row):
            y = 1.0 if c == y_true else 0.0
            p = 1 / (1 + math.exp(-z))
            bce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
            bce = min(bce, -math.log(beta))
            p_t = p if y else 1 - p
            terms.append(weights[y_true] * (1 - p_t) ** gamma * bce)
    return scale * sum(terms) / len(terms)


def test_the_loss_matches_a_hand_computation_including_a_clipped_term():
    logits = [[2.0, -1.0, 0.5], [-5.0, 0.3, 1.5]]  # the second row's true class 0 is badly wrong
    targets = [1, 0]
    weights = [0.5, 1.0, 1.5]
    value = mwnl_loss(torch.tensor(logits), torch.tensor(targets), torch.tensor(weights))
    assert value.item() == pytest.approx(hand_computed_mwnl(logits, targets, weights), rel=1e-5)
    normal = mwnl_loss(torch.tensor(logits), torch.tensor(targets), torch.tensor(weights), reduction="normal")
    w = torch.tensor([weights[t] for t in targets])[:, None].expand(2, 3)
    assert normal.item() == pytest.approx(value.item() / 30 * 6 / w.sum().item(), rel=1e-5)


def test_a_clipped_term_stops_pulling():
    logits = torch.tensor([[-5.0, 0.0]], requires_grad=True)  # BCE of the true class: 5.0 > −ln 0.1
    mwnl_loss(logits, torch.tensor([0]), gamma=0.0).backward()
    assert logits.grad[0, 0] == 0 and logits.grad[0, 1] != 0


def test_the_cumulative_schedule_of_p():
    assert [mwnl_power(e) for e in (1, 20, 40, 60, 70)] == pytest.approx([0, 0, 0.3, 1.2, 1.2])


def test_class_weights_are_c_times_n_to_the_minus_p_normalised():
    counts = [10, 40]
    inverse = class_weights_from_counts(counts)
    torch.testing.assert_close(mwnl_class_weights(inverse, 1.0), torch.tensor([1.6, 0.4]))
    torch.testing.assert_close(mwnl_class_weights(inverse, 0.0), torch.ones(2))
    expected = np.array(counts, dtype=float) ** -1.2
    expected = expected / expected.sum() * 2
    torch.testing.assert_close(mwnl_class_weights(inverse, 1.2), torch.tensor(expected, dtype=torch.float32))


def test_set_epoch_moves_the_weights_along_the_schedule():
    objective = build_objective("mwnl", num_classes=2, class_weights=class_weights_from_counts([10, 40]))
    torch.testing.assert_close(objective.weights, torch.ones(2))  # epoch 1: p = 0
    objective.set_epoch(59)  # 0-based: the 60th epoch, p = 1.2
    assert objective.p == pytest.approx(1.2)
    assert objective.weights[0] > objective.weights[1]


def test_mwnl_on_a_hashing_run_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="hash-bits"):
        build_objective("mwnl", num_classes=3, class_weights=None, hash_bits=16)
    with pytest.raises(ValueError, match="clipping"):
        build_objective("mwnl", num_classes=3, class_weights=None, hash_bits=None, clipping="soft")
    with pytest.raises(ValueError, match="beta"):
        build_objective("mwnl", num_classes=3, class_weights=None, hash_bits=None, beta=0.9)


def test_the_training_loop_calls_set_epoch_before_every_epoch(monkeypatch):
    seen = []
    original = MultiWeightedNewLoss.set_epoch

    def record(self, epoch):
        seen.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(MultiWeightedNewLoss, "set_epoch", record)
    torch.manual_seed(0)
    images, labels = torch.rand(12, 3, 9, 9), torch.arange(12) % 3
    config = TrainConfig(
        arch="small_cnn", model_options={"width": 4}, loss="mwnl", epochs=3, batch_size=6, lr=0.01,
        image_size=9, workers=0, device="cpu",
        loss_options={"schedule_start": 0, "schedule_end": 2},
    )  # fmt: skip
    result = fit(
        config, TensorImageDataset(images, labels), TensorImageDataset(images, labels), progress=False
    )
    assert seen[-3:] == [0, 1, 2] and len(result.history) == 3
