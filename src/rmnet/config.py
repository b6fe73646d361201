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
# rmnet.models.inserted.METHODS (not imported here: it loads torch); a test keeps them equal.
METHODS = ("rm", "gcnn", "orn", "e4net", "stn", "stn_affine", "cycnn")
ROTATION_AUGMENTATION_MODES = ("continuous", "quarter")
RECIPES = ("paper", "mwnl")
MWNL_MILESTONES = "30,40,50,60"
MWNL_DROPBLOCK = 0.1
AMP_DTYPES = ("auto", "bfloat16", "float16")
DATA_PATHS = ("auto", "files", "memory")


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
    method: str | None = _option(
        None,
        "a rotation method inserted into the backbone at --at, keeping every other layer's weights: "
        + ", ".join(METHODS)
        + " (rm is the same as --rm)",
    )
    at: str | None = _option(
        None,
        "blocks where --method sits, in --rm's syntax: '5-8', '3', 'all' (rmnet.models.allowed_positions)",
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
    rotation_augmentation_mode: str = _option(
        "continuous",
        "continuous: an angle uniform up to --rotation-augmentation; quarter: a random quarter turn "
        "(0/90/180/270°, exact; the paper's 90° interval), whatever --rotation-augmentation says",
    )
    randaugment: bool = _option(
        False, "RandAugment (2 operations, magnitude 10) on training images (MWNL's recipe)"
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
    lr_milestones: str | None = _option(
        None,
        "epochs after which the learning rate is multiplied by lr_gamma, comma-separated "
        "(MWNL's: '30,40,50,60'); replaces lr_step",
    )
    seed: int = _option(0, "seed of initialisation, shuffling and augmentation")
    val_metric: str = _option(
        "balanced_accuracy",
        "validation metric that picks best.pt (the paper does not say which checkpoint it reports): "
        + ", ".join(VAL_METRICS),
    )
    test_crops: int = _option(
        1,
        "evaluation: average the logits over an n×n grid of crops of the resized image (16: MWNL's "
        "test-time averaging) instead of one centre crop; a square number",
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
    amp_dtype: str = _option(
        "auto",
        "mixed-precision type: auto (bfloat16 where the GPU supports it, no loss scaling; else float16 "
        "with a GradScaler; bfloat16 on the CPU), bfloat16 or float16",
    )
    data_path: str = _option(
        "auto",
        "how images reach the model: files (decoded and augmented every epoch by the loader workers), "
        "memory (decoded once into a uint8 tensor on the training device; crops, flips and rotations "
        "there, batched), auto (memory on CUDA when it fits in half the free GPU memory, else files)",
    )
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
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if (self.method is None) != (self.at is None):
            raise ValueError("--method and --at go together: e.g. --method gcnn --at 5-8")
        if self.method is not None and self.rm is not None:
            raise ValueError("give RM either as --rm POSITIONS or as --method rm --at POSITIONS, not both")
        if self.rotation_augmentation_mode not in ROTATION_AUGMENTATION_MODES:
            raise ValueError(
                f"rotation_augmentation_mode must be one of {', '.join(ROTATION_AUGMENTATION_MODES)}, "
                f"got {self.rotation_augmentation_mode!r}"
            )
        if round(self.test_crops**0.5) ** 2 != self.test_crops or self.test_crops < 1:
            raise ValueError(f"test_crops must be a square number (1, 4, 9, 16 ...), got {self.test_crops}")
        self.milestones()  # validate
        for name, allowed in (("amp_dtype", AMP_DTYPES), ("data_path", DATA_PATHS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
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
    def recipe(
        cls, name: str, arch: str = "resnet18", task: str = "classification", **changes: Any
    ) -> TrainConfig:
        """A named recipe (``RECIPES``) for ``arch``: "paper" (:meth:`paper`) or "mwnl" (:meth:`mwnl`)."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
        return getattr(cls, name)(arch, task=task, **changes)

    @classmethod
    def paper(cls, arch: str = "resnet18", task: str = "classification", **changes: Any) -> TrainConfig:
        """The paper's recipe for ``arch``: ImageNet initialisation (for models that have published
        weights), 60 epochs (80 for retrieval, with a 16-bit hash layer), the architecture's own input
        size, RM copies at angles between quarter turns zero-padded (k = 6, 8; for models that take
        RM options); ``changes`` override any field."""
        if task not in ("classification", "retrieval"):
            raise ValueError(f"task must be 'classification' or 'retrieval', got {task!r}")
        retrieval = task == "retrieval" or changes.get("hash_bits") is not None
        recipe: dict[str, Any] = dict(arch=arch, epochs=80 if retrieval else 60)
        recipe |= _model_defaults(arch)
        if task == "retrieval":
            recipe["hash_bits"] = 16
        return cls(**(recipe | changes))

    @classmethod
    def mwnl(cls, arch: str = "regnet_y_800mf", task: str = "classification", **changes: Any) -> TrainConfig:
        """MWNL's authors' ISIC 2019 recipe (yaopengUSTC/mbit-skin-cancer, configs/isic_2019.yaml):
        the MWNL loss, Adam at 2e-4 with weight decay 1e-4, ×0.1 after epochs 30/40/50/60 of 70,
        batch 32, RandAugment, short edge 450, 16-crop test-time averaging, DropBlock (p 0.1, after
        the last two blocks; presets only). docs/training.md lists what differs from theirs."""
        base = cls.paper(arch, task=task)
        recipe: dict[str, Any] = dict(
            arch=arch, pretrained=base.pretrained, rm_padding=base.rm_padding, hash_bits=base.hash_bits,
            loss="mwnl", optimizer="adam", lr=2e-4, weight_decay=1e-4, lr_milestones=MWNL_MILESTONES,
            lr_gamma=0.1, epochs=70, batch_size=32, randaugment=True, resize=450, test_crops=16,
        )  # fmt: skip
        if _model_takes(arch, "dropblock"):
            recipe["model_options"] = {"dropblock": MWNL_DROPBLOCK} | changes.pop("model_options", {})
        return cls(**(recipe | changes))

    def milestones(self) -> list[int] | None:
        """``lr_milestones`` as a sorted list of epochs, or None (a step every ``lr_step`` epochs)."""
        if self.lr_milestones is None or not str(self.lr_milestones).strip():
            return None
        try:
            epochs = [int(part) for part in str(self.lr_milestones).split(",")]
        except ValueError:
            raise ValueError(
                "lr_milestones must be epochs separated by commas, e.g. '30,40,50,60', "
                f"got {self.lr_milestones!r}"
            ) from None
        if any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
            raise ValueError(f"lr_milestones must be increasing positive epochs, got {self.lr_milestones!r}")
        return epochs

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
        method=config.method,
        at=config.at,
        **config.model_options,
    )


def _model_takes(arch: str, option: str) -> bool:
    """Whether ``arch``'s builder takes ``option`` by name."""
    from rmnet.models import model_entry

    return option in model_entry(arch).accepts()[0]


def _model_defaults(arch: str) -> dict[str, Any]:
    """The paper's model settings that ``arch`` can take: ImageNet weights where published, RM's
    zero padding where it has RM options. A model without them keeps its defaults (not an error)."""
    from rmnet.models import model_entry

    out: dict[str, Any] = {}
    if model_entry(arch).has_imagenet_weights:
        out["pretrained"] = "imagenet"
    if _model_takes(arch, "rm_padding"):
        out["rm_padding"] = "full"
    return out
