"""A run folder: what one training run leaves behind, and how to open it again.

    RUN_DIR/
      config.json            the TrainConfig (rmnet.config)
      split.json             indices of the train/val/test images (rmnet.data.save_split)
      metrics.csv            one row per epoch
      checkpoints/best.pt    the weights that scored best on validation
      checkpoints/last.pt    the latest epoch, with optimizer and scheduler state, for --resume
      report/                report.json, report.md and figures (rmnet evaluate)

Every file is written to a temporary name and renamed, so an interruption never leaves half a file.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rmnet.config import TrainConfig, build_model
from rmnet.data import (
    ImageDataset,
    ImageTable,
    Split,
    build_transform,
    load_image_table,
    load_split,
    prepare_cache,
)
from rmnet.data.cache import CACHE_MANIFEST
from rmnet.io import atomic_write
from rmnet.models import ImageClassifier

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.csv"
BEST_CHECKPOINT = "checkpoints/best.pt"
LAST_CHECKPOINT = "checkpoints/last.pt"
REPORT_DIR = "report"
CHECKPOINTS = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}
# Config fields that name data on disk: stored as absolute paths, and may point elsewhere later.
RELOCATABLE = ("data", "cache", "ground_truth", "metadata")


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save ``checkpoint`` atomically (holds "model", "config", "class_names", "epoch", …)."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, on the CPU; a clear error when the file is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the run was cut off while writing it")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"checkpoint {path} is truncated or damaged, or not a PyTorch file ({path.stat().st_size} bytes)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} cannot be read ({detail}): it is truncated or damaged") from err
    missing = [
        key
        for key in ("model", "config", "class_names")
        if not isinstance(checkpoint, dict) or key not in checkpoint
    ]
    if missing:
        raise ValueError(
            f"{path} is not a checkpoint written by rmnet: it lacks {', '.join(missing)} "
            "(a plain state_dict is initial weights: use --pretrained PATH)"
        )
    return checkpoint


def load_checkpoint(path: str | os.PathLike) -> tuple[ImageClassifier, TrainConfig, list[str]]:
    """The model (in eval mode, on the CPU), its TrainConfig and class names from a checkpoint file."""
    checkpoint = read_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"], source=f"config in {path}")
    # The weights come from the checkpoint: never look for pretrained files at load time.
    model = build_model(config.replace(pretrained=None), len(checkpoint["class_names"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config, list(checkpoint["class_names"])


def write_metrics_csv(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: pd.DataFrame(list(history)).to_csv(tmp, index=False))


def load_table(config: TrainConfig) -> ImageTable:
    """The images of ``config.data``, read from the resized cache ``config.cache`` if set (made if needed)."""
    table = load_image_table(config.data, ground_truth=config.ground_truth, metadata=config.metadata)
    if config.cache is None:
        return table
    return cache_images(table, config.cache, config.resize_short_edge(), on_error=config.on_error)


def cache_images(
    table: ImageTable,
    cache: str | os.PathLike,
    short_edge: int,
    *,
    on_error: str = "raise",
    workers: int | None = None,
) -> ImageTable:
    """``prepare_cache``, refusing up front a cache made at another size with an error that names
    ``--resize`` (the option that sets the size) rather than the cache's manifest."""
    manifest = Path(cache) / CACHE_MANIFEST
    if manifest.is_file():
        try:
            made = json.loads(manifest.read_text()).get("short_edge")
        except (OSError, ValueError, AttributeError):
            made = None  # prepare_cache names what is wrong with the file
        if made is not None and made != short_edge:
            raise ValueError(
                f"the cache {cache} holds images resized to a short edge of {made} px, not {short_edge}: "
                f"pass --resize {made} to use it (train's --resize, or its default for --image-size), or "
                f"give another --cache folder for {short_edge} px"
            )
    return prepare_cache(table, cache, short_edge=short_edge, on_error=on_error, workers=workers)


def split_dataset(
    config: TrainConfig, table: ImageTable, split: Split, part: str, train: bool
) -> ImageDataset:
    """Split part "train", "val" or "test" of ``table`` with the train (augmenting) or eval transform."""
    transform = build_transform(
        train,
        config.input_size(),
        resize=config.resize_short_edge(),
        rotation_augmentation=config.rotation_augmentation,
        flips=config.flips,
    )
    return ImageDataset(table, split.part(part), transform, on_error=config.on_error)


class Run:
    """An existing run folder: its config, split, data, checkpoints and per-epoch metrics.

    ``data``, ``cache``, ``ground_truth`` and ``metadata`` point the run at data that moved since
    training (checked against the split's image ids); ``checkpoint`` picks best.pt or last.pt;
    ``on_error`` ("raise" or "skip") overrides what the run does with an unreadable image.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        checkpoint: str = "best",
        on_error: str | None = None,
        **relocated: str | os.PathLike | None,
    ) -> None:
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(
                f"run folder not found: {self.dir} (train one with `rmnet train --out DIR`)"
            )
        if not (self.dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{self.dir} is not an rmnet run folder: it has no {CONFIG_FILE} "
                "(train one with `rmnet train --out DIR`)"
            )
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        unknown = sorted(set(relocated) - set(RELOCATABLE))
        if unknown:
            raise TypeError(f"Run() got unknown option(s) {', '.join(unknown)}")
        if on_error not in (None, "raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.which, self.on_error = checkpoint, on_error
        self.relocated = {key: str(Path(v).resolve()) for key, v in relocated.items() if v is not None}

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @functools.cached_property
    def config(self) -> TrainConfig:
        """The run's TrainConfig, with the data paths given to the constructor."""
        config = TrainConfig.from_json(self.dir / CONFIG_FILE).replace(**self.relocated)
        return config if self.on_error is None else config.replace(on_error=self.on_error)

    @functools.cached_property
    def split(self) -> Split:
        """The run's split, checked against (and mapped onto) the table."""
        return load_split(self._require(SPLIT_FILE, "the split is written when training starts"), self.table)

    @functools.cached_property
    def table(self) -> ImageTable:
        """The ImageTable the run was trained on, read again from ``config.data``."""
        if self.config.data is None:
            raise ValueError(f"{self.dir} was trained on in-memory datasets: its config names no data")
        return load_table(self.config)

    @property
    def checkpoint(self) -> Path:
        """The chosen checkpoint file (best.pt or last.pt)."""
        return self._require(CHECKPOINTS[self.which], "training writes it after the first epoch")

    @property
    def best_checkpoint(self) -> Path:
        return self._require(BEST_CHECKPOINT, "training writes it after the first epoch")

    @property
    def last_checkpoint(self) -> Path:
        return self._require(LAST_CHECKPOINT, "training writes it after the first epoch")

    @functools.cached_property
    def class_names(self) -> list[str]:
        return list(read_checkpoint(self.checkpoint)["class_names"])

    @property
    def metrics(self) -> pd.DataFrame:
        """The per-epoch log (metrics.csv)."""
        return pd.read_csv(self._require(METRICS_FILE, "training writes it after the first epoch"))

    @property
    def report_dir(self) -> Path:
        return self.dir / REPORT_DIR

    def load_model(self, which: str | None = None) -> ImageClassifier:
        """The trained model (eval mode, CPU) from the chosen checkpoint, or ``which`` ("best", "last")."""
        if which is not None and which not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
        path = self.checkpoint if which is None else self._require(CHECKPOINTS[which], "training writes it")
        return load_checkpoint(path)[0]

    def dataset(self, part: str, train: bool = False) -> ImageDataset:
        """The ImageDataset of split part "train", "val" or "test", with the train or eval transform."""
        return split_dataset(self.config, self.table, self.split, part, train)

    def _require(self, relative: str, hint: str) -> Path:
        path = self.dir / relative
        if not path.is_file():
            raise FileNotFoundError(f"run folder {self.dir} is incomplete: {relative} is missing ({hint})")
        return path
