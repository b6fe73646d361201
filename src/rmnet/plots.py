"""The report's figures (matplotlib, Agg): ROC, confusion matrix, t-SNE, rotation robustness, training,
reliability (calibration).

Each function draws one figure from plain arrays, writes it as a PNG (atomically) and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from rmnet.io import save_figure  # noqa: E402


def _save(figure: plt.Figure, path: str | os.PathLike) -> Path:
    figure.tight_layout()
    return save_figure(figure, path)


def _class_colours(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_roc(
    y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """One-vs-rest ROC curve of every class and the model's overall (micro-average) curve."""
    onehot = np.eye(len(class_names), dtype=int)[np.asarray(y_true)]
    figure, ax = plt.subplots(figsize=(6.4, 5.6))
    for c, (name, colour) in enumerate(zip(class_names, _class_colours(len(class_names)), strict=True)):
        if 0 < onehot[:, c].sum() < len(onehot):  # a ROC curve needs positives and negatives
            fpr, tpr, _ = roc_curve(onehot[:, c], y_score[:, c])
            ax.plot(fpr, tpr, color=colour, lw=1.2, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    fpr, tpr, _ = roc_curve(onehot.ravel(), np.asarray(y_score).ravel())
    ax.plot(fpr, tpr, color="black", lw=2.4, label=f"overall, micro (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 − specificity)")
    ax.set(ylabel="true positive rate (sensitivity)", title="ROC curves, one class vs the rest")
    ax.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Counts beside the row-normalised matrix (each row sums to 1: the sensitivity is on the diagonal)."""
    counts = np.asarray(matrix)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    n = len(class_names)
    side = max(4.0, 0.55 * n + 2)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, values, title, fmt in (
        (axes[0], counts, "counts", "d"),
        (axes[1], normalised, "normalised by true class", ".2f"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() or 1)
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for i, j in np.ndindex(values.shape):
            dark = values[i, j] > 0.6 * (values.max() or 1)
            ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize="small",
                    color="white" if dark else "black")  # fmt: skip
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(figure, path)


def plot_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """t-SNE of the last-layer features, coloured by true class (a seeded sample of max_points)."""
    features, labels = np.asarray(features, dtype=np.float32), np.asarray(labels)
    if len(features) > max_points:
        keep = np.random.default_rng(seed).choice(len(features), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    figure, ax = plt.subplots(figsize=(6.4, 5.6))
    for c, (name, colour) in enumerate(zip(class_names, _class_colours(len(class_names)), strict=True)):
        mine = labels == c
        if mine.any():
            ax.scatter(*points[mine].T, s=9, color=colour, label=name, alpha=0.8, linewidths=0)
    ax.set(xticks=[], yticks=[], title="t-SNE of the last-layer features")
    ax.legend(loc="best", fontsize="small", markerscale=2)
    return _save(figure, path)


def plot_rotation_robustness(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    ylabel: str = "accuracy",
) -> Path:
    """Accuracy against the rotation of the test images, one line per model: {label: (angles, values)}."""
    figure, ax = plt.subplots(figsize=(7.0, 4.2))
    for label, (angles, values) in curves.items():
        ax.plot(angles, values, marker="o", ms=3.5, lw=1.6, label=label)
    for quarter in (90, 180, 270):
        ax.axvline(quarter, color="grey", lw=0.6, ls=":")
    ax.set(xlim=(0, 360), xticks=range(0, 361, 45), ylim=(0, 1.02))
    ax.set(xlabel="rotation of the test images (degrees, counterclockwise)", ylabel=ylabel)
    ax.set_title("Robustness to rotation")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(figure, path)


def plot_reliability(curves: Mapping[str, Mapping[str, Sequence]], path: str | os.PathLike) -> Path:
    """Reliability diagram: accuracy against mean top probability per bin, one line per curve
    ({label: rmnet.calibration.ReliabilityBins.to_dict()}), with each bin's share of images below."""
    figure, (ax, share_ax) = plt.subplots(
        2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": (3, 1)}
    )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfectly calibrated")
    width = None
    for i, (label, bins) in enumerate(curves.items()):
        edges, counts = np.asarray(bins["edges"], float), np.asarray(bins["counts"], float)
        confidence = np.array([np.nan if v is None else v for v in bins["confidence"]], float)
        accuracy = np.array([np.nan if v is None else v for v in bins["accuracy"]], float)
        filled = counts > 0
        ax.plot(confidence[filled], accuracy[filled], marker="o", ms=4, lw=1.6, label=label)
        width = (edges[1] - edges[0]) / (len(curves) + 1)
        centres = edges[:-1] + width * (i + 0.5)
        share_ax.bar(centres, counts / max(counts.sum(), 1), width=width, label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy", title="Reliability (top probability, 15 bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    share_ax.set(xlabel="top probability", ylabel="share of images", xlim=(0, 1))
    return _save(figure, path)


def plot_training_curves(history: pd.DataFrame | Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Loss (train, val), validation metrics and learning rate per epoch, from metrics.csv rows."""
    frame = pd.DataFrame(history)
    figure, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for column, label in (("train_loss", "train"), ("val_loss", "validation")):
        if column in frame:
            loss_ax.plot(frame["epoch"], frame[column], marker="o", ms=3, label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    loss_ax.legend()
    for column in ("train_accuracy", "val_accuracy", "val_balanced_accuracy", "val_kappa"):
        if column in frame:
            metric_ax.plot(frame["epoch"], frame[column], marker="o", ms=3, label=column.replace("_", " "))
    metric_ax.set(xlabel="epoch", ylim=(0, 1.02), title="accuracy")
    metric_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize="small")
    if "lr" in frame:
        lr_ax = metric_ax.twinx()
        lr_ax.step(frame["epoch"], frame["lr"], where="post", color="grey", lw=1, ls="--")
        lr_ax.set(yscale="log", ylabel="learning rate (dashed)")
    return _save(figure, path)
