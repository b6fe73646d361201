"""A persistent index of retrieval codes: FAISS for the vectors, SQLite for what each vector is.

An index is one folder:

    manifest.json        the current generation: its two files, the item count, the model identity
    vectors-<g>.faiss    faiss.IndexFlatIP over the L2-normalised codes (inner product = cosine)
    items-<g>.sqlite     row i describes vector i: image id, path, label, class name, content
                         hash, metadata (JSON), when it was added

Every change writes a new generation g+1 under new names (flushed to disk), then atomically
replaces manifest.json, then deletes generation g. Whenever a save is interrupted, the manifest
names a complete pair: the old one or the new one. Opening checks that the pair agrees with the
manifest. The Hamming index (faiss.IndexBinaryFlat) is derived from the signs of the stored codes
when first needed, so it cannot disagree with them. Writers take a lock on the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rmnet.metrics.retrieval import METRICS, normalize_codes
from rmnet.retrieval.codes import pack_codes

try:
    import fcntl
except ImportError:  # not POSIX: writers are not locked against each other
    fcntl = None

log = logging.getLogger(__name__)

FORMAT = "rmnet-code-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_TIE = 1e-6  # cosine similarities this close to the k-th count as tied with it

_SCHEMA = """
CREATE TABLE items (
    row INTEGER PRIMARY KEY,        -- position of the vector in the FAISS index
    image_id TEXT NOT NULL UNIQUE,
    path TEXT,
    label INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    content_hash TEXT,
    metadata TEXT NOT NULL,         -- JSON object
    added_at TEXT NOT NULL
);
CREATE INDEX items_content_hash ON items (content_hash);
"""


class IndexMismatchError(ValueError):
    """Codes from another model (or of another length) than the one that built the index."""


class IndexCorruptError(ValueError):
    """The files of an index disagree with each other or with its manifest."""


class IndexBusyError(OSError):
    """Another process is writing the index, or wrote it since this one opened it."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made the codes: its fingerprint and code length, and where to load it from."""

    fingerprint: str
    code_length: int
    description: str = ""
    run: str | None = None  # run folder, so that `rmnet search` can load the model
    checkpoint: str | None = None


@dataclass(frozen=True)
class IndexItem:
    """What one code is: the image it came from and its diagnosis."""

    image_id: str
    label: int
    path: str | None = None
    content_hash: str | None = None  # e.g. sha256 of the file: the same image under another id
    metadata: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class AddResult:
    """What an add did: the ids added, and the (id, reason) of those skipped as already present."""

    added: list[str]
    skipped: list[tuple[str, str]]  # (image id, why)


class CodeIndex:
    """Codes of a database of diagnosed images, searchable by cosine or Hamming distance."""

    def __init__(self, root: Path, manifest: dict[str, Any], vectors: faiss.Index, db: sqlite3.Connection):
        self.root, self._manifest, self._vectors, self._db = root, manifest, vectors, db
        self._binary: faiss.IndexBinary | None = None

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
    ) -> CodeIndex:
        """A new, empty index in ``root``.

        A new folder is written at once. With ``overwrite``, an index already in ``root`` stays
        on disk, untouched, until the first :meth:`add` replaces it.
        """
        root = Path(root)
        if metric not in METRICS:
            raise ValueError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")
        generation = 0
        if (root / MANIFEST).exists():
            if not overwrite:
                raise FileExistsError(
                    f"{root} already holds an index; add images to it with `rmnet index add`, "
                    "or replace it (--overwrite)"
                )
            generation = _read_manifest(root)["generation"]
        elif root.exists() and any(root.iterdir()):
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
        db = sqlite3.connect(":memory:")
        db.executescript(_SCHEMA)
        index = cls(root, manifest, faiss.IndexFlatIP(model.code_length), db)
        if generation == 0:
            index._commit(np.zeros((0, model.code_length), np.float32), [])
        return index

    @classmethod
    def open(cls, root: str | os.PathLike) -> CodeIndex:
        """Open the index in ``root``, checking that its files agree with each other."""
        root = Path(root)
        manifest = _read_manifest(root)
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
        return cls(root, manifest, vectors, db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CodeIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what it holds -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._manifest["count"]

    @property
    def model(self) -> ModelIdentity:
        return ModelIdentity(**self._manifest["model"])

    @property
    def code_length(self) -> int:
        return self._manifest["model"]["code_length"]

    @property
    def metric(self) -> str:
        return self._manifest["metric"]

    @property
    def class_names(self) -> list[str]:
        return list(self._manifest["class_names"])

    @property
    def generation(self) -> int:
        return self._manifest["generation"]

    def codes(self) -> np.ndarray:
        """All stored codes (L2-normalised), row i for item i."""
        return self._vectors.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.code_length))

    def labels(self) -> np.ndarray:
        """The label of every item, row i for item i."""
        return np.array([r[0] for r in self._db.execute("SELECT label FROM items ORDER BY row")], np.int64)

    def check_model(self, fingerprint: str, code_length: int | None = None) -> None:
        """Refuse codes of another length, or from another model than the one that built the index."""
        model = self.model
        if code_length is not None and code_length != model.code_length:
            raise IndexMismatchError(
                f"the codes have {code_length} dimensions, but index {self.root} holds "
                f"{model.code_length}-bit codes of model {model.fingerprint} ({model.description}); "
                "use that model, or rebuild the index with this one (`rmnet index build --overwrite`)"
            )
        if fingerprint != model.fingerprint:
            where = f", {model.checkpoint}" if model.checkpoint else ""
            raise IndexMismatchError(
                f"index {self.root} was built with model {model.fingerprint} ({model.description}{where}), "
                f"not with this model ({fingerprint}): codes of different models cannot be compared. "
                "Search with the model that built it, or rebuild the index (`rmnet index build --overwrite`)"
            )

    # -- changing it ---------------------------------------------------------------------------

    def add(self, codes: np.ndarray, items: Sequence[IndexItem], *, model_fingerprint: str) -> AddResult:
        """Append codes and their items, skipping any image already present (same id or content).

        The change is saved at once, atomically: on failure the index on disk is unchanged.
        """
        codes = np.asarray(codes, dtype=np.float32)
        if codes.ndim != 2 or len(codes) != len(items):
            raise ValueError(f"need one code per item: codes of shape {codes.shape} for {len(items)} items")
        self.check_model(model_fingerprint, codes.shape[1])
        for item in items:
            if not 0 <= item.label < len(self.class_names):
                raise ValueError(
                    f"image {item.image_id} has label {item.label}, but the index knows "
                    f"{len(self.class_names)} classes ({', '.join(self.class_names)})"
                )
        keep, skipped = self._new_items(items)
        for image_id, why in skipped:
            log.info("skipped %s: %s", image_id, why)
        if not keep:
            return AddResult([], skipped)
        now, start = _now(), len(self)
        rows = [
            (
                start + n,
                items[i].image_id,
                items[i].path,
                int(items[i].label),
                self.class_names[items[i].label],
                items[i].content_hash,
                json.dumps(items[i].metadata, default=str),
                now,
            )
            for n, i in enumerate(keep)
        ]
        self._commit(normalize_codes(codes[keep]), rows)
        return AddResult([items[i].image_id for i in keep], skipped)

    def _new_items(self, items: Sequence[IndexItem]) -> tuple[list[int], list[tuple[str, str]]]:
        """Positions of the items to add, and (id, reason) of those already present."""
        known_ids = set(self._lookup("image_id", [item.image_id for item in items]))
        known_content = self._lookup(
            "content_hash", [item.content_hash for item in items if item.content_hash]
        )
        batch_ids: set[str] = set()
        batch_content: dict[str, str] = {}
        keep, skipped = [], []
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
                batch_ids.add(item.image_id)
                if item.content_hash:
                    batch_content[item.content_hash] = item.image_id
        return keep, skipped

    def _lookup(self, column: str, values: Sequence[str]) -> dict[str, str]:
        """{value: image_id} for the stored rows whose ``column`` is one of ``values``."""
        found: dict[str, str] = {}
        values = list(dict.fromkeys(values))
        for start in range(0, len(values), 500):  # SQLite limits the parameters of one statement
            chunk = values[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {column}, image_id FROM items WHERE {column} IN ({marks})"
            found.update(dict(self._db.execute(query, chunk).fetchall()))
        return found

    def _commit(self, new_codes: np.ndarray, rows: list[tuple]) -> None:
        """Write generation g+1 = the current content plus ``new_codes``/``rows``; then switch to it."""
        with _writer_lock(self.root):
            on_disk = _read_manifest(self.root)["generation"] if (self.root / MANIFEST).exists() else 0
            if on_disk != self.generation:
                raise IndexBusyError(
                    f"index {self.root} was changed by another process since it was opened "
                    f"(generation {self.generation} → {on_disk}); open it again"
                )
            generation = self.generation + 1
            items_path = self.root / f"items-{generation:06d}.sqlite"
            vectors_path = self.root / f"vectors-{generation:06d}.faiss"

            tmp = items_path.with_name(items_path.name + ".tmp")
            tmp.unlink(missing_ok=True)
            db = sqlite3.connect(tmp)
            try:
                self._db.backup(db)
                with db:
                    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            finally:
                db.close()
            _replace_durably(tmp, items_path)

            vectors = faiss.clone_index(self._vectors)
            vectors.add(new_codes)
            tmp = vectors_path.with_name(vectors_path.name + ".tmp")
            faiss.write_index(vectors, str(tmp))
            _replace_durably(tmp, vectors_path)

            manifest = dict(self._manifest, generation=generation, count=vectors.ntotal, updated=_now())
            manifest.update(vectors=vectors_path.name, items=items_path.name)
            tmp = self.root / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            _replace_durably(tmp, self.root / MANIFEST)  # the commit point

            self._db.close()
            self._manifest, self._vectors, self._binary = manifest, vectors, None
            self._db = _connect_read_only(items_path)
            _remove_stale_files(self.root, keep={vectors_path.name, items_path.name, MANIFEST})

    # -- searching -----------------------------------------------------------------------------

    def search(
        self, query_codes: np.ndarray, k: int = 10, *, model_fingerprint: str, metric: str | None = None
    ) -> list[list[Hit]]:
        """The k nearest indexed images of each query code, nearest first.

        Ties are broken deterministically as in :func:`rmnet.metrics.retrieval.rank_database`: by
        the cosine distance (for Hamming), then by the order in which images were added. Queries
        run one at a time on one FAISS thread, the fastest way for a few queries.
        """
        query_codes = np.asarray(query_codes, dtype=np.float32)
        if query_codes.ndim == 1:
            query_codes = query_codes[None]
        self.check_model(model_fingerprint, query_codes.shape[1])
        metric = metric or self.metric
        if metric not in METRICS:
            raise ValueError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not len(self):
            raise ValueError(f"index {self.root} is empty: add images first (`rmnet index add`)")
        results = []
        with _single_faiss_thread():
            for query in normalize_codes(query_codes):
                rows, distances = self._nearest(query[None], min(k, len(self)), metric)
                results.append(self._hits(rows, distances))
        return results

    def _nearest(self, query: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows and distances of the k nearest codes to one normalised query (1, d)."""
        probe = min(k + 1, len(self))  # one more than asked, to see whether the k-th is tied
        if metric == "cosine":
            similarity, rows = (a[0] for a in self._vectors.search(query, probe))
            if probe > k and similarity[k] >= similarity[k - 1] - _TIE:
                _, similarity, rows = self._vectors.range_search(query, float(similarity[k - 1]) - _TIE)
            distance = 1.0 - similarity
            order = np.lexsort((rows, distance))[:k]
            return rows[order], distance[order]
        binary, packed = self._binary_index(), pack_codes(query)
        hamming, rows = (a[0] for a in binary.search(packed, probe))
        if probe > k and hamming[k] == hamming[k - 1]:
            _, hamming, rows = binary.range_search(packed, int(hamming[k - 1]) + 1)
        cosine_distance = 1.0 - self._vectors.reconstruct_batch(rows) @ query[0]
        order = np.lexsort((rows, cosine_distance, hamming))[:k]
        return rows[order], hamming[order].astype(np.float64)

    def _binary_index(self) -> faiss.IndexBinary:
        if self._binary is None:
            packed = pack_codes(self.codes())
            self._binary = faiss.IndexBinaryFlat(packed.shape[1] * 8)
            self._binary.add(packed)
        return self._binary

    def _hits(self, rows: np.ndarray, distances: np.ndarray) -> list[Hit]:
        marks = ",".join("?" * len(rows))
        query = f"SELECT row, image_id, path, label, class_name, metadata FROM items WHERE row IN ({marks})"
        found = {r[0]: r for r in self._db.execute(query, [int(r) for r in rows])}
        hits = []
        for rank, (row, distance) in enumerate(zip(rows, distances, strict=True), start=1):
            _, image_id, path, label, class_name, metadata = found[int(row)]
            hits.append(
                Hit(rank, int(row), image_id, path, label, class_name, float(distance), json.loads(metadata))
            )
        return hits


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


def _connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _replace_durably(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, rename it to ``path`` (atomic), and flush the folder entry."""
    _fsync(tmp)
    os.replace(tmp, path)
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
        if stale_generation or path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _single_faiss_thread() -> Iterator[None]:
    """Run FAISS on one thread: a single query gains nothing from OpenMP and, on a busy CPU, waits
    for descheduled threads at every barrier (10-100× slower in benchmarks/retrieval_index.py)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@contextlib.contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the index folder (released by the OS if the process dies)."""
    if fcntl is None:
        yield
        return
    with open(root / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise IndexBusyError(
                f"another process is writing index {root}; try again when it has finished"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
