"""Retrieval: codes, a persistent index and search (the hashing objectives are in rmnet.objectives).

    codes        embed a data set; pack binary codes; fingerprint the model behind the codes
    index        CodeIndex: FAISS vectors + SQLite rows in one folder, saved atomically
    search       images (files, bytes) → predicted diagnosis + most similar cases; building an index
    evaluation   mAP@k / mRR@k of a model for upright and rotated queries
    gallery      a picture of one search (loads matplotlib)
    cli          `rmnet index …` and `rmnet search …` (imports nothing heavy until a command runs)

The names below load on first use (PEP 562): ``import rmnet.retrieval`` imports neither PyTorch
nor FAISS. The metrics themselves are pure functions in :mod:`rmnet.metrics.retrieval`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "embed_dataset": "rmnet.retrieval.codes",
    "model_fingerprint": "rmnet.retrieval.codes",
    "pack_codes": "rmnet.retrieval.codes",
    "format_retrieval_report": "rmnet.retrieval.evaluation",
    "retrieval_report": "rmnet.retrieval.evaluation",
    "AddResult": "rmnet.retrieval.index",
    "CodeIndex": "rmnet.retrieval.index",
    "Hit": "rmnet.retrieval.index",
    "IndexBusyError": "rmnet.retrieval.index",
    "IndexCorruptError": "rmnet.retrieval.index",
    "IndexItem": "rmnet.retrieval.index",
    "IndexMismatchError": "rmnet.retrieval.index",
    "ModelIdentity": "rmnet.retrieval.index",
    "StoredItem": "rmnet.retrieval.index",
    "ImageEncoder": "rmnet.retrieval.search",
    "SearchResult": "rmnet.retrieval.search",
    "add_bytes": "rmnet.retrieval.search",
    "add_images": "rmnet.retrieval.search",
    "build_index": "rmnet.retrieval.search",
    "open_searchable_index": "rmnet.retrieval.search",
    "search_bytes": "rmnet.retrieval.search",
    "search_images": "rmnet.retrieval.search",
}

__all__ = [
    "AddResult",
    "CodeIndex",
    "Hit",
    "ImageEncoder",
    "IndexBusyError",
    "IndexCorruptError",
    "IndexItem",
    "IndexMismatchError",
    "ModelIdentity",
    "SearchResult",
    "StoredItem",
    "add_bytes",
    "add_images",
    "build_index",
    "embed_dataset",
    "format_retrieval_report",
    "model_fingerprint",
    "open_searchable_index",
    "pack_codes",
    "retrieval_report",
    "search_bytes",
    "search_images",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from rmnet.retrieval.codes import embed_dataset, model_fingerprint, pack_codes
    from rmnet.retrieval.evaluation import format_retrieval_report, retrieval_report
    from rmnet.retrieval.index import (
        AddResult,
        CodeIndex,
        Hit,
        IndexBusyError,
        IndexCorruptError,
        IndexItem,
        IndexMismatchError,
        ModelIdentity,
        StoredItem,
    )
    from rmnet.retrieval.search import (
        ImageEncoder,
        SearchResult,
        add_bytes,
        add_images,
        build_index,
        open_searchable_index,
        search_bytes,
        search_images,
    )
