"""Retrieval: deep-hashing objectives, codes, a persistent index and search.

    losses       the hashing objectives DCH, DPN, CSQ, CRI (``--loss dch`` …), registered on import
    codes        embed a data set; pack binary codes; fingerprint the model behind the codes
    index        CodeIndex: FAISS vectors + SQLite rows in one folder, saved atomically
    search       image files → predicted diagnosis + most similar cases; building an index from a run
    evaluation   mAP@k / mRR@k of a model for upright and rotated queries
    gallery      a picture of one search (imported on demand: it loads matplotlib)
    cli          `rmnet index …` and `rmnet search …`

The metrics themselves are pure functions in :mod:`rmnet.metrics.retrieval`.
"""

from rmnet.retrieval import losses  # noqa: F401  (registers the hashing objectives)
from rmnet.retrieval.codes import embed_dataset, model_fingerprint, pack_codes
from rmnet.retrieval.evaluation import format_retrieval_report, retrieval_report
from rmnet.retrieval.index import (
    CodeIndex,
    Hit,
    IndexCorruptError,
    IndexItem,
    IndexMismatchError,
    ModelIdentity,
)
from rmnet.retrieval.search import ImageEncoder, SearchResult, add_images, build_index, search_images

__all__ = [
    "CodeIndex",
    "Hit",
    "ImageEncoder",
    "IndexCorruptError",
    "IndexItem",
    "IndexMismatchError",
    "ModelIdentity",
    "SearchResult",
    "add_images",
    "build_index",
    "embed_dataset",
    "format_retrieval_report",
    "model_fingerprint",
    "pack_codes",
    "retrieval_report",
    "search_images",
]
