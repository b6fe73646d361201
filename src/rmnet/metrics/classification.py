"""Classification metrics of the paper (SPEC §4): pure functions on numpy arrays, scikit-learn underneath.

Conventions, chosen to match the ISIC 2019 scorer and to keep averages honest:

- ``y_pred`` comes from the scores by :func:`predict_labels`: the arg-max class, or -1 when the top
  scores of a row tie. -1 is a prediction of no class: always wrong, a false negative for the
  true class and a false positive for none.
- One-vs-rest per class c: precision TP/(TP+FP), sensitivity TP/(TP+FN), specificity TN/(TN+FP).
  A class absent from ``y_true`` has no sensitivity (NaN); it is left out of the mean sensitivity
  and of the balanced accuracy. A class that occurs but is never predicted has precision 0 (the
  model missed it); one that neither occurs nor is predicted has precision NaN. Means skip NaN.
- Balanced accuracy is the mean sensitivity over the classes present: the ISIC challenge metric.
- AUC per class is one-vs-rest on that class's score. The model's "overall" AUC (one ROC curve
  for the whole model, as in the paper's Figure 5) is the micro average: every (image, class)
  decision pooled. The macro average (mean of the per-class AUCs) is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, multilabel_confusion_matrix, roc_auc_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

NO_PREDICTION = -1


def predict_labels(y_score: np.ndarray) -> np.ndarray:
    """The arg-max class of each row of scores, or -1 where the top scores tie (counted wrong)."""
    y_score = np.asarray(y_score)
    top = y_score.max(axis=1, keepdims=True)
    tied = (y_score == top).sum(axis=1) > 1
    return np.where(tied, NO_PREDICTION, y_score.argmax(axis=1))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den element-wise, NaN where den is 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full_like(num, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def one_vs_rest_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """TP, FP, FN, TN of each class against the rest (arrays of length num_classes)."""
    mcm = multilabel_confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))  # (C, 2, 2)
    return {"tn": mcm[:, 0, 0], "fp": mcm[:, 0, 1], "fn": mcm[:, 1, 0], "tp": mcm[:, 1, 1]}


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Precision, sensitivity, specificity, support and predicted count of each class."""
    c = one_vs_rest_counts(y_true, y_pred, num_classes)
    support, predicted = c["tp"] + c["fn"], c["tp"] + c["fp"]
    precision = _ratio(c["tp"], predicted)
    precision[(predicted == 0) & (support > 0)] = 0.0  # a class that occurs but is never predicted
    return {
        "precision": precision,
        "sensitivity": _ratio(c["tp"], support),
        "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
        "support": support,
        "predicted": predicted,
    }


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """(p0 − pe)/(1 − pe), p0 the accuracy and pe = Σ a_c·b_c / n² (true and predicted counts)."""
    return float(cohen_kappa_score(y_true, y_pred))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean sensitivity over the classes present in ``y_true`` (the ISIC 2019 challenge metric)."""
    return float(np.nanmean(per_class_metrics(y_true, y_pred, num_classes)["sensitivity"]))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, Any]:
    """AUC per class (one-vs-rest, NaN for a class absent from y_true), micro and macro averages."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    onehot = np.eye(y_score.shape[1], dtype=int)[y_true]
    per_class = np.array(
        [
            roc_auc_score(onehot[:, c], y_score[:, c]) if 0 < onehot[:, c].sum() < len(y_true) else np.nan
            for c in range(y_score.shape[1])
        ]
    )
    micro = roc_auc_score(onehot.ravel(), y_score.ravel()) if 0 < onehot.sum() < onehot.size else np.nan
    macro = np.nanmean(per_class) if not np.isnan(per_class).all() else np.nan
    return {"per_class": per_class, "micro": float(micro), "macro": float(macro)}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C), rows true class, columns predicted; rows with tied scores (-1) are left out."""
    return sklearn_confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def _check(y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None, num_classes: int) -> None:
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape}, {y_pred.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if y_true.min() < 0 or y_true.max() >= num_classes:
        raise ValueError(f"y_true holds labels outside 0..{num_classes - 1}: {sorted(set(y_true.tolist()))}")
    if y_pred.min() < NO_PREDICTION or y_pred.max() >= num_classes:
        raise ValueError(f"y_pred holds labels outside -1..{num_classes - 1}")
    if y_score is not None and y_score.shape != (len(y_true), num_classes):
        raise ValueError(f"y_score must have shape {(len(y_true), num_classes)}, got {y_score.shape}")


def classification_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All the paper's classification metrics as a dict of floats and lists (NaN where undefined)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    y_score = None if y_score is None else np.asarray(y_score, dtype=float)
    if class_names is None:
        num = y_score.shape[1] if y_score is not None else int(max(y_true.max(), y_pred.max())) + 1
        class_names = [str(c) for c in range(num)]
    num_classes = len(class_names)
    _check(y_true, y_pred, y_score, num_classes)

    per_class = per_class_metrics(y_true, y_pred, num_classes)
    auc = roc_auc(y_true, y_score) if y_score is not None else None
    report: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(np.nanmean(per_class["sensitivity"])),
        "kappa": cohen_kappa(y_true, y_pred),
        "mean_precision": float(np.nanmean(per_class["precision"])),  # the paper's "AP"
        "mean_sensitivity": float(np.nanmean(per_class["sensitivity"])),  # "Ave Sen"
        "mean_specificity": float(np.nanmean(per_class["specificity"])),  # "Ave Spec"
        "auc_micro": auc["micro"] if auc else None,  # the model's overall AUC
        "auc_macro": auc["macro"] if auc else None,
        "ties": int(np.sum(y_pred == NO_PREDICTION)),
        "class_names": list(class_names),
        "per_class": {
            name: {
                "precision": float(per_class["precision"][c]),
                "sensitivity": float(per_class["sensitivity"][c]),
                "specificity": float(per_class["specificity"][c]),
                "auc": float(auc["per_class"][c]) if auc else None,
                "support": int(per_class["support"][c]),
                "predicted": int(per_class["predicted"][c]),
            }
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, num_classes).tolist(),
    }
    return report
