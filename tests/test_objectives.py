"""The objective registry and the paper's weighted cross-entropy: rare classes weigh more."""

import pytest
import torch
import torch.nn.functional as F

from rmnet.objectives import build_objective, class_weights_from_counts


def test_class_weights_are_inverse_to_the_class_frequency():
    # n = 12 images, C = 3 classes: weight n / (C · n_c) = 12 / (3 · n_c)
    weights = class_weights_from_counts([8, 3, 1])
    torch.testing.assert_close(weights, torch.tensor([0.5, 4 / 3, 4.0]))
    assert weights.argmax() == 2 and weights.argmin() == 0  # the rarest class weighs most


def test_every_class_contributes_the_same_total_weight():
    counts = torch.tensor([4522, 12875, 3323, 867, 2624, 239, 253, 628])  # ISIC 2019
    totals = class_weights_from_counts(counts.tolist()) * counts
    torch.testing.assert_close(totals, torch.full((8,), float(counts.sum()) / 8))


def test_balanced_classes_get_weight_one():
    torch.testing.assert_close(class_weights_from_counts([5, 5, 5]), torch.ones(3))


def test_a_class_without_training_images_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"classes \[1\] have no training images"):
        class_weights_from_counts([3, 0, 2])


def test_wce_weighs_each_image_by_its_class_weight():
    weights = class_weights_from_counts([3, 1])  # [2/3, 2]
    objective = build_objective("wce", num_classes=2, class_weights=weights, hash_bits=None)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]])
    targets = torch.tensor([0, 1, 0, 0])
    loss, returned = objective(lambda images: images, logits, targets)
    per_image = F.cross_entropy(logits, targets, reduction="none")
    expected = (weights[targets] * per_image).sum() / weights[targets].sum()
    torch.testing.assert_close(loss, expected)
    assert returned is logits


def test_an_unknown_loss_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'focal'.*wce"):
        build_objective("focal", num_classes=2, class_weights=None, hash_bits=None)
