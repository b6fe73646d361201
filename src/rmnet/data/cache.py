"""A resized copy of every image (short edge 256 by default), made once, so training decodes small files.

Large dermoscopy photographs (1024×1024 BCN, 600×450 HAM, bigger MSK) are decoded and shrunk on
every epoch otherwise. Made in parallel, resumable: each file is written under a temporary name
and renamed when whole, so an interrupted run leaves finished files and removable leftovers only.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from rmnet.data.files import claim_folder, remove_abandoned_temporaries, save_image_atomically
from rmnet.data.images import (
    SKIPPED_FILE,
    SkippedImage,
    UnreadableImageError,
    describe_problem,
    open_rgb,
    read_skipped,
    resize_short_edge,
    save_skipped,
    warn_skipped,
)
from rmnet.data.table import ImageTable
from rmnet.io import progress_bar

__all__ = ["CACHE_MANIFEST", "SKIPPED_FILE", "cache_image", "prepare_cache", "read_skipped"]

CACHE_MANIFEST = "cache.json"
JPEG_QUALITY = 95


def prepare_cache(
    table: ImageTable,
    out_dir: str | os.PathLike,
    short_edge: int = 256,
    workers: int | None = None,
    on_error: str = "raise",
) -> ImageTable:
    """Write ``out_dir/<id>.jpg`` (upright RGB, short edge at most ``short_edge``) for every image.

    Returns ``table`` with paths pointing at the cached files (same rows, ids, labels, groups and
    metadata, so a split of one is a split of the other). Files already in the cache are kept.
    An image that cannot be read raises an error listing it after all others are done. With
    ``on_error="skip"`` it is named in one ``SkippedImageWarning`` each, listed in
    ``out_dir/skipped.json`` (``read_skipped(out_dir)``), keeps its original path and is recorded
    in the returned table's ``unreadable``, so ``ImageDataset(on_error="skip")`` leaves it out.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    out_dir = Path(out_dir)
    claim_folder(
        out_dir, CACHE_MANIFEST, {"short_edge": short_edge, "format": "JPEG", "quality": JPEG_QUALITY}
    )
    remove_abandoned_temporaries(out_dir)  # left by an interrupted run
    targets = [out_dir / f"{name}.jpg" for name in _cache_names(table.ids)]
    todo = [i for i, target in enumerate(targets) if not target.exists()]
    jobs = [(table.paths[i], targets[i], short_edge) for i in todo]
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not jobs:
        problems = []
    elif workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=_pool_context()) as pool:
            chunk = max(1, min(32, len(jobs) // (4 * workers)))
            results = pool.map(cache_image, jobs, chunksize=chunk)
            problems = list(progress_bar(results, "caching", total=len(jobs)))
    else:
        problems = [cache_image(job) for job in progress_bar(jobs, "caching")]

    failed = [
        SkippedImage(table.ids[i], table.paths[i], problem)
        for i, problem in zip(todo, problems, strict=True)
        if problem is not None
    ]
    if failed and on_error == "raise":
        listed = "; ".join(f"{f.path} ({f.reason})" for f in failed[:3])
        more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
        raise UnreadableImageError(
            f"could not cache {len(failed)} of {len(table)} images: {listed}{more}. The others are cached; "
            "replace these files and run again, or pass --on-error skip to leave them out"
        )
    save_skipped(out_dir / SKIPPED_FILE, failed)  # every image without a cached file (often none)
    warn_skipped(failed)
    left_out = {f.id for f in failed}
    paths = [
        src if i in left_out else dst for i, src, dst in zip(table.ids, table.paths, targets, strict=True)
    ]
    unreadable = table.unreadable | {f.id: f.reason for f in failed}
    return replace(table, paths=paths, unreadable=unreadable)


def _pool_context() -> multiprocessing.context.BaseContext:
    """Worker processes that do not inherit this one's threads: a ``fork`` after PyTorch or OpenMP
    started their thread pools can deadlock the child. The fork server forks from a clean process
    that imported this module once (fast); where there is none (Windows), spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def cache_image(job: tuple[Path, Path, int]) -> str | None:
    """Resize one image into the cache (``(source, target, short_edge)``); the problem, or None."""
    source, target, short_edge = job
    try:
        image = resize_short_edge(open_rgb(source, min_short_edge=short_edge), short_edge)
    except UnreadableImageError as error:
        return describe_problem(error)
    save_image_atomically(image, target, format="JPEG", quality=JPEG_QUALITY)
    return None


def _cache_names(ids: list[str]) -> list[str]:
    """Each id as a relative path inside the cache: folder data keep their sub-folders; a leading
    "/" is dropped and ".." becomes "__", so nothing is written outside the cache."""
    names = ["/".join("__" if p == ".." else p for p in i.split("/") if p not in ("", ".")) for i in ids]
    clashes = [name for name, count in Counter(names).items() if count > 1]
    if clashes:
        raise ValueError(
            f"several image ids map to the cache file {clashes[0]!r}; give the images distinct ids"
        )
    return names
