"""Retrieval metrics of the paper (SPEC §5) and the ranking they are computed on: pure numpy.

Ranking. Codes are real vectors (the hash layer's output). ``"cosine"`` ranks the database by
1 − cos(q, d), the paper's choice; ``"hamming"`` by the Hamming distance between the signs of the
codes (bit = code > 0). The same ranking, to the last tie, comes out on every machine and in
:class:`rmnet.retrieval.index.CodeIndex`, because no decision depends on float rounding:

- cosine: every code is L2-normalised in float64 with element-wise operations only (correctly
  rounded IEEE, the same on every CPU) and rounded to a multiple of 2^-24 (``quantize_codes``,
  signs kept: a non-zero component never rounds to 0); the similarity of two codes is the inner
  product of these integers, computed exactly. Codes whose cosines differ by less than about
  sqrt(L)·2^-24 (2.4e-7 for L = 16) may rank in either order, but the same order everywhere. Ties
  (equal integers: identical or proportional codes) go to the lower database index.
- hamming: integer distances; ties go to the lower database index (the image added first).

So a float dot product that OpenBLAS evaluates differently for two copies of one code (0.18588674
against 0.18588680, depending on the batch position) cannot reorder a ranking.

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
COSINE_BITS = 24  # normalised codes are rounded to multiples of 2**-COSINE_BITS
COSINE_SCALE = float(2**COSINE_BITS)
_CHUNK_ELEMENTS = 1 << 23  # distances computed per block of queries, to bound memory
_QUANTIZE_ROWS = 1 << 16


def to_bits(codes: np.ndarray) -> np.ndarray:
    """The binary code of each real code: bit j is set when code j is positive (sign binarisation)."""
    return np.asarray(codes) > 0


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Sign bits packed into bytes, (N, ceil(bits/8)) uint8, first bit in the highest bit of byte 0:
    the form FAISS binary indexes take."""
    return np.packbits(to_bits(np.atleast_2d(codes)), axis=1)


def normalize_codes(codes: np.ndarray) -> np.ndarray:
    """L2-normalised float32 codes, so that the inner product is the cosine; zero rows stay zero.

    For display and plots; rankings use :func:`quantize_codes`, which is exact.
    """
    codes = np.asarray(codes, dtype=np.float32)
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    return codes / np.maximum(norms, np.finfo(np.float32).tiny)


def quantize_codes(codes: np.ndarray) -> np.ndarray:
    """The integer codes cosine rankings use: L2-normalised, times 2^24, rounded (int32, (N, L)).

    Deterministic on every machine: the norm is summed column by column in float64 (no reduction
    whose order a library may choose), and each step is one correctly rounded IEEE operation. A
    non-zero component keeps its sign (it becomes ±1 rather than 0), so the signs, and the Hamming
    bits, of the integer codes are those of the codes. Zero codes stay zero.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D array (items, bits), got shape {codes.shape}")
    fixed = np.empty(codes.shape, np.int32)
    for start in range(0, len(codes), _QUANTIZE_ROWS):  # in blocks: float64 copies stay small
        block = codes[start : start + _QUANTIZE_ROWS].astype(np.float64)
        if not np.isfinite(block).all():
            raise ValueError("codes contain NaN or infinite values: the model's output is broken")
        squares = np.zeros(len(block))
        for column in block.T:
            squares += column * column
        unit = block / np.where(squares > 0, np.sqrt(squares), 1.0)[:, None]
        rounded = np.rint(unit * COSINE_SCALE).astype(np.int64)
        fixed[start : start + _QUANTIZE_ROWS] = np.where(
            rounded == 0, np.sign(unit).astype(np.int64), rounded
        )
    return fixed


def cosine_similarity_keys(query_fixed: np.ndarray, db_fixed: np.ndarray) -> np.ndarray:
    """Exact inner products (Q, N) of integer codes from :func:`quantize_codes`, as float64.

    Exact whatever the order of summation: every product and partial sum is an integer of at
    most about 2^48 (Cauchy–Schwarz on codes of norm about 2^24), inside float64's exact 2^53.
    """
    return np.asarray(query_fixed, np.float64) @ np.asarray(db_fixed, np.float64).T


def cosine_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, N) cosine distances 1 − cos between every query and every database code (on the
    integer codes of :func:`quantize_codes`: within about 1e-6 of the float value)."""
    return cosine_distances_from_keys(
        cosine_similarity_keys(quantize_codes(query_codes), quantize_codes(db_codes))
    )


def cosine_distances_from_keys(keys: np.ndarray) -> np.ndarray:
    """1 − cos from the exact similarity keys, never below 0 (a rounded unit code's norm may be a
    hair over 1: an image's distance to itself would read −4e-8)."""
    return np.maximum(0.0, 1.0 - keys / COSINE_SCALE**2)


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, N) Hamming distances between the sign bits of the codes (int32)."""
    q, d = to_bits(query_codes).astype(np.float32), to_bits(db_codes).astype(np.float32)
    agree = q @ d.T + (1.0 - q) @ (1.0 - d).T  # exact: integers well below 2**24
    return (q.shape[1] - np.rint(agree)).astype(np.int32)


def rank_database(
    query_codes: np.ndarray, db_codes: np.ndarray, metric: str = "cosine", k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Database indices of each query's ranking (nearest first) and their distances, (Q, k) each.

    ``k=None`` ranks the whole database. Ties go to the lower database index (module docstring).
    """
    query_codes, db_codes = _check_codes(query_codes, db_codes)
    if metric == "cosine":
        keys = cosine_similarity_keys(quantize_codes(query_codes), quantize_codes(db_codes))
        order = np.argsort(-keys, axis=1, kind="stable")  # stable: equal keys keep index order
        distances = cosine_distances_from_keys(keys)
    elif metric == "hamming":
        distances = hamming_distances(query_codes, db_codes)
        order = np.argsort(distances, axis=1, kind="stable")
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
