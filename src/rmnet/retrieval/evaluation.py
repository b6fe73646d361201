"""Retrieval evaluation of a model as the paper runs it: database = training set, queries = test set.

The database is embedded once, upright. The queries are embedded upright and rotated by each
angle (multiples of 90° are exact), and every set of query codes is scored by cosine and by
Hamming distance with :func:`rmnet.metrics.retrieval.retrieval_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from rmnet.groups import rotate
from rmnet.metrics.retrieval import METRICS, retrieval_metrics
from rmnet.retrieval.codes import embed_dataset


class RotatedDataset(Dataset):
    """``dataset`` with every image rotated counterclockwise by ``angle`` degrees (labels unchanged)."""

    def __init__(self, dataset: Dataset, angle: float) -> None:
        self.dataset, self.angle = dataset, angle

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[item]
        return rotate(image, self.angle), label


def retrieval_report(
    model: nn.Module,
    database: Dataset,
    queries: Dataset,
    *,
    k: int = 10,
    angles: Sequence[float] = (0, 90, 180, 270),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    class_names: Sequence[str] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """mAP@k, mRR@k and full-ranking mAP, cosine and Hamming, for upright and rotated queries.

    Returns ``{"k", "database_size", "num_queries", "code_length", "results": [one row per
    (angle, metric) with "angle", "metric", "map_at_k", "mrr_at_k", "map", "per_class"]}``;
    per-class values are keyed by class name when ``class_names`` (or ``database.class_names``) is known.
    """
    names = list(class_names or getattr(database, "class_names", None) or [])
    options = dict(batch_size=batch_size, device=device, num_workers=num_workers, progress=progress)
    db_codes, db_labels = embed_dataset(model, database, **options)
    results = []
    for angle in angles:
        rotated = queries if angle % 360 == 0 else RotatedDataset(queries, angle)
        query_codes, query_labels = embed_dataset(model, rotated, **options)
        for metric in METRICS:
            scores = retrieval_metrics(query_codes, query_labels, db_codes, db_labels, k=k, metric=metric)
            per_class = {
                (names[label] if label < len(names) else str(label)): values
                for label, values in scores["per_class"].items()
            }
            results.append(
                {
                    "angle": angle,
                    "metric": metric,
                    "map_at_k": scores["map_at_k"],
                    "mrr_at_k": scores["mrr_at_k"],
                    "map": scores["map"],
                    "per_class": per_class,
                }
            )
    return {
        "k": k,
        "database_size": len(db_codes),
        "num_queries": len(queries),
        "code_length": int(db_codes.shape[1]),
        "results": results,
    }


def format_retrieval_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (percentages, as in the paper's Tables 10 and 11)."""
    from rmnet.report import retrieval_markdown

    return retrieval_markdown(report)
