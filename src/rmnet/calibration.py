"""Calibrated probabilities: temperature scaling fitted on the validation split, and how to check it.

A network trained with cross-entropy is usually over-confident: its softmax says 99 % where it is
right 80 % of the time. Temperature scaling (Guo et al., 2017) divides the logits by one number
T > 0 chosen to minimise the negative log-likelihood of the validation labels; the ranking of the
classes never changes, only how sure the probabilities sound. The expected calibration error (ECE)
measures what is left: the top probability, binned into 15 equal-width bins over [0, 1], against
the accuracy in each bin, weighted by the bin's share of the images.

Pure NumPy/SciPy on arrays; :func:`rmnet.trust.calibrate_run` applies it to a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15  # the usual choice (Guo et al.), and the issue's
TEMPERATURE_RANGE = (0.05, 20.0)  # a fit at either end means the validation set cannot say more


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (N, C), computed stably in float64."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean −log p(label) under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the validation NLL of ``softmax(logits / T)``.

    The NLL is convex in 1/T, so a bounded scalar search over 1/T finds the global minimum; T is
    kept within ``TEMPERATURE_RANGE``.
    """
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"fit_temperature needs (N, C) logits and N labels, N > 0; got {logits.shape} and {labels.shape}"
        )
    low, high = TEMPERATURE_RANGE
    result = minimize_scalar(
        lambda beta: negative_log_likelihood(logits, labels, 1.0 / beta),
        bounds=(1.0 / high, 1.0 / low),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(1.0 / result.x)


@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin of top probability: its edges, the images in it, their mean confidence and accuracy."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,)
    confidence: np.ndarray  # (bins,) mean top probability, NaN for an empty bin
    accuracy: np.ndarray  # (bins,) share of correct top-class predictions, NaN for an empty bin

    def to_dict(self) -> dict[str, list]:
        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "confidence": [None if np.isnan(v) else float(v) for v in self.confidence],
            "accuracy": [None if np.isnan(v) else float(v) for v in self.accuracy],
        }


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """Bin the top probability into ``bins`` equal-width bins (lo, hi] of [0, 1] (the first also
    holds 0) and measure confidence and accuracy in each."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        mean_acc = np.bincount(which, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges, counts, mean_conf, mean_acc)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: Σ_b (n_b / N) · |accuracy_b − confidence_b| over equal-width bins of the top probability."""
    table = reliability_bins(probabilities, labels, bins)
    filled = table.counts > 0
    if not filled.any():
        return float("nan")
    gaps = np.abs(table.accuracy[filled] - table.confidence[filled])
    return float(np.sum(table.counts[filled] * gaps) / table.counts.sum())
