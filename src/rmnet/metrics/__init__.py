"""The paper's metrics as pure functions on arrays: classification (SPEC §4) and retrieval (SPEC §5)."""

from rmnet.metrics.classification import (
    balanced_accuracy,
    classification_report,
    cohen_kappa,
    confusion_matrix,
    per_class_metrics,
    predict_labels,
    roc_auc,
)
from rmnet.metrics.retrieval import (
    METRICS,
    cosine_distances,
    hamming_distances,
    rank_database,
    retrieval_metrics,
)

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
