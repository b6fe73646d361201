"""A persistent index of retrieval codes: FAISS for the vectors, SQLite for what each vector is.

An index is one folder:

    manifest.json        the current generation: its two files, the item count, the model identity
    vectors-<g>.faiss    faiss.IndexFlatIP over the L2-normalised codes on a 2^-24 grid (inner
                         product = cosine; see rmnet.metrics.retrieval.quantize_codes)
    items-<g>.sqlite     row i describes vector i: image id, path, label, class name, content
                         hash, metadata (JSON), when it was added, the cached copy's path
    .lock                taken by a writer (flock)

Every change writes a new generation g+1 under new names (flushed to disk), then atomically
replaces manifest.json, then deletes generation g. Whenever a save is interrupted, the manifest
names a complete pair: the old one or the new one. Opening checks that the pair agrees with the
manifest.

Rankings are exact and the same as :func:`rmnet.metrics.retrieval.rank_database` on every
machine: cosine on integer codes (FAISS proposes candidates with a safety margin, integers
decide), Hamming on integer distances, ties to the lower row (the image added first). Hamming
search over codes of at most 16 bits uses the code itself as a bucket key (a counting sort of the
rows by code, then Hamming balls of growing radius around the query); longer codes use
faiss.IndexBinaryFlat. Both are derived from the stored codes when first needed.

Threads: searches may run in any number of threads while one of them adds. A search reads one
immutable generation from start to end (its FAISS index, its SQLite connection); an add builds
the next generation beside it and switches to it only after the commit. Adds are serialised by a
lock in the process and an flock on the folder across processes; a writer waits for the lock
(``lock_timeout``) and applies its change on top of whatever another process committed meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rmnet.io import atomic_write
from rmnet.metrics.retrieval import (
    COSINE_SCALE,
    METRICS,
    cosine_distances_from_keys,
    pack_codes,
    quantize_codes,
)

if TYPE_CHECKING:
    import faiss

try:
    import fcntl
except ImportError:  # not POSIX: writers in different processes are not locked against each other
    fcntl = None

log = logging.getLogger(__name__)

FORMAT = "rmnet-code-index"
FORMAT_VERSION = 2  # 2: cached_path column; vectors on the 2^-24 grid (version 1 is read too)
MANIFEST = "manifest.json"
DEFAULT_LOCK_TIMEOUT = 300.0  # seconds a writer waits for another writer
BUCKET_MAX_BITS = 16  # Hamming search by code buckets up to this code length; FAISS beyond
_EXTRA = 16  # candidates asked of FAISS beyond k, so that the boundary is usually seen at once
_LOCK_POLL = 0.05
_SQL_CHUNK = 500  # parameters per SQLite statement (old SQLite builds allow 999)

_SCHEMA = """
CREATE TABLE items (
    row INTEGER PRIMARY KEY,        -- position of the vector in the FAISS index
    image_id TEXT NOT NULL UNIQUE,
    path TEXT,                      -- the original image file
    label INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    content_hash TEXT,              -- SHA-256 of the original file
    metadata TEXT NOT NULL,         -- JSON object
    added_at TEXT NOT NULL,
    cached_path TEXT                -- a resized copy (rmnet prepare), drawn when path is unreadable
);
CREATE INDEX items_content_hash ON items (content_hash);
"""
_COLUMNS = "row, image_id, path, label, class_name, content_hash, metadata, added_at, cached_path"


class IndexMismatchError(ValueError):
    """Codes from another model (or of another length) than the one that built the index."""


class IndexCorruptError(ValueError):
    """The files of an index disagree with each other or with its manifest."""


class IndexBusyError(OSError):
    """Another process held the writer's lock for longer than the lock timeout."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made the codes: its fingerprint and code length, and where to load it from.

    ``code_kind`` is ``"hash"`` for a hash layer's output (L-bit codes) and ``"features"`` for the
    pooled features of a model without one (D-dimensional float features).
    """

    fingerprint: str
    code_length: int
    description: str = ""
    run: str | None = None  # run folder, so that `rmnet search` can load the model
    checkpoint: str | None = None
    code_kind: str = "hash"


def describe_codes(model: ModelIdentity) -> str:
    """The codes in words: "16-bit codes" (a hash layer) or "512-D float features" (none)."""
    if model.code_kind == "features":
        return f"{model.code_length}-D float features"
    return f"{model.code_length}-bit codes"


@dataclass(frozen=True)
class IndexItem:
    """What one code is: the image it came from and its diagnosis."""

    image_id: str
    label: int
    path: str | None = None  # the original file
    content_hash: str | None = None  # sha256 of the original file: the same image under another id
    metadata: dict[str, Any] = field(default_factory=dict)
    cached_path: str | None = None  # a resized copy of it, if the codes were computed from one


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed image and its distance to the query."""

    rank: int
    row: int
    image_id: str
    path: str | None
    label: int
    class_name: str
    distance: float
    metadata: dict[str, Any]
    cached_path: str | None = None


@dataclass(frozen=True)
class StoredItem:
    """What the index holds about one image (:meth:`CodeIndex.items`, :meth:`CodeIndex.find`)."""

    row: int
    image_id: str
    path: str | None
    label: int
    class_name: str
    content_hash: str | None
    metadata: dict[str, Any]
    added_at: str
    cached_path: str | None = None


@dataclass
class AddResult:
    """What an add did: the ids added, and the (id, reason) of those skipped as already present."""

    added: list[str]
    skipped: list[tuple[str, str]]  # (image id, why)


class CodeIndex:
    """Codes of a database of diagnosed images, searchable by cosine or Hamming distance.

    Safe to share between threads: any number of searches may run while one thread adds.
    """

    def __init__(
        self,
        root: Path,
        generation: _Generation,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        replacing: bool = False,
    ) -> None:
        self.root = root
        self.lock_timeout = lock_timeout
        self._current = generation  # replaced (never changed) by a commit: readers keep theirs
        self._replacing = replacing  # created with overwrite=True: the first add replaces the folder
        self._write_lock = threading.Lock()
        self._seen_manifest: tuple[int, ...] | None = None  # refresh(): the manifest file last looked at

    # -- opening and creating ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        *,
        model: ModelIdentity,
        class_names: Sequence[str],
        metric: str = "cosine",
        overwrite: bool = False,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> CodeIndex:
        """A new, empty index in ``root``.

        A new folder is written at once. With ``overwrite``, an index already in ``root`` stays
        on disk, untouched, until the first :meth:`add` replaces it.
        """
        root = Path(root)
        if metric not in METRICS:
            raise ValueError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")
        if model.code_kind not in ("hash", "features"):
            raise ValueError(f"code_kind must be 'hash' or 'features', got {model.code_kind!r}")
        generation = 0
        if (root / MANIFEST).exists():
            if not overwrite:
                raise FileExistsError(
                    f"{root} already holds an index; add images to it with `rmnet index add`, "
                    "or replace it (--overwrite)"
                )
            generation = _read_manifest(root)["generation"]
        elif root.exists() and any(p.name != ".lock" for p in root.iterdir()):
            raise FileExistsError(f"{root} exists and is not an rmnet index; choose an empty or new folder")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "generation": generation,
            "count": 0,
            "model": asdict(model),
            "metric": metric,
            "class_names": list(class_names),
            "created": _now(),
        }
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(_SCHEMA)
        vectors = _faiss().IndexFlatIP(model.code_length)
        index = cls(root, _Generation(manifest, vectors, db), lock_timeout=lock_timeout, replacing=overwrite)
        if generation == 0:  # a new folder: written at once (an index it replaces stays until an add)
            index._write([], np.zeros((0, model.code_length), np.int32), "", lock_timeout, create=True)
        return index

    @classmethod
    def open(cls, root: str | os.PathLike, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> CodeIndex:
        """Open the index in ``root``, checking that its files agree with each other."""
        root = Path(root)
        return cls(root, _load_generation(root), lock_timeout=lock_timeout)

    def refresh(self) -> bool:
        """Switch to the generation on disk if another process committed one; True if it did.

        Cheap when nothing was committed (one ``stat`` of the manifest, no lock): a service calls it
        before each request, so that what another process added is found at once.
        """
        stamp = _file_stamp(self.root / MANIFEST)
        if stamp == self._seen_manifest:
            return False
        with self._write_lock:
            if self._replacing:
                return False
            self._seen_manifest = stamp  # before reading: a commit after the stat changes it again
            if _generation_on_disk(self.root) == self._current.generation:
                return False
            self._current = _load_generation(self.root)
            return True

    def close(self) -> None:
        self._current.close()

    def __enter__(self) -> CodeIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it holds -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._current.count

    @property
    def model(self) -> ModelIdentity:
        return _model_identity(self._current.manifest)

    @property
    def code_length(self) -> int:
        return self._current.code_length

    @property
    def metric(self) -> str:
        return self._current.manifest["metric"]

    @property
    def class_names(self) -> list[str]:
        return list(self._current.manifest["class_names"])

    @property
    def generation(self) -> int:
        return self._current.generation

    def codes(self) -> np.ndarray:
        """All stored codes (L2-normalised, on the 2^-24 grid), row i for item i."""
        current = self._current
        if not current.count:
            return np.zeros((0, current.code_length), np.float32)
        return current.vectors.reconstruct_n(0, current.count)

    def labels(self) -> np.ndarray:
        """The label of every item, row i for item i."""
        rows = self._current.query("SELECT label FROM items ORDER BY row")
        return np.array([r[0] for r in rows], np.int64)

    def items(self, start: int = 0, stop: int | None = None) -> list[StoredItem]:
        """The stored items of rows ``start`` … ``stop`` − 1 (all by default), in row order."""
        return self._current.items("row >= ? AND row < ?", [start, len(self) if stop is None else stop])

    def find(self, image_id: str) -> StoredItem | None:
        """The stored item with this image id, or None."""
        found = self._current.items("image_id = ?", [image_id])
        return found[0] if found else None

    def check_model(self, fingerprint: str, code_length: int | None = None) -> None:
        """Refuse codes of another length, or from another model than the one that built the index."""
        _check_model(self.root, self._current.manifest, fingerprint, code_length)

    # -- changing it ---------------------------------------------------------------------------

    def add(
        self,
        codes: np.ndarray,
        items: Sequence[IndexItem],
        *,
        model_fingerprint: str,
        lock_timeout: float | None = None,
    ) -> AddResult:
        """Append codes and their items, skipping any image already present (same id or content).

        The change is saved at once, atomically: on failure the index on disk is unchanged. A
        writer in another process makes this one wait (up to ``lock_timeout`` seconds, default
        the index's); a change it committed meanwhile is kept, and this one applied on top of it.
        """
        codes = np.asarray(codes, dtype=np.float32)
        if codes.ndim != 2 or len(codes) != len(items):
            raise ValueError(f"need one code per item: codes of shape {codes.shape} for {len(items)} items")
        self.check_model(model_fingerprint, codes.shape[1])
        fixed = quantize_codes(codes)
        return self._write(items, fixed, model_fingerprint, lock_timeout)

    def _write(
        self,
        items: Sequence[IndexItem],
        fixed: np.ndarray,
        fingerprint: str,
        lock_timeout: float | None,
        *,
        create: bool = False,
    ) -> AddResult:
        """Under both locks: catch up with the disk, keep the new items, commit a generation
        (``create``: the first, empty one of a new index)."""
        timeout = self.lock_timeout if lock_timeout is None else lock_timeout
        with self._write_lock, _writer_lock(self.root, timeout):
            base = self._current
            if not self._replacing and _generation_on_disk(self.root) != base.generation:
                log.info(
                    "index %s was changed by another process: adding to its latest generation", self.root
                )
                base = self._current = _load_generation(self.root)
            if items:
                _check_model(self.root, base.manifest, fingerprint, fixed.shape[1])
            names = base.manifest["class_names"]
            for item in items:
                if not 0 <= item.label < len(names):
                    raise ValueError(
                        f"image {item.image_id} has label {item.label}, but the index knows "
                        f"{len(names)} classes ({', '.join(names)})"
                    )
            keep, added, skipped = _new_items(base, items)
            for image_id, why in skipped:
                log.info("skipped %s: %s", image_id, why)
            if keep or create:
                if len(keep) == len(items):  # the usual case: no copies of a large batch
                    self._commit(base, items, fixed)
                else:
                    self._commit(base, [items[i] for i in keep], fixed[keep])
            return AddResult(added, skipped)

    def _commit(self, base: _Generation, items: Sequence[IndexItem], fixed: np.ndarray) -> None:
        """Write generation g+1 = ``base`` plus ``items``, commit it, then switch to it."""
        faiss = _faiss()
        generation = max(base.generation, _generation_on_disk(self.root)) + 1
        items_path = self.root / f"items-{generation:06d}.sqlite"
        vectors_path = self.root / f"vectors-{generation:06d}.faiss"
        now, start, names = _now(), base.count, base.manifest["class_names"]
        rows = (
            (
                start + n,
                item.image_id,
                item.path,
                int(item.label),
                names[item.label],
                item.content_hash,
                json.dumps(item.metadata, default=str) if item.metadata else "{}",
                now,
                item.cached_path,
            )
            for n, item in enumerate(items)
        )

        def write_items(tmp: Path) -> None:
            if base.items_path is not None:  # a committed file is never changed: copy it, no lock
                shutil.copyfile(base.items_path, tmp)
            db = sqlite3.connect(tmp)
            try:
                if base.items_path is None:  # a new index: its rows are in memory
                    with base.lock:
                        base.db.backup(db)
                if not base.has_cached_path:  # an index of format 1
                    db.execute("ALTER TABLE items ADD COLUMN cached_path TEXT")
                with db:
                    db.executemany(f"INSERT INTO items ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            finally:
                db.close()
            _fsync(tmp)

        _write_durably(items_path, write_items)

        vectors = faiss.clone_index(base.vectors)  # the readers' index is never changed
        for start in range(0, len(fixed), 1 << 20):
            block = fixed[start : start + (1 << 20)]
            vectors.add((block / COSINE_SCALE).astype(np.float32))  # exact: |fixed| <= 2^24

        def write_vectors(tmp: Path) -> None:
            faiss.write_index(vectors, str(tmp))
            _fsync(tmp)

        _write_durably(vectors_path, write_vectors)

        manifest = dict(
            base.manifest,
            format_version=FORMAT_VERSION,
            generation=generation,
            count=vectors.ntotal,
            updated=now,
            vectors=vectors_path.name,
            items=items_path.name,
        )
        text = json.dumps(manifest, indent=2) + "\n"

        def write_manifest(tmp: Path) -> None:
            tmp.write_text(text)
            _fsync(tmp)

        _write_durably(self.root / MANIFEST, write_manifest)  # the commit point

        self._current = _Generation(manifest, vectors, _connect_read_only(items_path), items_path)
        self._replacing = False
        _remove_stale_files(self.root, keep={vectors_path.name, items_path.name, MANIFEST})

    # -- searching -----------------------------------------------------------------------------

    def search(
        self, query_codes: np.ndarray, k: int = 10, *, model_fingerprint: str, metric: str | None = None
    ) -> list[list[Hit]]:
        """The k nearest indexed images of each query code, nearest first.

        The ranking is :func:`rmnet.metrics.retrieval.rank_database`'s, to the last tie: exact
        integer cosine or Hamming distance, ties to the lower row (the image added first).
        Queries run one at a time, each on one FAISS thread (see :func:`_single_faiss_thread`).
        """
        query_codes = np.asarray(query_codes, dtype=np.float32)
        if query_codes.ndim == 1:
            query_codes = query_codes[None]
        current = self._current  # one generation for the whole call, whatever an add does meanwhile
        _check_model(self.root, current.manifest, model_fingerprint, query_codes.shape[1])
        metric = metric or current.manifest["metric"]
        if metric not in METRICS:
            raise ValueError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not current.count:
            raise ValueError(f"index {self.root} is empty: add images first (`rmnet index add`)")
        _single_faiss_thread()
        results = []
        for query in quantize_codes(query_codes):
            rows, distances = self._nearest(current, query, min(k, current.count), metric)
            results.append(_hits(current, rows, distances))
        return results

    @staticmethod
    def _nearest(
        current: _Generation, query: np.ndarray, k: int, metric: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and distances of the k nearest codes to one integer query code (``quantize_codes``)."""
        if metric == "hamming":
            return current.hamming().nearest(query, k)
        return _nearest_cosine(current.vectors, query, k)


class _Generation:
    """One committed state of an index: never changed, so any thread may read it at any time."""

    def __init__(
        self,
        manifest: dict[str, Any],
        vectors: faiss.Index,
        db: sqlite3.Connection,
        items_path: Path | None = None,  # None: a new index whose (empty) rows are in memory
    ) -> None:
        self.manifest, self.vectors, self.db, self.items_path = manifest, vectors, db, items_path
        self.lock = threading.Lock()  # one statement at a time on the shared SQLite connection
        self.has_cached_path = any(r[1] == "cached_path" for r in db.execute("PRAGMA table_info(items)"))
        self._hamming: _HammingBuckets | _HammingFlat | None = None
        self._hamming_lock = threading.Lock()

    @property
    def count(self) -> int:
        return self.manifest["count"]

    @property
    def generation(self) -> int:
        return self.manifest["generation"]

    @property
    def code_length(self) -> int:
        return self.manifest["model"]["code_length"]

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    def items(self, where: str, parameters: Sequence[Any]) -> list[StoredItem]:
        cached = "cached_path" if self.has_cached_path else "NULL"
        rows = self.query(
            "SELECT row, image_id, path, label, class_name, content_hash, metadata, added_at, "
            f"{cached} FROM items WHERE {where} ORDER BY row",
            parameters,
        )
        return [StoredItem(*r[:6], json.loads(r[6]), *r[7:]) for r in rows]

    def hamming(self) -> _HammingBuckets | _HammingFlat:
        """The Hamming search structure, derived from the stored codes on first use."""
        if self._hamming is None:
            with self._hamming_lock:
                if self._hamming is None:
                    bits = _stored_bits(self.vectors)
                    if self.code_length <= BUCKET_MAX_BITS:
                        self._hamming = _HammingBuckets(bits)
                    else:
                        self._hamming = _HammingFlat(bits)
        return self._hamming

    def close(self) -> None:
        with self.lock:
            self.db.close()


# -- exact nearest neighbours --------------------------------------------------------------------


def _nearest_cosine(vectors: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k codes of largest exact integer inner product with ``query``, ties to the lower row.

    FAISS (float32) proposes candidates; its similarities are within ``margin`` of the exact
    ones, so every code that can be among the k best has a FAISS similarity of at least the k-th
    FAISS similarity minus 2·margin. The candidates are ranked on the exact integers.
    """
    n, d = vectors.ntotal, vectors.d
    margin = (d + 2) * 2.0**-22  # 4× the float32 error bound of a d-term inner product of unit vectors
    probe = min(k + _EXTRA, n)
    grid = (query / COSINE_SCALE).astype(np.float32)[None]
    similarity, rows = (a[0] for a in vectors.search(grid, probe))
    floor = float(similarity[k - 1]) - 2 * margin
    if probe < n and similarity[-1] >= floor:  # the candidates go on beyond what was returned
        _, similarity, rows = vectors.range_search(grid, floor)
    keys = (vectors.reconstruct_batch(rows).astype(np.float64) * COSINE_SCALE) @ query.astype(np.float64)
    order = np.lexsort((rows, -keys))[:k]
    return rows[order].astype(np.int64), cosine_distances_from_keys(keys[order])


class _HammingBuckets:
    """Exact Hamming search over codes of at most 16 bits, with the code as the bucket key.

    The rows are sorted by code (a stable counting sort: within a bucket, by row); a query reads
    the buckets at Hamming distance 0, 1, 2… from its code until k rows are certain. At the
    radius where the k-th row falls, the rows with the lowest numbers among that radius's buckets
    are taken (the first ones of each bucket suffice, since buckets are in row order).
    """

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = bits.shape[1]
        self.weights = 1 << np.arange(self.bits - 1, -1, -1, dtype=np.int64)  # first bit highest
        keys = _keys(bits)
        self.order = np.argsort(keys, kind="stable")  # radix sort for 16-bit keys: O(n)
        if len(keys) < 2**31:
            self.order = self.order.astype(np.int32)
        counts = np.bincount(keys, minlength=1 << self.bits)
        self.offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=self.offsets[1:])
        self.masks = _masks_by_weight(self.bits)

    @property
    def nbytes(self) -> int:
        return self.order.nbytes + self.offsets.nbytes

    def nearest(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        key = int((query > 0) @ self.weights)
        rows, distances, found = [], [], 0
        for radius, masks in enumerate(self.masks):
            buckets = key ^ masks
            starts = self.offsets[buckets]
            sizes = self.offsets[buckets + 1] - starts
            total = int(sizes.sum())
            if not total:
                continue
            need = k - found
            take = np.minimum(sizes, need)
            found_here = self.order[_ranges(starts, take)]
            if total > need:  # the k-th result is at this radius: the lowest rows win the tie
                if len(found_here) > need:
                    found_here = np.partition(found_here, need - 1)[:need]
            found_here = np.sort(found_here)
            rows.append(found_here)
            distances.append(np.full(len(found_here), radius, np.int64))
            found += len(found_here)
            if found >= k:
                break
        return np.concatenate(rows).astype(np.int64), np.concatenate(distances)


class _HammingFlat:
    """Exact Hamming search with faiss.IndexBinaryFlat (codes longer than 16 bits), ties to the
    lower row: every code at the k-th distance is fetched (a range search when FAISS's top list
    ends inside that group) before the tie is broken."""

    def __init__(self, bits: np.ndarray) -> None:
        packed = np.packbits(bits, axis=1)
        self.index = _faiss().IndexBinaryFlat(packed.shape[1] * 8)
        self.index.add(packed)

    @property
    def nbytes(self) -> int:
        return self.index.ntotal * self.index.code_size

    def nearest(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.index.ntotal
        packed = pack_codes(query[None])
        probe = min(k + _EXTRA, n)
        distances, rows = (a[0] for a in self.index.search(packed, probe))
        bound = int(distances[k - 1])
        if probe < n and int(distances[-1]) <= bound:  # the tied group may go on beyond the list
            _, distances, rows = self.index.range_search(packed, bound + 1)  # all at distance <= bound
        distances = distances.astype(np.int64)
        order = np.lexsort((rows, distances))[:k]
        return rows[order].astype(np.int64), distances[order]


def _keys(bits: np.ndarray) -> np.ndarray:
    """Each row of bits (≤ 16) as one integer, first bit highest (the order of np.packbits)."""
    keys = np.zeros(len(bits), np.uint32)
    for column in bits.T:
        keys = (keys << 1) | column
    return keys.astype(np.uint16)


@lru_cache(maxsize=4)
def _masks_by_weight(bits: int) -> list[np.ndarray]:
    """All ``bits``-bit masks, grouped by their number of set bits (0, 1, … bits)."""
    masks = np.arange(1 << bits, dtype=np.int64)
    weight = np.bitwise_count(masks)
    return [masks[weight == w] for w in range(bits + 1)]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start_i, start_i + 1, …, start_i + length_i − 1 of every range, concatenated."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total)


def _stored_bits(vectors: faiss.Index, block: int = 1 << 20) -> np.ndarray:
    """The sign bits (N, d) of the stored codes, read in blocks (no full float copy)."""
    n, d = vectors.ntotal, vectors.d
    bits = np.empty((n, d), bool)
    for start in range(0, n, block):
        stop = min(n, start + block)
        bits[start:stop] = vectors.reconstruct_n(start, stop - start) > 0
    return bits


# -- reading an index ----------------------------------------------------------------------------


def _hits(current: _Generation, rows: np.ndarray, distances: np.ndarray) -> list[Hit]:
    cached = "cached_path" if current.has_cached_path else "NULL"
    found = {}
    for start in range(0, len(rows), _SQL_CHUNK):
        chunk = [int(r) for r in rows[start : start + _SQL_CHUNK]]
        marks = ",".join("?" * len(chunk))
        query = (
            f"SELECT row, image_id, path, label, class_name, metadata, {cached} FROM items "
            f"WHERE row IN ({marks})"
        )
        found.update((r[0], r) for r in current.query(query, chunk))
    hits = []
    for rank, (row, distance) in enumerate(zip(rows, distances, strict=True), start=1):
        _, image_id, path, label, class_name, metadata, cached_path = found[int(row)]
        hits.append(
            Hit(
                rank,
                int(row),
                image_id,
                path,
                label,
                class_name,
                float(distance),
                json.loads(metadata),
                cached_path,
            )
        )
    return hits


def _new_items(
    base: _Generation, items: Sequence[IndexItem]
) -> tuple[list[int], list[str], list[tuple[str, str]]]:
    """Positions and ids of the items to add, and (id, reason) of those already present."""
    known_ids: set[str] = set()
    known_content: dict[str, str] = {}
    if base.count:
        known_ids = set(_lookup(base, "image_id", [item.image_id for item in items]))
        known_content = _lookup(
            base, "content_hash", [item.content_hash for item in items if item.content_hash]
        )
    batch_ids: set[str] = set()
    batch_content: dict[str, str] = {}
    keep, added, skipped = [], [], []
    for i, item in enumerate(items):
        if item.image_id in known_ids:
            skipped.append((item.image_id, "already in the index (same image id)"))
        elif item.image_id in batch_ids:
            skipped.append((item.image_id, "listed twice"))
        elif item.content_hash and item.content_hash in known_content:
            skipped.append((item.image_id, f"same file content as {known_content[item.content_hash]}"))
        elif item.content_hash and item.content_hash in batch_content:
            skipped.append((item.image_id, f"same file content as {batch_content[item.content_hash]}"))
        else:
            keep.append(i)
            added.append(item.image_id)
            batch_ids.add(item.image_id)
            if item.content_hash:
                batch_content[item.content_hash] = item.image_id
    return keep, added, skipped


def _lookup(base: _Generation, column: str, values: Sequence[str]) -> dict[str, str]:
    """{value: image_id} for the stored rows whose ``column`` is one of ``values``."""
    found: dict[str, str] = {}
    values = list(dict.fromkeys(values))
    for start in range(0, len(values), _SQL_CHUNK):  # SQLite limits the parameters of one statement
        chunk = values[start : start + _SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(
            dict(base.query(f"SELECT {column}, image_id FROM items WHERE {column} IN ({marks})", chunk))
        )
    return found


def _check_model(root: Path, manifest: dict[str, Any], fingerprint: str, code_length: int | None) -> None:
    model = _model_identity(manifest)
    if code_length is not None and code_length != model.code_length:
        raise IndexMismatchError(
            f"the codes have {code_length} dimensions, but index {root} holds "
            f"{describe_codes(model)} of model {model.fingerprint} ({model.description}); "
            "use that model, or rebuild the index with this one (`rmnet index build --overwrite`)"
        )
    if fingerprint != model.fingerprint:
        where = f", {model.checkpoint}" if model.checkpoint else ""
        raise IndexMismatchError(
            f"index {root} was built with model {model.fingerprint} ({model.description}{where}), "
            f"not with this model ({fingerprint}): codes of different models cannot be compared. "
            "Search with the model that built it, or rebuild the index (`rmnet index build --overwrite`)"
        )


def _model_identity(manifest: dict[str, Any]) -> ModelIdentity:
    known = ModelIdentity.__dataclass_fields__
    return ModelIdentity(**{key: value for key, value in manifest["model"].items() if key in known})


def _load_generation(root: Path, attempts: int = 5) -> _Generation:
    """The generation the manifest names, checked; read again if a writer replaced it meanwhile."""
    for attempt in range(attempts):
        manifest = _read_manifest(root)
        try:
            return _load(root, manifest)
        except IndexCorruptError:
            if attempt == attempts - 1 or _generation_on_disk(root) == manifest["generation"]:
                raise
    raise AssertionError("unreachable")


def _load(root: Path, manifest: dict[str, Any]) -> _Generation:
    faiss = _faiss()
    vectors_path, items_path = root / manifest["vectors"], root / manifest["items"]
    for path in (vectors_path, items_path):
        if not path.is_file():
            raise IndexCorruptError(
                f"index {root} is missing {path.name}, named by its manifest; the folder was changed "
                "outside rmnet: rebuild it with `rmnet index build`"
            )
    try:
        vectors = faiss.read_index(str(vectors_path))
        db = _connect_read_only(items_path)
        rows, first, last = db.execute("SELECT COUNT(*), MIN(row), MAX(row) FROM items").fetchone()
    except (RuntimeError, sqlite3.DatabaseError) as err:
        raise IndexCorruptError(
            f"index {root} cannot be read ({err}); rebuild it with `rmnet index build`"
        ) from err
    count, length = manifest["count"], manifest["model"]["code_length"]
    problems = []
    if vectors.ntotal != count or rows != count:
        problems.append(
            f"the manifest counts {count} items, {vectors_path.name} holds {vectors.ntotal} vectors "
            f"and {items_path.name} {rows} rows"
        )
    elif count and (first, last) != (0, count - 1):
        problems.append(f"rows are numbered {first}..{last}, not 0..{count - 1}")
    if vectors.d != length:
        problems.append(f"vectors have {vectors.d} dimensions, the model's codes {length}")
    if problems:
        db.close()
        raise IndexCorruptError(
            f"index {root} is inconsistent ({'; '.join(problems)}); rebuild it with `rmnet index build`"
        )
    return _Generation(manifest, vectors, db, items_path)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not an rmnet index (no {MANIFEST}); create one with `rmnet index build`"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise IndexCorruptError(f"{path} is not valid JSON ({err}); rebuild the index") from err
    if manifest.get("format") != FORMAT:
        raise IndexCorruptError(
            f"{path} does not describe an rmnet index (format {manifest.get('format')!r})"
        )
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise IndexCorruptError(
            f"index {root} has format version {manifest['format_version']}, newer than this rmnet "
            f"understands ({FORMAT_VERSION}); upgrade rmnet"
        )
    return manifest


def _file_stamp(path: Path) -> tuple[int, ...]:
    """What changes when a file is replaced (a commit renames a new manifest over the old one)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ()
    return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)


def _generation_on_disk(root: Path) -> int:
    """The generation the manifest on disk names (0 when there is none yet)."""
    return _read_manifest(root)["generation"] if (root / MANIFEST).exists() else 0


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that any thread may use (callers serialise it: _Generation.lock)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)


# -- writing an index ----------------------------------------------------------------------------


def _write_durably(path: Path, write) -> None:
    """``write(tmp)`` (which flushes the file to disk), rename to ``path`` atomically, flush the
    folder entry: after a crash the file is whole, old or new."""
    atomic_write(path, write)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_files(root: Path, keep: set[str]) -> None:
    """Delete earlier generations and temporary files left by interrupted saves."""
    for path in root.iterdir():
        stale_generation = path.name.startswith(("vectors-", "items-")) and path.name not in keep
        if stale_generation or path.name.endswith((".tmp", ".tmp-journal")):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _writer_lock(root: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on the index folder (released by the OS if the process dies),
    waiting up to ``timeout`` seconds for another writer to finish."""
    if fcntl is None:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if time.monotonic() >= deadline:
                    raise IndexBusyError(
                        f"another process has been writing index {root} for more than {timeout:g} s; "
                        "try again when it has finished, or wait longer (--lock-timeout)"
                    ) from err
                time.sleep(_LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- FAISS ---------------------------------------------------------------------------------------

_threads = threading.local()


def _faiss():
    """FAISS, imported on first use (``import rmnet.retrieval`` does not load it)."""
    import faiss

    return faiss


def _single_faiss_thread() -> None:
    """Run this thread's FAISS calls on one OpenMP thread, set once per thread, never restored.

    A single query gains nothing from OpenMP and, on a busy CPU, waits for descheduled threads at
    every barrier (a flat search of 1M codes: 7.5 ms on one thread, 48 ms on two, median, in
    benchmarks/retrieval_index.py on a busy 2-core machine). OpenMP keeps this setting per
    thread, so it is made once in each thread that searches (a service's worker threads included)
    and other threads keep theirs; a caller who changes it afterwards in that thread is obeyed.
    """
    if not getattr(_threads, "single", False):
        _faiss().omp_set_num_threads(1)
        _threads.single = True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
