"""TrainConfig: the paper's recipe as defaults, one object for the CLI, the Python API and checkpoints.

Every field carries its help text, so ``rmnet train --help`` is generated from this file and the
saved ``config.json`` of a run reads the same as the command that made it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmnet.io import atomic_write_text, resolve_device

if TYPE_CHECKING:
    import torch

    from rmnet.models import ImageClassifier

VAL_METRICS = ("balanced_accuracy", "accuracy", "kappa", "mean_precision", "auc_macro", "loss")
RM_PADDINGS = ("none", "full")  # rmnet.meanout.PADDINGS (not imported here: it loads torch)
OPTIMIZERS = ("sgd", "adam")


def _option(default: Any, help: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the paper's ISIC 2019 recipe (SPEC §3)."""

    # Model: the arguments of rmnet.create_model.
    arch: str = _option("resnet18", "backbone: a preset (resnet18, small_cnn, ...) or a torchvision model")
    rm: str | None = _option(
        None, "where RM sits: '5-8' (strict), 'relaxed:5', 'C-E', 'paper', 'all' (default: none, plain)"
    )
    k: int = _option(4, "number of rotations in RM (θ = 360°/k); 4 is exact")
    fusion: str = _option("mean", "RM fusion: mean (meanout), max (maxout) or embedding (1×1 conv)")
    dihedral: bool = _option(False, "average RM over rotations and their mirror images (D_k)")
    rotate: bool = _option(True, "rotate the copies in RM; --no-rotate is the RM-WR ablation")
    share_weights: bool = _option(True, "one block for all copies; --no-share-weights is RM-NWS")
    rm_padding: str = _option(
        "none",
        "RM copies at angles between quarter turns (k=6, 8): none keeps the map size, full zero-pads "
        "them first (the paper)",
    )
    hash_bits: int | None = _option(None, "hash layer length L for retrieval, the paper: 16 (default: none)")
    pretrained: str | None = _option(
        None,
        "initial weights: 'imagenet' (the torch hub cache, as in the paper; see --recipe paper) or a "
        "state_dict file (default: random)",
    )
    model_options: dict = _option({}, "extra create_model arguments as JSON, e.g. '{\"width\": 16}'")
    # Objective and images.
    loss: str = _option("wce", "training objective: wce (weighted cross-entropy) or a hashing loss")
    loss_options: dict = _option({}, "extra arguments of the loss as JSON, e.g. '{\"gamma\": 10}' for dch")
    rotation_augmentation: float = _option(
        0.0,
        "largest random rotation in training, degrees: 45 draws from ±45° (with RM k=4 that covers "
        "every angle), 360 the whole circle, 0 off (true/false in a config file: 360/0; the paper: off)",
    )
    flips: bool = _option(True, "training crops may be flipped (the image, its h-flip or its v-flip)")
    image_size: int | None = _option(
        None,
        "side of the square crop fed to the network (default: the architecture's, 224; 299 for inception_v3)",
    )
    resize: int | None = _option(None, "short edge before cropping (default: 256/224 of image_size)")
    # Optimisation: SGD (the paper's) or Adam, with a step schedule.
    epochs: int = _option(60, "training epochs (the paper: 60 for classification, 80 for retrieval)")
    batch_size: int = _option(32, "images per step (per process under torchrun)")
    optimizer: str = _option("sgd", "sgd (with momentum: the paper) or adam (as MWNL's authors trained)")
    lr: float = _option(0.01, "initial learning rate")
    momentum: float = _option(0.9, "SGD momentum (sgd only)")
    weight_decay: float = _option(5e-4, "weight decay (L2, added to the gradient by both optimizers)")
    lr_step: int = _option(20, "multiply the learning rate by lr_gamma every lr_step epochs")
    lr_gamma: float = _option(0.1, "learning-rate decay factor")
    seed: int = _option(0, "seed of initialisation, shuffling and augmentation")
    val_metric: str = _option(
        "balanced_accuracy",
        "validation metric that picks best.pt (the paper does not say which checkpoint it reports): "
        + ", ".join(VAL_METRICS),
    )
    # Data.
    data: str | None = _option(None, "ISIC 2019 folder, folder of class sub-folders, or CSV of path,label")
    ground_truth: str | None = _option(None, "ISIC ground-truth CSV (default: found in the data folder)")
    metadata: str | None = _option(None, "ISIC metadata CSV with lesion_id (default: found if present)")
    cache: str | None = _option(
        None, "folder of resized copies of the images, made on first use (rmnet prepare)"
    )
    split: str | None = _option(None, "split JSON to reuse (default: a new stratified 8:1:1 split)")
    split_ratios: tuple[float, float, float] = _option(
        (0.8, 0.1, 0.1), "fractions of every class in train, validation and test (--split 0.8 0.1 0.1)"
    )
    split_seed: int = _option(0, "seed of the 8:1:1 split (kept fixed across --seeds)")
    group_by_lesion: bool = _option(False, "keep all images of a lesion_id in one part of the split")
    on_error: str = _option("raise", "an unreadable image: raise (stop, naming it) or skip (leave it out)")
    # Hardware.
    device: str = _option("auto", "cuda, cpu, cuda:1 ...; auto picks CUDA when available")
    workers: int = _option(min(8, os.cpu_count() or 1), "data-loading worker processes")
    amp: bool | None = _option(None, "mixed precision (default: on with CUDA)")
    channels_last: bool | None = _option(None, "channels-last memory format (default: on with CUDA)")

    def __post_init__(self) -> None:
        angle = self.rotation_augmentation  # was a boolean: true is the whole circle, false off
        self.rotation_augmentation = 360.0 if angle is True else float(angle or 0.0)
        if not 0.0 <= self.rotation_augmentation <= 360.0:
            raise ValueError(f"rotation_augmentation must be 0–360 degrees (or true/false), got {angle!r}")
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric {self.val_metric!r} is not one of {', '.join(VAL_METRICS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.rm_padding not in RM_PADDINGS:
            raise ValueError(f"rm_padding must be one of {', '.join(RM_PADDINGS)}, got {self.rm_padding!r}")
        ratios = self.split_ratios
        try:
            self.split_ratios = tuple(float(r) for r in ratios)
        except (TypeError, ValueError):
            raise ValueError(f"split_ratios must be three numbers, got {ratios!r}") from None
        train, val, test = self.split_ratios if len(self.split_ratios) == 3 else (0, 0, 0)
        if not (train > 0 and val > 0 and test >= 0 and abs(train + val + test - 1) < 1e-6):
            raise ValueError(
                f"split_ratios must be three fractions (train, validation > 0; test >= 0) summing to 1, "
                f"e.g. 0.8 0.1 0.1; got {' '.join(f'{r:g}' for r in self.split_ratios)}"
            )
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        for name in ("epochs", "batch_size", "image_size", "resize", "lr_step", "k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "lr_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be zero or positive, got {self.workers}")

    @classmethod
    def paper(cls, arch: str = "resnet18", task: str = "classification", **changes: Any) -> TrainConfig:
        """The paper's recipe for ``arch``: ImageNet initialisation, 60 epochs (80 for retrieval, with a
        16-bit hash layer), the architecture's own input size, RM copies at angles between quarter
        turns zero-padded (k = 6, 8); ``changes`` override any field."""
        if task not in ("classification", "retrieval"):
            raise ValueError(f"task must be 'classification' or 'retrieval', got {task!r}")
        retrieval = task == "retrieval" or changes.get("hash_bits") is not None
        recipe: dict[str, Any] = dict(
            arch=arch, pretrained="imagenet", epochs=80 if retrieval else 60, rm_padding="full"
        )
        if task == "retrieval":
            recipe["hash_bits"] = 16
        return cls(**(recipe | changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict; an unknown key is an error naming it, so typos never pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source} has unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config as JSON (atomically: a temporary file, then a rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(values, source=str(path))

    def input_size(self) -> int:
        """The crop side: ``image_size``, or the architecture's own input size when not given."""
        if self.image_size is not None:
            return self.image_size
        from rmnet.models import model_entry

        return model_entry(self.arch).input_size

    def resize_short_edge(self) -> int:
        """The short edge images are resized to before cropping (the paper: 256 for 224 crops)."""
        from rmnet.models.weights import resize_for

        return self.resize or resize_for(self.input_size())

    def resolved_device(self, local_rank: int | None = None) -> torch.device:
        """The device to train on: CUDA when available for "auto" (one GPU per torchrun process)."""
        return resolve_device(self.device, local_rank)


def build_model(config: TrainConfig, num_classes: int) -> ImageClassifier:
    """The model that ``config`` describes, through ``rmnet.create_model``."""
    from rmnet.models import create_model

    return create_model(
        config.arch,
        num_classes,
        rm=config.rm,
        k=config.k,
        fusion=config.fusion,
        dihedral=config.dihedral,
        rotate=config.rotate,
        share_weights=config.share_weights,
        rm_padding=config.rm_padding,
        hash_bits=config.hash_bits,
        pretrained=config.pretrained,
        **config.model_options,
    )
