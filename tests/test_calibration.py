"""Temperature scaling and the expected calibration error, pinned on hand-computed examples."""

import math

import numpy as np
import pytest

from rmnet.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax,
)


def sampled_logits(n: int = 20000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): temperature 1 is calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(n, classes))
    p = softmax(logits)
    labels = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_fit_temperature_recovers_the_factor_the_logits_were_scaled_by(scale):
    logits, labels = sampled_logits()
    assert fit_temperature(scale * logits, labels) == pytest.approx(scale, rel=0.05)


def test_calibrating_over_confident_logits_lowers_nll_and_ece():
    logits, labels = sampled_logits()
    sharp = 3.0 * logits
    t = fit_temperature(sharp, labels)
    assert negative_log_likelihood(sharp, labels, t) < negative_log_likelihood(sharp, labels) - 0.1
    before = expected_calibration_error(softmax(sharp), labels)
    after = expected_calibration_error(softmax(sharp, t), labels)
    assert before > 0.1 and after < 0.02


def test_fit_temperature_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="logits and N labels"):
        fit_temperature(np.zeros((3, 2)), np.zeros(2, dtype=int))


def test_softmax_temperature_keeps_the_ranking_and_flattens():
    logits = np.array([[2.0, 1.0, 0.0]])
    hot, cold = softmax(logits, 0.5), softmax(logits, 4.0)
    assert (hot.argmax(1) == cold.argmax(1)).all()
    assert hot.max() > softmax(logits).max() > cold.max()
    assert softmax(logits).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        softmax(logits, 0.0)


def test_nll_at_a_huge_temperature_is_log_of_the_number_of_classes():
    assert negative_log_likelihood(np.array([[3.0, -1.0, 0.5]]), np.array([1]), 1e9) == pytest.approx(
        math.log(3)
    )


def test_ece_pinned_by_hand():
    # top probabilities 0.9 (right) and 0.88 (wrong) share bin (13/15, 14/15]: confidence 0.89,
    # accuracy 0.5; 0.95 (wrong) alone: gap 0.95; 0.62 (right): 0.38; 0.7 (right): 0.3.
    probabilities = np.array([[0.9, 0.1], [0.88, 0.12], [0.05, 0.95], [0.62, 0.38], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 0, 1])
    expected = (2 * abs(0.5 - 0.89) + 0.95 + 0.38 + 0.3) / 5  # = 0.482
    assert expected_calibration_error(probabilities, labels, bins=15) == pytest.approx(expected)
    table = reliability_bins(probabilities, labels, bins=15)
    assert table.counts.sum() == 5 and table.counts[13] == 2 and table.counts[14] == 1
    assert table.confidence[13] == pytest.approx(0.89) and table.accuracy[13] == pytest.approx(0.5)
    assert np.isnan(table.accuracy[0])


def test_ece_is_zero_when_confidence_equals_accuracy():
    probabilities = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)
