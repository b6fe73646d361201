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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

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

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.csv"
BEST_CHECKPOINT = "checkpoints/best.pt"
LAST_CHECKPOINT = "checkpoints/last.pt"
REPORT_DIR = "report"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save ``checkpoint`` atomically (holds "model", "config", "class_names", "epoch", …)."""
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, on the CPU; a clear error when the file is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ValueError(f"{path} is not a readable rmnet checkpoint: {err}") from err
    missing = [key for key in ("model", "config", "class_names") if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not an rmnet checkpoint: it lacks {', '.join(missing)}")
    return checkpoint


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, TrainConfig, list[str]]:
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
    return prepare_cache(table, config.cache, short_edge=config.resize_short_edge())


def split_dataset(
    config: TrainConfig, table: ImageTable, split: Split, part: str, train: bool
) -> ImageDataset:
    """Split part "train", "val" or "test" of ``table`` with the train (augmenting) or eval transform."""
    transform = build_transform(
        train, config.image_size, resize=config.resize, rotation_augmentation=config.rotation_augmentation
    )
    return ImageDataset(table, split.part(part), transform, on_error=config.on_error)


class Run:
    """An existing run folder: its config, split, data, checkpoints and per-epoch metrics."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
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

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @functools.cached_property
    def config(self) -> TrainConfig:
        return TrainConfig.from_json(self.dir / CONFIG_FILE)

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
    def class_names(self) -> list[str]:
        return list(read_checkpoint(self.best_checkpoint)["class_names"])

    @property
    def best_checkpoint(self) -> Path:
        return self._require(BEST_CHECKPOINT, "training writes it after the first epoch")

    @property
    def last_checkpoint(self) -> Path:
        return self._require(LAST_CHECKPOINT, "training writes it after the first epoch")

    @property
    def metrics(self) -> pd.DataFrame:
        """The per-epoch log (metrics.csv)."""
        return pd.read_csv(self._require(METRICS_FILE, "training writes it after the first epoch"))

    @property
    def report_dir(self) -> Path:
        return self.dir / REPORT_DIR

    def load_model(self, which: str = "best") -> nn.Module:
        """The trained model (eval mode, CPU) from checkpoints/best.pt or last.pt."""
        path = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}[which]
        return load_checkpoint(self._require(path, "training writes it after the first epoch"))[0]

    def dataset(self, part: str, train: bool = False) -> ImageDataset:
        """The ImageDataset of split part "train", "val" or "test", with the train or eval transform."""
        return split_dataset(self.config, self.table, self.split, part, train)

    def _require(self, relative: str, hint: str) -> Path:
        path = self.dir / relative
        if not path.is_file():
            raise FileNotFoundError(f"run folder {self.dir} is incomplete: {relative} is missing ({hint})")
        return path
