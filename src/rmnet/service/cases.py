"""The service's side of the similar-case index: search, add, and the images of the cases.

:class:`CaseStore` shares one :class:`rmnet.retrieval.CodeIndex` between the request threads:

- searches run in the request threads, concurrently; CodeIndex lets any number of searches run
  while one thread adds (each search reads one committed generation from start to end);
- opening and adding run on one writer thread ("rmnet-index-writer"), so adds are serialised:
  checking that an id is new and adding it cannot interleave with another add. An add is atomic and
  durable: the image file is written, flushed and renamed first, then CodeIndex commits the codes
  (its manifest rename is the commit point). Writers in other processes are serialised with it by
  CodeIndex's lock on the folder.

The index knows each case's image file: ``GET /api/cases/{id}/image`` looks the id up with
``CodeIndex.find`` and serves the file the index names; no path is ever built from what the client
sent. Before every search and lookup the store picks up what another process committed (another
serving process of ``rmnet serve --processes N``, or ``rmnet index add`` while the service runs):
one ``stat`` of the index's manifest when nothing changed, so a case added anywhere is found at once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rmnet.io import atomic_write
from rmnet.retrieval.index import CodeIndex, Hit, IndexItem, ModelIdentity, StoredItem
from rmnet.service.uploads import RequestError

log = logging.getLogger(__name__)

# Formats a browser shows as they are stored; other files (TIFF) are sent as PNG.
BROWSER_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".gif": "image/gif", ".bmp": "image/bmp"}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One indexed case: its id, image file and diagnosis."""

    case_id: str
    path: str | None
    label: int
    class_name: str


@dataclass(frozen=True)
class IndexInfo:
    path: str
    count: int
    metric: str
    class_names: tuple[str, ...]
    code_length: int
    model: ModelIdentity

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "count": self.count,
            "metric": self.metric,
            "classes": list(self.class_names),
            "code_length": self.code_length,
            "model_fingerprint": self.model.fingerprint,
            "built_by_run": self.model.run,
        }


class CaseStore:
    """A CodeIndex shared by the request threads: searches in any thread, writes on one."""

    def __init__(self, index_dir: str | os.PathLike, cases_dir: str | os.PathLike) -> None:
        self.root = Path(index_dir)
        self.cases_dir = Path(cases_dir)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmnet-index-writer")
        self._index: CodeIndex | None = None
        self._fingerprint: str | None = None
        self._closed = False
        self.info: IndexInfo = self._writer.submit(self._open).result()

    def _open(self) -> IndexInfo:
        self._index = CodeIndex.open(self.root)
        return self._describe()

    def _describe(self) -> IndexInfo:
        index = self._index
        return IndexInfo(
            path=str(self.root.resolve()),
            count=len(index),
            metric=index.metric,
            class_names=tuple(index.class_names),
            code_length=index.code_length,
            model=index.model,
        )

    def attach_model(self, fingerprint: str, code_length: int) -> None:
        """Check that the service's model built the index (codes of the same model and length)."""
        self._writer.submit(self._index.check_model, fingerprint, code_length).result()
        self._fingerprint = fingerprint

    # -- requests ----------------------------------------------------------------------------------

    def search(self, code: np.ndarray, k: int) -> list[Hit]:
        """The k nearest cases to one code ([] when the index is empty); call it from any thread."""
        self._catch_up()
        if self.info.count == 0:
            return []
        query = np.asarray(code, np.float32)[None]
        return self._index.search(query, k, model_fingerprint=self._fingerprint)[0]

    def _catch_up(self) -> None:
        """Switch to the generation another process committed, if any (any thread; cheap if none)."""
        try:
            if self._index.refresh():
                self.info = self._describe()
        except Exception:  # noqa: BLE001 - keep serving the generation we have
            log.exception("could not read the index's new generation")

    def add(
        self, data: bytes, extension: str, code: np.ndarray, label: int, case_id: str | None, metadata: dict
    ) -> Future:
        """Future of the added :class:`Case`: the image file is stored, then its code indexed.

        ``case_id`` None: ``case-`` and the first 16 hex digits of the image's SHA-256. 409 when the
        id, or the same image content, is already indexed.
        """
        code = np.asarray(code, np.float32)
        return self._writer.submit(self._add, data, extension, code, label, case_id, metadata)

    def _add(
        self, data: bytes, extension: str, code: np.ndarray, label: int, case_id: str | None, metadata: dict
    ) -> Case:
        digest = hashlib.sha256(data).hexdigest()
        case_id = case_id or f"case-{digest[:16]}"
        self._catch_up()  # an id another process added meanwhile is taken too
        if self._index.find(case_id) is not None:
            raise RequestError(409, f"case id {case_id!r} is already in the index; choose another id")
        # The file is named by its content, never by the client's id: no path comes from the request.
        path = self.cases_dir / f"{digest}{extension}"
        existed = path.exists()
        if not existed:
            self.cases_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, functools.partial(_write_synced, data=data))
            _fsync_dir(self.cases_dir)
        item = IndexItem(case_id, label, str(path.resolve()), digest, metadata)
        try:
            result = self._index.add(code[None], [item], model_fingerprint=self._fingerprint)
        except BaseException:
            if not existed:
                path.unlink(missing_ok=True)
            raise
        if result.skipped:
            if not existed:
                path.unlink(missing_ok=True)
            raise RequestError(409, f"case {case_id!r} was not added: {result.skipped[0][1]}")
        self.info = self._describe()
        return Case(case_id, str(path.resolve()), label, self._index.class_names[label])

    def get(self, case_id: str) -> Case | None:
        """The indexed case with this id, or None (any thread)."""
        self._catch_up()
        found = self._index.find(case_id)
        return None if found is None else _case(found)

    def image(self, case_id: str, size: int | None = None) -> tuple[bytes, str]:
        """(bytes, media type) of a case's image: the stored file, or a thumbnail at most ``size``
        px on a side. 404 for an unknown id or a file that is no longer there."""
        case = self.get(case_id)
        if case is None:
            raise RequestError(404, f"no case with id {case_id[:80]!r} in the index")
        path = Path(case.path) if case.path else None
        if path is None or not path.is_file():
            raise RequestError(404, f"the image file of case {case_id!r} is not on this server ({case.path})")
        if size is None:
            return _full_image(path)
        stat = path.stat()
        return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size, size)

    def close(self) -> None:
        """Close the index (after the writes already submitted); closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._index is not None:
            self._writer.submit(self._index.close).result()
        self._writer.shutdown(wait=True)


def _full_image(path: Path) -> tuple[bytes, str]:
    """The stored file when a browser shows its format, else the image as PNG."""
    media_type = BROWSER_TYPES.get(path.suffix.lower())
    if media_type:
        return path.read_bytes(), media_type
    from rmnet.data.images import open_rgb

    out = io.BytesIO()
    open_rgb(path).save(out, "PNG")
    return out.getvalue(), "image/png"


@functools.lru_cache(maxsize=2048)
def _thumbnail(path: str, mtime_ns: int, file_size: int, size: int) -> tuple[bytes, str]:
    """A JPEG at most ``size`` px on a side (cached; the file's mtime and size are in the key)."""
    from rmnet.data.images import open_rgb

    image = open_rgb(path)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=88)
    return out.getvalue(), "image/jpeg"


def _case(item: StoredItem) -> Case:
    path = item.path
    if item.cached_path and not (path and Path(path).is_file()):
        path = item.cached_path  # the resized copy (rmnet prepare) when the original is not here
    return Case(item.image_id, path, item.label, item.class_name)


def _write_synced(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
