"""Similar-case search: a run's model embeds image files; the index returns their nearest cases.

    build_index(run_dir, out_dir)          embed a part of the run's split (the training set by default)
    ImageEncoder.from_run(run_dir)         the model + eval transform + class names of a run
    search_images(encoder, index, paths)   predicted diagnosis and top-k cases of each image
    add_images(encoder, index, paths, label)

Query images of any size or mode go through the run's eval transform (resize, centre crop,
normalise) after conversion to RGB. An unreadable file is reported, not fatal to the others.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from rmnet.data.images import UnreadableImageError, is_image_file, open_rgb
from rmnet.retrieval.codes import embed_dataset, model_fingerprint
from rmnet.retrieval.index import AddResult, CodeIndex, Hit, IndexItem, ModelIdentity


@dataclass
class SearchResult:
    """One query image: the classifier's diagnosis and the most similar indexed cases."""

    query: Path
    predicted_label: int
    predicted_class: str
    probability: float
    metric: str
    hits: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": str(self.query),
            "predicted_class": self.predicted_class,
            "probability": self.probability,
            "metric": self.metric,
            "hits": [asdict(hit) for hit in self.hits],
        }


class ImageEncoder:
    """A trained model with its eval transform: image files → retrieval codes and class probabilities."""

    def __init__(
        self,
        model: nn.Module,
        transform,
        class_names: Sequence[str],
        *,
        device: str | torch.device = "cpu",
        description: str = "",
        run: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        if not hasattr(model, "forward_codes"):
            raise TypeError(f"{type(model).__name__} has no forward_codes(): it cannot make retrieval codes")
        self.model = model.eval().to(device)
        self.transform, self.class_names, self.device = transform, list(class_names), torch.device(device)
        self.fingerprint = model_fingerprint(model)
        code_length = getattr(model, "hash_bits", None) or getattr(model, "num_features", None)
        self.identity = ModelIdentity(self.fingerprint, code_length, description, run, checkpoint)

    # -- glue to rmnet.runs: a run folder gives the model, its eval transform and its classes -----
    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "cpu"
    ) -> ImageEncoder:
        """The model of ``run_dir`` (checkpoints/best.pt or last.pt) and the run's eval transform."""
        from rmnet.data import build_transform
        from rmnet.runs import Run, load_checkpoint

        if checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        run = Run(run_dir)
        path = run.best_checkpoint if checkpoint == "best" else run.last_checkpoint
        model, config, class_names = load_checkpoint(path)
        transform = build_transform(False, config.image_size, resize=config.resize)
        description = f"{config.arch} rm={config.rm} hash_bits={config.hash_bits} loss={config.loss}"
        return cls(
            model,
            transform,
            class_names,
            device=device,
            description=description,
            run=str(run.dir.resolve()),
            checkpoint=str(path.resolve()),
        )

    def encode(
        self, paths: Sequence[str | os.PathLike], batch_size: int = 32
    ) -> tuple[list[Path], np.ndarray, np.ndarray, list[tuple[Path, str]]]:
        """(readable paths, their codes, their class probabilities, [(unreadable path, why)]).

        Images are read and embedded ``batch_size`` at a time, so memory stays bounded.
        """
        readable, codes, probabilities, failed = [], [], [], []
        paths = [Path(p) for p in paths]
        for start in range(0, len(paths), batch_size):
            tensors = []
            for path in paths[start : start + batch_size]:
                try:
                    tensors.append(self.transform(open_rgb(path)))
                    readable.append(path)
                except UnreadableImageError as err:
                    failed.append((path, str(err)))
            if not tensors:
                continue
            with torch.inference_mode():
                batch_codes, logits = self.model.forward_codes(torch.stack(tensors).to(self.device))
            codes.append(batch_codes.float().cpu().numpy())
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        if not readable:
            empty = np.zeros((0, self.identity.code_length), np.float32)
            return [], empty, np.zeros((0, len(self.class_names)), np.float32), failed
        return readable, np.concatenate(codes), np.concatenate(probabilities), failed


def open_searchable_index(
    index_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None, device: str = "cpu"
) -> tuple[CodeIndex, ImageEncoder]:
    """The index and the model that built it (from the run its manifest names, or ``run_dir``)."""
    index = CodeIndex.open(index_dir)
    model = index.model
    if run_dir is None and (model.run is None or not Path(model.run).is_dir()):
        where = (
            f"was built from run {model.run}, which is not there any more" if model.run else "names no run"
        )
        raise ValueError(f"index {index_dir} {where}; pass --run RUN_DIR (the run that built it)")
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
    """Predicted diagnosis and the k most similar indexed cases of each readable image."""
    readable, codes, probabilities, failed = encoder.encode(paths, batch_size)
    if not readable:
        return [], failed
    metric = metric or index.metric
    hits = index.search(codes, k, model_fingerprint=encoder.fingerprint, metric=metric)
    results = []
    for path, p, image_hits in zip(readable, probabilities, hits, strict=True):
        label = int(p.argmax())
        results.append(
            SearchResult(path, label, encoder.class_names[label], float(p[label]), metric, image_hits)
        )
    return results, failed


def add_images(
    encoder: ImageEncoder,
    index: CodeIndex,
    paths: Sequence[str | os.PathLike],
    label: int,
    batch_size: int = 32,
) -> tuple[AddResult, list[tuple[Path, str]]]:
    """Embed image files of one diagnosis and append them (id = file name without extension)."""
    readable, codes, _, failed = encoder.encode(paths, batch_size)
    items = [
        IndexItem(path.stem, label, str(path.resolve()), file_sha256(path), {"source": "rmnet index add"})
        for path in readable
    ]
    if not items:
        return AddResult([], []), failed
    return index.add(codes, items, model_fingerprint=encoder.fingerprint), failed


def build_index(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    part: str = "train",
    checkpoint: str = "best",
    metric: str = "cosine",
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    overwrite: bool = False,
) -> tuple[CodeIndex, AddResult, list[tuple[str, Path, str]]]:
    """Embed one part of a run's split (the paper's database: "train") into a new index at ``out_dir``.

    Returns the index, what was added or skipped as a duplicate, and the unreadable images.
    """
    from rmnet.data import ImageDataset
    from rmnet.runs import Run

    run = Run(run_dir)
    encoder = ImageEncoder.from_run(run.dir, checkpoint, device)
    table = run.table
    if table.class_names != encoder.class_names:
        raise ValueError(
            f"the data of run {run.dir} has classes {table.class_names}, its checkpoint "
            f"{encoder.class_names}: the data folder changed since training"
        )
    index = CodeIndex.create(
        out_dir, model=encoder.identity, class_names=encoder.class_names, metric=metric, overwrite=overwrite
    )
    dataset = ImageDataset(table, getattr(run.split, part), encoder.transform, on_error="skip")
    codes, _ = embed_dataset(encoder.model, dataset, batch_size, device, num_workers=workers)
    items = [
        IndexItem(
            table.ids[i],
            int(table.labels[i]),
            str(table.paths[i].resolve()),
            file_sha256(table.paths[i]),
            _metadata(table, i),
        )
        for i in tqdm(dataset.indices, desc="hashing files", unit="file", leave=False)
    ]
    added = index.add(codes, items, model_fingerprint=encoder.fingerprint)
    return index, added, dataset.skipped


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: the same image under another name is the same content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
