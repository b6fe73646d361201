"""The training loop, in one place: one process, or one process per GPU under ``torchrun`` (DDP).

    fit(config, train_set, val_set, out_dir)
      build the model and objective; SGD (the paper's recipe) or Adam + StepLR
      [resume from out_dir/checkpoints/last.pt]
      for each epoch:
        seed the epoch's randomness from (seed, epoch, rank)
        one pass over the training set (AMP and channels-last on CUDA)
        rank 0: validate, log a row to metrics.csv, save best.pt (on val_metric) and last.pt

Because an epoch's randomness depends only on (seed, epoch, rank), resuming at an epoch boundary
reproduces the uninterrupted run exactly. ``train(config, out_dir)`` adds the data: it reads
``config.data``, makes or loads the split and writes a complete run folder (see rmnet.runs).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from tqdm.auto import tqdm

from rmnet import __version__
from rmnet.config import TrainConfig, build_model
from rmnet.data import (
    SKIPPED_FILE,
    ImageDataset,
    ImageTable,
    Split,
    load_split,
    make_split,
    save_skipped,
    save_split,
)
from rmnet.data.files import refuse_foreign_folder
from rmnet.data.images import SkippedImageWarning, UnreadableImageError
from rmnet.data.split import PARTS, min_per_class
from rmnet.io import progress_bar
from rmnet.metrics.classification import classification_report, predict_labels
from rmnet.models import model_entry
from rmnet.objectives import build_objective, class_weights_from_counts
from rmnet.runs import (
    BEST_CHECKPOINT,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    METRICS_FILE,
    RELOCATABLE,
    SPLIT_FILE,
    load_table,
    read_checkpoint,
    save_checkpoint,
    split_dataset,
    write_metrics_csv,
)

__all__ = ["FitResult", "TrainConfig", "build_model", "dataset_labels", "fit", "repeat", "train"]

# Fields that may change between an interrupted run and its resumption (moved data is checked
# against the split's image ids instead).
RESUMABLE_CHANGES = {"epochs", "device", "workers", "amp", "channels_last", *RELOCATABLE}


@dataclass
class FitResult:
    model: nn.Module  # the weights after the last epoch (the best ones are at best_path)
    history: list[dict[str, Any]]  # one row per epoch, as in metrics.csv
    best_path: Path | None
    last_path: Path | None


class TrainingStep(nn.Module):
    """The model and its objective as one module: DDP then syncs both, and an objective may call
    any model method (forward_codes, rotated copies…) inside DDP's forward."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.objective(self.model, images, targets)


def fit(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset,
    out_dir: str | os.PathLike | None = None,
    *,
    class_names: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    model: nn.Module | None = None,
) -> FitResult:
    """Train ``config``'s model on ``train_set``, validating on ``val_set`` after every epoch.

    Datasets yield (image tensor, label) and expose ``.labels`` (or are TensorDatasets). With
    ``out_dir``, checkpoints and metrics.csv are written there; ``resume`` continues from last.pt.
    Under ``torchrun`` each process trains on its shard of the data and rank 0 writes. ``model``
    is the model ``config`` describes when the caller built it already (seeded with ``config.seed``).
    """
    for name, dataset in (("training", train_set), ("validation", val_set)):
        if len(dataset) == 0:
            raise ValueError(f"the {name} set is empty: give more images (or another split)")
    with distributed(config) as (rank, world_size, local_rank):
        device = config.resolved_device(local_rank)
        amp, memory_format = _precision(config, device)
        labels = dataset_labels(train_set)
        class_names = list(class_names or _class_names(train_set, labels))
        out_dir = Path(out_dir) if out_dir is not None else None
        is_main = rank == 0

        # The paper's recipe: weighted cross-entropy (or a named objective), SGD, a step schedule.
        if model is None:
            torch.manual_seed(config.seed)
            model = build_model(config, len(class_names))
        model = model.to(device, memory_format=memory_format)
        objective = build_objective(
            config.loss,
            num_classes=len(class_names),
            class_weights=class_weights_from_counts(np.bincount(labels, minlength=len(class_names))),
            hash_bits=config.hash_bits,
            **config.loss_options,
        ).to(device)
        step = TrainingStep(model, objective)
        optimizer = build_optimizer(config, parameter_groups(step, config.lr))
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step, gamma=config.lr_gamma
        )
        scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

        state: dict[str, Any] = {"epoch": 0, "history": [], "best_score": None, "best_epoch": None}
        if resume and out_dir is not None and (out_dir / LAST_CHECKPOINT).is_file():
            state = _restore(out_dir / LAST_CHECKPOINT, config, step, optimizer, scheduler, scaler)
            if is_main and progress:
                tqdm.write(f"resuming {out_dir} after epoch {state['epoch']}")

        # DDP broadcasts rank 0's parameters and buffers, so every rank starts identical.
        ddp_devices = [device.index] if device.type == "cuda" else None
        train_step = DistributedDataParallel(step, device_ids=ddp_devices) if world_size > 1 else step
        sampler = (
            DistributedSampler(train_set, world_size, rank, seed=config.seed) if world_size > 1 else None
        )
        train_loader = _loader(train_set, config, device, shuffle=sampler is None, sampler=sampler)
        val_loader = _loader(val_set, config, device, shuffle=False)
        writer = _tensorboard(out_dir, state["epoch"]) if is_main and out_dir is not None else None

        for epoch in range(state["epoch"], config.epochs):
            _seed_epoch(config.seed, epoch, rank)
            objective.set_epoch(epoch)  # scheduled objectives (MWNL's class weights)
            if sampler is not None:
                sampler.set_epoch(epoch)
            started, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
            desc = f"epoch {epoch + 1}/{config.epochs}"
            train_loss, train_true, train_logits = run_epoch(
                train_step,
                train_loader,
                device,
                amp,
                memory_format,
                optimizer,
                scaler,
                desc,
                progress and is_main,
            )
            train_loss, train_accuracy = _reduce_train_stats(train_loss, train_true, train_logits, world_size)
            if world_size > 1:  # DDP syncs gradients, not BatchNorm statistics: take rank 0's
                for buffer in step.buffers():
                    dist.broadcast(buffer, src=0)
            scheduler.step()
            state["epoch"] = epoch + 1

            if is_main:  # validate, log and checkpoint on rank 0 only
                val_loss, val_true, val_logits = run_epoch(
                    step, val_loader, device, amp, memory_format, desc=f"{desc} val", progress=progress
                )
                val = validation_metrics(val_loss, val_true, val_logits, class_names)
                row = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    "train_loss": train_loss,
                    "train_accuracy": train_accuracy,
                }
                row |= {f"val_{name}": value for name, value in val.items()}
                row["seconds"] = time.perf_counter() - started
                state["history"].append(row)
                improved = _is_better(
                    val[config.val_metric], state["best_score"], config.val_metric == "loss"
                )
                if improved:
                    state.update(best_score=val[config.val_metric], best_epoch=epoch + 1)
                if progress:
                    tqdm.write(_summary(row, config.val_metric, improved))
                if out_dir is not None:
                    checkpoint = {
                        "model": model.state_dict(),
                        "config": config.to_dict(),
                        "class_names": class_names,
                        "epoch": epoch + 1,
                        "metrics": row,
                        "rmnet_version": __version__,
                    }
                    if improved:
                        save_checkpoint(checkpoint, out_dir / BEST_CHECKPOINT)
                    resumable = _training_state(step, optimizer, scheduler, scaler)
                    save_checkpoint(checkpoint | resumable | state, out_dir / LAST_CHECKPOINT)
                    write_metrics_csv(state["history"], out_dir / METRICS_FILE)
                    _log_tensorboard(writer, row)
            if world_size > 1:
                dist.barrier()  # the other ranks wait while rank 0 validates and writes

        if writer is not None:
            writer.close()
        written = out_dir is not None and is_main and state["history"]
        return FitResult(
            model=model,
            history=state["history"],
            best_path=out_dir / BEST_CHECKPOINT if written else None,
            last_path=out_dir / LAST_CHECKPOINT if written else None,
        )


def run_epoch(
    step: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool,
    memory_format: torch.memory_format,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "",
    progress: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """One pass over ``loader``: training when an optimizer is given, else evaluation without grad.

    Returns the mean loss, the targets and the logits, in loader order.
    """
    training = optimizer is not None
    step.train(training)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    loss_sum, count, targets_seen, logits_seen = 0.0, 0, [], []
    bar = progress_bar(loader, desc, progress, dynamic_ncols=True)
    with torch.set_grad_enabled(training):
        for images, targets in bar:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            targets = torch.as_tensor(targets).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss, logits = step(images, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} ({desc}); lower --lr or check the data for broken images"
                )
            if training:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            loss_sum += loss.item() * len(targets)
            count += len(targets)
            targets_seen.append(targets.cpu())
            logits_seen.append(logits.detach().float().cpu())
            bar.set_postfix(loss=f"{loss_sum / count:.4f}")
    if count == 0:
        raise ValueError(f"{desc}: the data loader yielded no images")
    return loss_sum / count, torch.cat(targets_seen).numpy(), torch.cat(logits_seen).numpy()


def validation_metrics(
    loss: float, y_true: np.ndarray, logits: np.ndarray, class_names: list[str]
) -> dict[str, float]:
    scores = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    report = classification_report(y_true, predict_labels(scores), scores, class_names)
    keys = ("accuracy", "balanced_accuracy", "kappa", "mean_precision", "auc_macro")
    return {"loss": loss, **{key: report[key] for key in keys}}


def _reduce_train_stats(
    mean_loss: float, y_true: np.ndarray, logits: np.ndarray, world_size: int
) -> tuple[float, float]:
    """Mean loss and accuracy over the whole training set (summed over ranks under DDP)."""
    totals = torch.tensor([mean_loss * len(y_true), float((logits.argmax(1) == y_true).sum()), len(y_true)])
    if world_size > 1:
        totals = totals.to(_collective_device())
        dist.all_reduce(totals)
        totals = totals.cpu()
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


def _is_better(score: float, best: float | None, lower_is_better: bool) -> bool:
    if score is None or np.isnan(score):
        return best is None
    if best is None or np.isnan(best):
        return True
    return score < best if lower_is_better else score > best


def _summary(row: dict[str, Any], val_metric: str, improved: bool) -> str:
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
        f"val loss {row['val_loss']:.4f} {val_metric} {row[f'val_{val_metric}']:.4f}"
        + (" (best)" if improved else "")
        + f" | {row['seconds']:.1f}s"
    )


def _training_state(step: TrainingStep, optimizer, scheduler, scaler) -> dict[str, Any]:
    """What last.pt holds beyond the weights, so that a resumed run continues exactly."""
    return {
        "objective": step.objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
    }


def _restore(
    path: Path, config: TrainConfig, step: TrainingStep, optimizer, scheduler, scaler
) -> dict[str, Any]:
    """Load what :func:`_training_state` saved, and the weights; check the config matches."""
    checkpoint = read_checkpoint(path)
    check_resumable(checkpoint, config, path)
    step.model.load_state_dict(checkpoint["model"])
    step.objective.load_state_dict(checkpoint["objective"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    return {key: checkpoint[key] for key in ("epoch", "history", "best_score", "best_epoch")}


def check_resumable(checkpoint: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """Refuse to resume ``checkpoint`` with a config that would train something else."""
    saved = TrainConfig().to_dict() | checkpoint["config"]  # a field added since: its default then
    changed = [
        f"{key}={saved.get(key)!r} there, {value!r} now"
        for key, value in config.to_dict().items()
        if key not in RESUMABLE_CHANGES and saved.get(key) != value
    ]
    if changed:
        raise ValueError(
            f"cannot resume from {path}: it was trained with a different config ({'; '.join(changed)}). "
            "Use the same options, or start a new run folder without --resume."
        )
    if checkpoint.get("epoch", 0) > config.epochs:
        raise ValueError(
            f"cannot resume from {path} with --epochs {config.epochs}: it has already trained "
            f"{checkpoint['epoch']} epochs"
        )


def build_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``groups``: SGD with momentum (the paper's) or Adam (MWNL's)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def parameter_groups(module: nn.Module, lr: float) -> list[dict[str, Any]]:
    """The trainable parameters as optimizer groups: those of a submodule with an ``lr_scale``
    attribute (e.g. the STN's localisation network) train at ``lr × lr_scale``, the rest at ``lr``
    (group 0). StepLR scales every group alike."""
    scales: dict[int, float] = {}
    for sub in module.modules():
        if (scale := getattr(sub, "lr_scale", None)) is not None:
            scales.update({id(p): float(scale) for p in sub.parameters()})
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for p in module.parameters():
        if p.requires_grad:
            groups.setdefault(scales.get(id(p), 1.0), []).append(p)
    return [{"params": params, "lr": lr * scale} for scale, params in groups.items()]


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed Python, NumPy and torch from (seed, epoch, rank): shuffling, augmentation, workers."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _loader(
    dataset: Dataset, config: TrainConfig, device: torch.device, shuffle: bool, sampler=None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
    )


def _tensorboard(out_dir: Path, start_epoch: int):
    """A TensorBoard writer when tensorboard is installed (never required)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_epoch + 1)


def _log_tensorboard(writer, row: dict[str, Any]) -> None:
    if writer is None:
        return
    for name, value in row.items():
        if name != "epoch" and value is not None:
            writer.add_scalar(name, value, row["epoch"])
    writer.flush()


def _precision(config: TrainConfig, device: torch.device) -> tuple[bool, torch.memory_format]:
    """(AMP on?, memory format): both default to on with CUDA."""
    on_cuda = device.type == "cuda"
    amp = config.amp if config.amp is not None else on_cuda
    channels_last = config.channels_last if config.channels_last is not None else on_cuda
    return amp, torch.channels_last if channels_last else torch.contiguous_format


@contextlib.contextmanager
def distributed(config: TrainConfig) -> Iterator[tuple[int, int, int]]:
    """(rank, world_size, local_rank): joins the process group that torchrun describes in the env.

    A group that already exists is used as is; one created here is destroyed on exit.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size(), local_rank
        return
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        yield 0, 1, 0
        return
    device = config.resolved_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world_size, local_rank
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The integer label of every item, without loading images: ``.labels``, a TensorDataset, a Subset."""
    labels = getattr(dataset, "labels", None)
    if labels is None and isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1]
    if labels is None and isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)[np.asarray(dataset.indices)]
    if labels is None:
        raise TypeError(
            f"{type(dataset).__name__} has no .labels: give the dataset a .labels array of its integer "
            "labels (the class weights of the loss need them)"
        )
    return np.asarray(labels, dtype=np.int64)


def _class_names(dataset: Dataset, labels: np.ndarray) -> list[str]:
    for source in (dataset, getattr(dataset, "table", None)):
        names = getattr(source, "class_names", None)
        if names is not None:
            return list(names)
    return [str(c) for c in range(int(labels.max()) + 1)]


def train(
    config: TrainConfig, out_dir: str | os.PathLike, *, resume: bool = False, progress: bool = True
) -> FitResult:
    """Train on ``config.data`` and write a complete run folder at ``out_dir`` (see rmnet.runs).

    Everything is checked before anything is written: a refused command leaves the folder as it was.
    Data paths are stored absolute, so the run folder works from any working directory.
    """
    out_dir = Path(out_dir)
    if config.data is None:
        raise ValueError(
            "no training data: set --data (an ISIC 2019 folder, a folder of class folders or a CSV)"
        )
    check_run_folder(out_dir)
    config = config.replace(**{key: str(Path(v).resolve()) for key in RELOCATABLE + ("split",)
                                if (v := getattr(config, key)) is not None})  # fmt: skip
    last = out_dir / LAST_CHECKPOINT
    if resume and last.exists():
        check_resumable(read_checkpoint(last), config, last)
    elif not resume and last.exists():
        raise FileExistsError(
            f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out"
        )
    entry = model_entry(config.arch)
    if config.input_size() < entry.min_input_size:
        raise ValueError(
            f"--image-size {config.input_size()} is too small for {config.arch}: it needs at least "
            f"{entry.min_input_size} px (its own input size is {entry.input_size})"
        )
    table = load_table(config)
    if resume and (out_dir / SPLIT_FILE).is_file():
        split = load_split(out_dir / SPLIT_FILE, table)  # moved data must still hold the split's images
    elif config.split is not None:
        split = load_split(config.split, table)
    else:
        split = make_split(
            table, seed=config.split_seed, ratios=config.split_ratios, group_by_lesion=config.group_by_lesion
        )
    check_split_sizes(split, table, config)

    torch.manual_seed(config.seed)
    model = build_model(config, table.num_classes)  # a bad --arch/--rm fails here, before anything is written
    is_main = int(os.environ.get("RANK", 0)) == 0
    if config.on_error == "raise":
        check_images(table, split)  # every part's images, test included: not found only at evaluation
    train_set = split_dataset(config, table, split, "train", train=True)
    val_set = split_dataset(config, table, split, "val", train=False)
    test_set = split_dataset(config, table, split, "test", train=False) if config.on_error == "skip" else None
    for name, dataset in (("training", train_set), ("validation", val_set)):
        if len(dataset) == 0:  # every image of the part was unreadable and skipped
            raise ValueError(f"the {name} set is empty: its images are all unreadable (listed above)")
    if is_main and config.pretrained is None and entry.preset and entry.preset.weights:
        print(
            f"note: {config.arch} starts from random weights; the paper starts from ImageNet "
            "(--pretrained imagenet, or --recipe paper)",
            file=sys.stderr,
        )
    if is_main:  # everything is checked: the run folder is written from here on
        out_dir.mkdir(parents=True, exist_ok=True)
        config.to_json(out_dir / CONFIG_FILE)
        if not (resume and (out_dir / SPLIT_FILE).is_file()):
            save_split(split, out_dir / SPLIT_FILE)
    if is_main and test_set is not None:  # the images left out (each also named in a warning)
        parts = {"train": train_set, "val": val_set, "test": test_set}
        save_skipped(out_dir / SKIPPED_FILE, {part: dataset.skipped for part, dataset in parts.items()})
    return fit(
        config,
        train_set,
        val_set,
        out_dir,
        class_names=table.class_names,
        resume=resume,
        progress=progress,
        model=model,
    )


def check_run_folder(out_dir: Path) -> None:
    """Refuse a folder that holds files but is not an rmnet run (no config.json of a TrainConfig):
    training writes config.json, split.json… and must never overwrite a user's files of those names."""
    refuse_foreign_folder(out_dir, CONFIG_FILE)
    if (out_dir / CONFIG_FILE).is_file():
        try:
            TrainConfig.from_json(out_dir / CONFIG_FILE)
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(
                f"{out_dir} is not an rmnet run: its {CONFIG_FILE} is not a TrainConfig ({err}); "
                "choose an empty or new folder"
            ) from None


def check_runs_folder(out_dir: Path) -> None:
    """Refuse a folder of runs (``--seeds``) that holds anything but seed-S runs and their report."""
    if not out_dir.is_dir():
        return
    foreign = sorted(
        p.name
        for p in out_dir.iterdir()
        if not (p.is_dir() and (p.name.startswith("seed-") or p.name == "report"))
    )
    if foreign:
        raise ValueError(
            f"{out_dir} holds files that are not rmnet runs ({', '.join(foreign[:3])}); with --seeds, --out "
            "is a folder of seed-S runs: choose an empty or new folder"
        )


def check_split_sizes(split: Split, table: ImageTable, config: TrainConfig) -> None:
    """An empty training or validation part is an error that says how many images per class the
    split needs and how to change it, before anything is written. (An empty test part trains; only
    ``rmnet evaluate`` needs one.)"""
    empty = [name for name in ("train", "val") if not split.part(name)]
    if not empty:
        return
    ratios = " ".join(f"{r:g}" for r in split.ratios)
    unit = "lesions" if split.group_by_lesion else "images"
    smallest = min(np.bincount(table.labels, minlength=table.num_classes))
    needed = min_per_class(split.ratios)
    alternative = (0.6, 0.2, 0.2)
    names = {"train": "training", "val": "validation"}
    raise ValueError(
        f"the {' and '.join(names[n] for n in empty)} set{'s are' if len(empty) > 1 else ' is'} empty: "
        f"split {ratios}, each class needs at least {needed} {unit} (the smallest class has {smallest} "
        f"images); give more images, or another split: --split {' '.join(f'{r:g}' for r in alternative)} "
        f"needs {min_per_class(alternative)} per class. Nothing was written"
    )


def check_images(table: ImageTable, split: Split) -> None:
    """Decode every image of the split once (all three parts); one error naming those that cannot be
    read, so that a broken test image is found when a run starts, not at evaluation."""
    indices = np.concatenate([np.asarray(split.part(name), dtype=np.int64) for name in PARTS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        checked = ImageDataset(table, indices, on_error="skip")
    if checked.skipped:
        listed = "; ".join(
            f"cannot read image {image.path} ({image.reason})" for image in checked.skipped[:3]
        )
        more = f" (and {len(checked.skipped) - 3} more)" if len(checked.skipped) > 3 else ""
        raise UnreadableImageError(
            f"{len(checked.skipped)} of {len(indices)} images of the split cannot be read: {listed}{more}; "
            "replace them, or pass --on-error skip to leave them out. Nothing was written"
        )


def repeat(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    seeds: Sequence[int],
    *,
    resume: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Train once per seed into ``out_dir/seed-S`` (same split), for results reported as mean ± SD."""
    check_runs_folder(Path(out_dir))
    run_dirs = []
    for seed in seeds:
        run_dir = Path(out_dir) / f"seed-{seed}"
        train(config.replace(seed=seed), run_dir, resume=resume, progress=progress)
        run_dirs.append(run_dir)
    return run_dirs
