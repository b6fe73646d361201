"""Retrieval metrics of the paper (SPEC §5) and the ranking they are computed on: pure numpy.

Ranking. Codes are real vectors (the hash layer's output). ``"cosine"`` ranks the database by
1 − cos(q, d), the paper's choice; ``"hamming"`` by the Hamming distance between the signs of the
codes (bit = code > 0). Ties are broken deterministically: by the database index for cosine; by
the cosine distance, then the database index for Hamming, since 16-bit codes tie often (SPEC §11).

Metrics, for a query i with the top-k list of its ranking (k_i = min(k, database size)):

- ``map_at_k``, the paper's mAP@k, formula (13): (1/M) Σ_c (1/|Q_c|) Σ_{i∈Q_c} TP_i / (TP_i + FP_i),
  TP_i counted in the top k. As written this is precision@k, averaged per class, then over the M
  classes that have queries. We implement it as written.
- ``mrr_at_k``, the paper's mRR@k, formula (14): the same averages of 1/rank_i, rank_i the position
  (1-based) of the first correct image in the top k, and 0 when none is.
- ``map``, the standard mean average precision over the FULL ranking, for comparison with the
  hashing literature: AP_i = (1/R_i) Σ_{j: relevant} precision@j over all R_i relevant database
  items (0 when R_i = 0), averaged over all queries (not per class).

"Correct" means the database item has the query's label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("cosine", "hamming")
_CHUNK_ELEMENTS = 1 << 23  # distances computed per block of queries, to bound memory


def to_bits(codes: np.ndarray) -> np.ndarray:
    """The binary code of each real code: bit j is set when code j is positive (sign binarisation)."""
    return np.asarray(codes) > 0


def normalize_codes(codes: np.ndarray) -> np.ndarray:
    """L2-normalised float32 codes, so that the inner product is the cosine; zero rows stay zero."""
    codes = np.asarray(codes, dtype=np.float32)
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    return codes / np.maximum(norms, np.finfo(np.float32).tiny)


def cosine_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, N) cosine distances 1 − cos between every query and every database code."""
    return 1.0 - normalize_codes(query_codes) @ normalize_codes(db_codes).T


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, N) Hamming distances between the sign bits of the codes (int32)."""
    q, d = to_bits(query_codes).astype(np.float32), to_bits(db_codes).astype(np.float32)
    agree = q @ d.T + (1.0 - q) @ (1.0 - d).T  # exact: integers well below 2**24
    return (q.shape[1] - agree).astype(np.int32)


def rank_database(
    query_codes: np.ndarray, db_codes: np.ndarray, metric: str = "cosine", k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Database indices of each query's ranking (nearest first) and their distances, (Q, k) each.

    ``k=None`` ranks the whole database. Ties are broken as the module docstring says.
    """
    query_codes, db_codes = _check_codes(query_codes, db_codes)
    cosine = cosine_distances(query_codes, db_codes)
    if metric == "cosine":
        order = np.argsort(cosine, axis=1, kind="stable")
        distances = cosine
    elif metric == "hamming":
        distances = hamming_distances(query_codes, db_codes)
        order = np.lexsort((cosine, distances), axis=-1)  # stable: equal keys keep index order
    else:
        raise ValueError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")
    order = order[:, :k] if k is not None else order
    return order, np.take_along_axis(distances, order, axis=1)


def retrieval_metrics(
    query_codes: np.ndarray,
    query_labels: np.ndarray,
    db_codes: np.ndarray,
    db_labels: np.ndarray,
    k: int = 10,
    metric: str = "cosine",
) -> dict[str, Any]:
    """mAP@k and mRR@k as the paper defines them, the standard full-ranking mAP, and per-class values.

    Returns ``{"k", "metric", "num_queries", "database_size", "map_at_k", "mrr_at_k", "map",
    "per_class": {label: {"queries", "map_at_k", "mrr_at_k", "map"}}}``.
    """
    query_codes, db_codes = _check_codes(query_codes, db_codes)
    query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
    if query_labels.shape != (len(query_codes),) or db_labels.shape != (len(db_codes),):
        raise ValueError(
            f"labels must be one per code: {len(query_codes)} query codes with labels of shape "
            f"{query_labels.shape}, {len(db_codes)} database codes with labels of shape {db_labels.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if metric not in METRICS:
        raise ValueError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")

    precision, reciprocal_rank, average_precision = [], [], []
    chunk = max(1, _CHUNK_ELEMENTS // len(db_codes))
    for start in range(0, len(query_codes), chunk):
        stop = start + chunk
        order, _ = rank_database(query_codes[start:stop], db_codes, metric)
        relevant = db_labels[order] == query_labels[start:stop, None]  # (q, N), in ranking order
        p, rr, ap = _query_scores(relevant, k)
        precision.append(p)
        reciprocal_rank.append(rr)
        average_precision.append(ap)
    precision = np.concatenate(precision)
    reciprocal_rank = np.concatenate(reciprocal_rank)
    average_precision = np.concatenate(average_precision)

    per_class = {}
    for label in np.unique(query_labels):
        mine = query_labels == label
        per_class[label.item()] = {
            "queries": int(mine.sum()),
            "map_at_k": float(precision[mine].mean()),
            "mrr_at_k": float(reciprocal_rank[mine].mean()),
            "map": float(average_precision[mine].mean()),
        }
    return {
        "k": k,
        "metric": metric,
        "num_queries": len(query_codes),
        "database_size": len(db_codes),
        "map_at_k": float(np.mean([c["map_at_k"] for c in per_class.values()])),
        "mrr_at_k": float(np.mean([c["mrr_at_k"] for c in per_class.values()])),
        "map": float(average_precision.mean()),
        "per_class": per_class,
    }


def _query_scores(relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision@k, reciprocal rank within the top k, and full-ranking AP of each query."""
    top = relevant[:, :k]
    precision = top.sum(axis=1) / top.shape[1]
    first = top.argmax(axis=1)  # position of the first correct result (0 when none: masked below)
    reciprocal_rank = np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)
    hits = np.cumsum(relevant, axis=1)
    precision_at_hits = np.where(relevant, hits / np.arange(1, relevant.shape[1] + 1), 0.0)
    total = relevant.sum(axis=1)
    average_precision = precision_at_hits.sum(axis=1) / np.maximum(total, 1)
    return precision, reciprocal_rank, average_precision


def _check_codes(query_codes: np.ndarray, db_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query_codes, db_codes = np.asarray(query_codes), np.asarray(db_codes)
    if query_codes.ndim != 2 or db_codes.ndim != 2:
        raise ValueError(
            f"codes must be 2-D arrays (items, bits): got queries {query_codes.shape}, "
            f"database {db_codes.shape}"
        )
    if query_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"query codes have {query_codes.shape[1]} dimensions but the database codes "
            f"{db_codes.shape[1]}: they must come from the same model"
        )
    if len(db_codes) == 0:
        raise ValueError("the database is empty: there is nothing to retrieve")
    if len(query_codes) == 0:
        raise ValueError("there are no query codes")
    return query_codes, db_codes
