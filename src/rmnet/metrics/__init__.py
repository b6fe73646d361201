"""The paper's metrics as pure functions on arrays: classification (SPEC §4) and retrieval (SPEC §5)."""

import importlib
from typing import Any

# Loaded on first use (PEP 562): rmnet.metrics.retrieval (numpy only) must not pay for
# scikit-learn, which the classification metrics import.
_EXPORTS = {
    **dict.fromkeys(
        (
            "balanced_accuracy",
            "classification_report",
            "cohen_kappa",
            "confusion_matrix",
            "per_class_metrics",
            "predict_labels",
            "roc_auc",
        ),
        "rmnet.metrics.classification",
    ),
    **dict.fromkeys(
        ("METRICS", "cosine_distances", "hamming_distances", "rank_database", "retrieval_metrics"),
        "rmnet.metrics.retrieval",
    ),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "METRICS",
    "balanced_accuracy",
    "classification_report",
    "cohen_kappa",
    "confusion_matrix",
    "cosine_distances",
    "hamming_distances",
    "per_class_metrics",
    "predict_labels",
    "rank_database",
    "retrieval_metrics",
    "roc_auc",
]
