"""Similar-case search: a run's model embeds images; the index returns their nearest cases.

    build_index(run_dir, out_dir)               embed a part of the run's split (the training set)
    ImageEncoder.from_run(run_dir)              the model + eval transform + class names of a run
    search_images(encoder, index, paths)        predicted diagnosis and top-k cases of image files
    search_bytes(encoder, index, blobs)         the same for encoded images in memory (a service)
    add_images(encoder, index, paths, label)    add_bytes(encoder, index, blobs, ids, label)

Query images of any size or mode go through the run's eval transform (resize, centre crop,
normalise) after conversion to upright RGB. An unreadable file is reported, not fatal to the
others; unreadable bytes raise :class:`~rmnet.data.images.UnreadableImageError` naming them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch import nn

from rmnet.api import RunModel
from rmnet.data.images import UnreadableImageError, is_image_file, open_rgb
from rmnet.io import progress_bar
from rmnet.models.base import unwrap
from rmnet.retrieval.codes import embed_dataset
from rmnet.retrieval.index import DEFAULT_LOCK_TIMEOUT, AddResult, CodeIndex, Hit, IndexItem


@dataclass
class SearchResult:
    """One query image: the classifier's diagnosis and the most similar indexed cases.

    ``query`` is the file searched for, or the name given to an image passed as bytes.
    """

    query: Path | str
    predicted_label: int
    predicted_class: str
    probability: float
    metric: str
    hits: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": str(self.query),
            "predicted_label": self.predicted_label,
            "predicted_class": self.predicted_class,
            "probability": self.probability,
            "metric": self.metric,
            "hits": [asdict(hit) for hit in self.hits],
        }


class ImageEncoder:
    """A run's model (a :class:`~rmnet.api.RunModel`) as the index needs it: images → retrieval codes
    and class probabilities, plus the identity an index records.

    Thread-safe for inference: any number of threads may encode at once (the model stays in eval
    mode and nothing is cached between calls).
    """

    def __init__(
        self,
        model: nn.Module | RunModel,
        transform=None,
        class_names: Sequence[str] | None = None,
        *,
        device: str | torch.device | None = None,
        description: str = "",
        run: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        if not isinstance(model, RunModel):
            if transform is None or class_names is None:
                raise TypeError(
                    "a bare model needs its transform and class names: ImageEncoder(model, t, names)"
                )
            model = RunModel(  # unwrap: a clear TypeError for a model that is not an ImageClassifier
                unwrap(model),
                class_names=class_names,
                image_size=None,
                transform=transform,
                device=device or "cpu",
            )
        self.run_model = model
        self.model, self.transform, self.device = model.model, model.transform, model.device
        self.class_names = model.class_names
        self.fingerprint = model.fingerprint
        identity = model.identity
        self.identity = dataclasses.replace(
            identity,
            description=description or identity.description,
            run=run or identity.run,
            checkpoint=checkpoint or identity.checkpoint,
        )

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "cpu"
    ) -> ImageEncoder:
        """The model of ``run_dir`` (checkpoints/best.pt or last.pt) and the run's eval transform."""
        from rmnet.api import load_run

        return cls(load_run(run_dir, checkpoint=checkpoint, device=device))

    def encode(
        self, paths: Sequence[str | os.PathLike], batch_size: int = 32
    ) -> tuple[list[Path], np.ndarray, np.ndarray, list[tuple[Path, str]]]:
        """(readable paths, their codes, their class probabilities, [(unreadable path, why)]).

        Images are read and embedded ``batch_size`` at a time, so memory stays bounded.
        """
        readable, codes, probabilities, failed = [], [], [], []
        paths = [Path(p) for p in paths]
        for start in range(0, len(paths), batch_size):
            images = []
            for path in paths[start : start + batch_size]:
                try:
                    images.append(open_rgb(path))
                    readable.append(path)
                except UnreadableImageError as err:
                    failed.append((path, str(err)))
            if images:
                batch_codes, batch_probabilities = self.encode_images(images, batch_size)
                codes.append(batch_codes)
                probabilities.append(batch_probabilities)
        if not readable:
            return [], *self._empty(), failed
        return readable, np.concatenate(codes), np.concatenate(probabilities), failed

    def encode_images(
        self, images: Sequence[Image.Image], batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes (N, code_length) and class probabilities (N, classes) of decoded images.

        Images are converted to RGB; they are taken as upright (decode files with
        :func:`rmnet.data.images.open_rgb`, or bytes with :meth:`encode_bytes`, to apply EXIF).
        """
        codes, probabilities = [], []
        for start in range(0, len(images), batch_size):
            batch = [
                image if image.mode == "RGB" else image.convert("RGB")
                for image in images[start : start + batch_size]
            ]
            out = self.run_model.forward(torch.stack([self.transform(image) for image in batch]))
            codes.append(out.codes)
            probabilities.append(out.probabilities)
        if not codes:
            return self._empty()
        return np.concatenate(codes), np.concatenate(probabilities)

    def encode_bytes(
        self, blobs: Sequence[bytes], *, names: Sequence[str] | None = None, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes and class probabilities of encoded images (JPEG, PNG… file contents) in memory.

        Raises :class:`UnreadableImageError` naming every blob that is not a readable image
        (by ``names``, or "image 1", "image 2"…) before anything is embedded. No file is written.
        """
        return self.encode_images(decode_images(blobs, names), batch_size)

    def _empty(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.zeros((0, self.identity.code_length), np.float32),
            np.zeros((0, len(self.class_names)), np.float32),
        )


def decode_image(data: bytes, name: str = "image") -> Image.Image:
    """Encoded image bytes → upright RGB picture (EXIF orientation applied), like ``open_rgb``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name}: expected the bytes of an image file, got {type(data).__name__}")
    if not len(data):
        raise UnreadableImageError(f"cannot read image {name}: it is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {name}: {err}") from err


def decode_images(blobs: Sequence[bytes], names: Sequence[str] | None = None) -> list[Image.Image]:
    """Every blob decoded; one UnreadableImageError naming all that are not readable images."""
    names = list(names) if names is not None else [f"image {i}" for i in range(1, len(blobs) + 1)]
    if len(names) != len(blobs):
        raise ValueError(f"{len(blobs)} images but {len(names)} names")
    images, problems = [], []
    for data, name in zip(blobs, names, strict=True):
        try:
            images.append(decode_image(data, name))
        except UnreadableImageError as err:
            problems.append(str(err))
    if problems:
        raise UnreadableImageError(
            f"{len(problems)} of {len(blobs)} images could not be read: {'; '.join(problems)}"
        )
    return images


def open_searchable_index(
    index_dir: str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> tuple[CodeIndex, ImageEncoder]:
    """The index and the model that built it (from the run its manifest names, or ``run_dir``)."""
    index = CodeIndex.open(index_dir, lock_timeout=lock_timeout)
    model = index.model
    if run_dir is None and (model.run is None or not Path(model.run).is_dir()):
        where = (
            f"was built from run {model.run}, which is not there any more" if model.run else "names no run"
        )
        raise ValueError(f"index {index_dir} {where}; pass --run RUN (the run that built it)")
    checkpoint = "last" if model.checkpoint and Path(model.checkpoint).name == "last.pt" else "best"
    encoder = ImageEncoder.from_run(run_dir or model.run, checkpoint, device)
    index.check_model(encoder.fingerprint, encoder.identity.code_length)
    return index, encoder


def search_images(
    encoder: ImageEncoder,
    index: CodeIndex,
    paths: Sequence[str | os.PathLike],
    k: int = 10,
    metric: str | None = None,
    batch_size: int = 32,
) -> tuple[list[SearchResult], list[tuple[Path, str]]]:
    """Predicted diagnosis and the k most similar indexed cases of each readable image file."""
    readable, codes, probabilities, failed = encoder.encode(paths, batch_size)
    if not readable:
        return [], failed
    return _results(encoder, index, readable, codes, probabilities, k, metric), failed


def search_bytes(
    encoder: ImageEncoder,
    index: CodeIndex,
    blobs: Sequence[bytes],
    *,
    names: Sequence[str] | None = None,
    k: int = 10,
    metric: str | None = None,
    batch_size: int = 32,
) -> list[SearchResult]:
    """Predicted diagnosis and the k most similar cases of images given as encoded bytes.

    ``SearchResult.query`` is the image's name (``names``, or "image 1"…). Raises
    UnreadableImageError, naming them, when some blobs are not readable images.
    """
    names = list(names) if names is not None else [f"image {i}" for i in range(1, len(blobs) + 1)]
    codes, probabilities = encoder.encode_bytes(blobs, names=names, batch_size=batch_size)
    if not len(codes):
        return []
    return _results(encoder, index, names, codes, probabilities, k, metric)


def _results(encoder, index, queries, codes, probabilities, k, metric) -> list[SearchResult]:
    metric = metric or index.metric
    hits = index.search(codes, k, model_fingerprint=encoder.fingerprint, metric=metric)
    results = []
    for query, p, image_hits in zip(queries, probabilities, hits, strict=True):
        label = int(p.argmax())
        results.append(
            SearchResult(query, label, encoder.class_names[label], float(p[label]), metric, image_hits)
        )
    return results


def add_images(
    encoder: ImageEncoder,
    index: CodeIndex,
    paths: Sequence[str | os.PathLike],
    label: int,
    batch_size: int = 32,
    *,
    lock_timeout: float | None = None,
) -> tuple[AddResult, list[tuple[Path, str]]]:
    """Embed image files of one diagnosis and append them (id = file name without extension)."""
    readable, codes, _, failed = encoder.encode(paths, batch_size)
    items = [
        IndexItem(path.stem, label, str(path.resolve()), file_sha256(path), {"source": "rmnet index add"})
        for path in readable
    ]
    if not items:
        return AddResult([], []), failed
    return index.add(codes, items, model_fingerprint=encoder.fingerprint, lock_timeout=lock_timeout), failed


def add_bytes(
    encoder: ImageEncoder,
    index: CodeIndex,
    blobs: Sequence[bytes],
    *,
    ids: Sequence[str],
    label: int,
    metadata: Sequence[dict[str, Any]] | None = None,
    batch_size: int = 32,
    lock_timeout: float | None = None,
) -> AddResult:
    """Embed encoded images of one diagnosis and append them under ``ids`` (no file path stored).

    Their content hash is the SHA-256 of the bytes, as for a file with the same content, so a
    copy of an indexed file is recognised. Raises UnreadableImageError before adding anything
    when some blobs are not readable images.
    """
    if len(ids) != len(blobs) or (metadata is not None and len(metadata) != len(blobs)):
        raise ValueError(f"need one id (and one metadata dict, if any) per image: {len(blobs)} images")
    codes, _ = encoder.encode_bytes(blobs, names=ids, batch_size=batch_size)
    items = [
        IndexItem(
            image_id,
            label,
            None,
            hashlib.sha256(data).hexdigest(),
            dict(metadata[i]) if metadata is not None else {"source": "rmnet add_bytes"},
        )
        for i, (image_id, data) in enumerate(zip(ids, blobs, strict=True))
    ]
    return index.add(codes, items, model_fingerprint=encoder.fingerprint, lock_timeout=lock_timeout)


def build_index(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    part: str = "train",
    checkpoint: str = "best",
    metric: str = "cosine",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    workers: int = 0,
    overwrite: bool = False,
    data: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
) -> tuple[CodeIndex, AddResult, list[tuple[str, Path, str]]]:
    """Embed one part of a run's split (the paper's database: "train") into a new index at ``out_dir``.

    ``data`` and ``cache`` point the run at its images when they moved since training (checked
    against the split's image ids). When the run reads a resized cache, the codes come from the
    cached copies (as in training) but the index stores the original files' paths and content
    hashes, so that adding an original again is recognised as a duplicate.

    Returns the index, what was added or skipped as a duplicate, and the unreadable images.
    """
    from rmnet.data import ImageDataset
    from rmnet.runs import Run, load_table

    run = Run(run_dir, checkpoint=checkpoint, data=data, cache=cache)
    encoder = ImageEncoder.from_run(run.dir, checkpoint, device)
    table = run.table
    if table.class_names != encoder.class_names:
        raise ValueError(
            f"the data of run {run.dir} has classes {table.class_names}, its checkpoint "
            f"{encoder.class_names}: the data folder changed since training"
        )
    originals = table if run.config.cache is None else load_table(run.config.replace(cache=None))
    if originals.ids != table.ids:
        raise ValueError(f"the cache {run.config.cache} does not list the images of {run.config.data}")
    index = CodeIndex.create(
        out_dir, model=encoder.identity, class_names=encoder.class_names, metric=metric, overwrite=overwrite
    )
    dataset = ImageDataset(table, run.split.part(part), encoder.transform, on_error="skip")
    codes, _ = embed_dataset(encoder.model, dataset, batch_size, device, num_workers=workers)
    items = []
    for i in progress_bar(dataset.indices, "hashing files", unit="file"):
        original, cached = originals.paths[i], table.paths[i]
        items.append(
            IndexItem(
                table.ids[i],
                int(table.labels[i]),
                str(Path(original).resolve()),
                _sha256_or_none(original),
                _metadata(table, i),
                str(Path(cached).resolve()) if cached != original else None,
            )
        )
    added = index.add(codes, items, model_fingerprint=encoder.fingerprint)
    return index, added, dataset.skipped


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: the same image under another name is the same content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_or_none(path: str | os.PathLike) -> str | None:
    try:
        return file_sha256(path)
    except OSError:  # the original is gone (only its cached copy is left): no duplicate check
        return None


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The given files, with each folder replaced by the image files inside it (sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        else:
            files.append(path)
    return files


def _metadata(table, i: int) -> dict[str, Any]:
    """What the table knows about image i beyond its label (lesion id, age, site, sex…), JSON-ready."""
    meta: dict[str, Any] = {}
    if table.groups[i] is not None:
        meta["lesion_id"] = table.groups[i]
    if table.metadata is not None:
        row = table.metadata.iloc[i]
        for key, value in row.items():
            meta[str(key)] = (
                None if pd.isna(value) else value.item() if isinstance(value, np.generic) else value
            )
    return meta
