"""The service's side of the similar-case index: search, add, and the images of the cases.

:class:`CaseStore` shares one :class:`rmnet.retrieval.CodeIndex` between the request threads:

- searches run in the request threads, concurrently; CodeIndex lets any number of searches run
  while one thread adds (each search reads one committed generation from start to end);
- opening and adding run on one writer thread ("rmnet-index-writer"), and every add, in any process,
  holds the cases folder's lock (``flock`` on ``CASES/.lock``) from its check that the id and the
  image are new to its commit: the image file is written (flushed, renamed), its existence checked
  and the codes committed by CodeIndex (its manifest rename is the commit point) while no other add
  runs. A refused or failed add removes only a file it wrote itself and that no indexed case names;
  a file the index refers to is never deleted.
- image files of adds that never committed (a process killed between writing and committing) are
  removed when a store opens, under the same lock.

The index knows each case's image file: ``GET /api/cases/{id}/image`` looks the id up with
``CodeIndex.find`` and serves the file the index names; no path is ever built from what the client
sent. Before every search and lookup the store picks up what another process committed (another
serving process of ``rmnet serve --processes N``, or ``rmnet index add`` while the service runs):
one ``stat`` of the index's manifest when nothing changed, so a case added anywhere is found at once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rmnet.io import atomic_write
from rmnet.retrieval.index import CodeIndex, Hit, IndexBusyError, IndexItem, ModelIdentity, StoredItem
from rmnet.service.uploads import PixelBudget, RequestError, decode_image

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: one process only
    fcntl = None

log = logging.getLogger(__name__)

# Formats a browser shows as they are stored; other files (TIFF) are sent as PNG.
BROWSER_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".gif": "image/gif", ".bmp": "image/bmp"}  # fmt: skip
CASE_FILE = re.compile(r"[0-9a-f]{64}\.[a-z]{3,4}")  # what _add names a case's image: its SHA-256
LOCK_FILE = ".lock"
LOCK_TIMEOUT_S = 30.0


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

    def __init__(
        self,
        index_dir: str | os.PathLike,
        cases_dir: str | os.PathLike,
        *,
        budget: PixelBudget | None = None,
        max_pixels: int = 50_000_000,
    ) -> None:
        self.root = Path(index_dir)
        self.cases_dir = Path(cases_dir)
        self.budget, self.max_pixels = budget, max_pixels  # for thumbnails, as for uploads
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rmnet-index-writer")
        self._index: CodeIndex | None = None
        self._fingerprint: str | None = None
        self._closed = False
        self.info: IndexInfo = self._writer.submit(self._open).result()

    def _open(self) -> IndexInfo:
        self._index = CodeIndex.open(self.root)
        if self.cases_dir.is_dir():
            with self._cases_lock():
                self._remove_orphans()
        return self._describe()

    @contextlib.contextmanager
    def _cases_lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the cases folder's lock (every process's adds take it; the OS frees it if one dies)."""
        self.cases_dir.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.cases_dir / LOCK_FILE, "a") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise IndexBusyError(
                            f"another process has been adding a case for more than {timeout:g} s"
                        ) from None
                    time.sleep(0.005)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_orphans(self) -> list[str]:
        """Delete image files of cases that were never committed (lock held): those named like a
        case image (its SHA-256) that no indexed item names by content or path. Returns their names."""
        self._catch_up()
        items = self._index.items()
        hashes = {item.content_hash for item in items if item.content_hash}
        paths = {Path(p).name for item in items for p in (item.path, item.cached_path) if p}
        removed = []
        for path in self.cases_dir.iterdir():
            name = path.name
            unfinished = name.startswith(".") and name.endswith(".tmp")  # rmnet.io.atomic_write's
            orphan = CASE_FILE.fullmatch(name) and path.stem not in hashes and name not in paths
            if (orphan or unfinished) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(name)
        if removed:
            log.warning("removed %d image file(s) of cases never added: %s", len(removed), ", ".join(removed))
        return removed

    def _describe(self) -> IndexInfo:
        index = self._index
        return IndexInfo(
            path=self.root.name,
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
        with self._cases_lock():  # no other add, in any process, until this one is committed or undone
            self._catch_up()  # an id another process added meanwhile is taken too
            if self._index.find(case_id) is not None:
                raise RequestError(409, f"case id {case_id!r} is already in the index; choose another id")
            # The file is named by its content, never by the client's id: no path comes from the request.
            path = self.cases_dir / f"{digest}{extension}"
            wrote = not path.is_file()
            if wrote:
                atomic_write(path, functools.partial(_write_synced, data=data))
                _fsync_dir(self.cases_dir)
            item = IndexItem(case_id, label, str(path.resolve()), digest, metadata)
            try:
                result = self._index.add(code[None], [item], model_fingerprint=self._fingerprint)
            except BaseException:
                self._undo(path, wrote)
                raise
            if result.skipped:
                self._undo(path, wrote)
                raise RequestError(409, f"case {case_id!r} was not added: {result.skipped[0][1]}")
        self.info = self._describe()
        return Case(case_id, str(path.resolve()), label, self._index.class_names[label])

    def _undo(self, path: Path, wrote: bool) -> None:
        """Remove the file an add wrote and did not commit, unless an indexed case names it (lock held)."""
        if not wrote:
            return
        try:
            self._catch_up()
            named = any(item.path and Path(item.path).name == path.name for item in self._index.items())
        except Exception:  # noqa: BLE001 - when in doubt, keep the file (the next start tidies up)
            log.exception("could not check whether %s is indexed; kept it", path.name)
            return
        if not named:
            path.unlink(missing_ok=True)

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
            raise RequestError(404, f"the image file of case {case_id[:80]!r} is not on this server")
        if size is None and path.suffix.lower() in BROWSER_TYPES:
            return path.read_bytes(), BROWSER_TYPES[path.suffix.lower()]
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, size)
        return _converted(key, functools.partial(self._convert, path, size))

    def _convert(self, path: Path, size: int | None) -> tuple[bytes, str]:
        """A stored image as PNG (a format browsers do not show) or as a JPEG thumbnail at most
        ``size`` px on a side, decoded like an upload (reduced early, within the pixel budget)."""
        try:
            image = decode_image(path.read_bytes(), max_pixels=self.max_pixels, budget=self.budget).image
        except RequestError as err:
            if err.status == 503:
                raise
            raise RequestError(404, f"the image file of this case cannot be read ({err.status})") from None
        out = io.BytesIO()
        if size is None:
            image.save(out, "PNG")
            return out.getvalue(), "image/png"
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        image.save(out, "JPEG", quality=88)
        return out.getvalue(), "image/jpeg"

    def close(self) -> None:
        """Close the index (after the writes already submitted); closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._index is not None:
            self._writer.submit(self._index.close).result()
        self._writer.shutdown(wait=True)


_CONVERTED: dict[tuple, tuple[bytes, str]] = {}
_CONVERTED_MAX = 2048
_CONVERTED_LOCK = threading.Lock()


def _converted(key: tuple, convert) -> tuple[bytes, str]:
    """``convert()``, cached by (path, mtime, size, thumbnail size); the oldest entries go first."""
    with _CONVERTED_LOCK:
        found = _CONVERTED.get(key)
    if found is None:
        found = convert()  # not under the lock: other images convert meanwhile
        with _CONVERTED_LOCK:
            if len(_CONVERTED) >= _CONVERTED_MAX:
                _CONVERTED.pop(next(iter(_CONVERTED)))
            _CONVERTED[key] = found
    return found


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
