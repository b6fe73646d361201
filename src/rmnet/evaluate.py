"""Evaluate a trained model: predictions, the paper's metrics, robustness to rotation, the report.

    evaluate_run(RUN_DIR)  ->  RUN_DIR/report/report.json, report.md and the figures

Robustness to rotation: the test images (normalised tensors) are rotated counterclockwise with
``rmnet.groups.rotate``: exactly by index permutation at multiples of 90°, bilinearly otherwise
(corners then fall outside the image and read as the mean colour). "random" rotates each image by
its own angle, uniform in [0°, 360°) from a fixed seed. "changed" is the fraction of images whose
predicted class differs from the upright prediction. Angles stay numbers throughout; the report
lists one row per angle, numbers in increasing order, then "random".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from rmnet import plots
from rmnet.groups import rotate
from rmnet.inference import infer
from rmnet.io import atomic_write_text, resolve_device
from rmnet.metrics.classification import classification_report, predict_labels
from rmnet.models.base import ImageClassifier
from rmnet.report import ROTATION_KEYS, aggregate_reports, json_safe, summary_markdown, write_report
from rmnet.runs import METRICS_FILE, REPORT_DIR, Run

Angle = float | str  # degrees counterclockwise, or "random"
DEFAULT_ANGLES: tuple[Angle, ...] = (90.0, 180.0, 270.0, "random")


@dataclass
class Predictions:
    y_true: np.ndarray  # (N,) labels
    y_pred: np.ndarray  # (N,) arg-max class, -1 where the top scores tie
    y_score: np.ndarray  # (N, C) softmax probabilities
    features: np.ndarray | None  # (N, D) model.embed: hash codes, or pooled features


def canonical_angle(angle: Angle) -> Angle:
    """An angle as a number in [0, 360) ("random" stays): 360° and 0° are the same predictions."""
    return angle if angle == "random" else float(angle) % 360


def sorted_angles(angles: Sequence[Angle]) -> list[Angle]:
    """Distinct angles in table order: numbers increasing, then "random"."""
    unique = dict.fromkeys(canonical_angle(a) for a in angles)
    return sorted((a for a in unique if a != "random"), key=float) + (
        ["random"] if "random" in unique else []
    )


def predict(
    model: ImageClassifier,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    *,
    angle: Angle = 0.0,
    workers: int = 0,
) -> Predictions:
    """Predictions of ``model`` on ``dataset``, its images rotated by ``angle`` (0: upright)."""
    return predict_rotated(model, dataset, [angle], batch_size, device, workers=workers, progress=False)[
        canonical_angle(angle)
    ]


def predict_rotated(
    model: ImageClassifier,
    dataset: Dataset,
    angles: Sequence[Angle],
    batch_size: int = 64,
    device: str | torch.device = "auto",
    *,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> dict[Angle, Predictions]:
    """Predictions at every angle in one pass over the data: each batch is loaded once, rotated many times.

    Keys are canonical angles (numbers in [0, 360), or "random"). Features are kept for the first
    angle only (they are for the t-SNE; the others would cost memory).
    """
    angles = list(dict.fromkeys(canonical_angle(a) for a in angles))
    random_angles = np.random.default_rng(seed).uniform(0.0, 360.0, len(dataset))

    def view(angle: Angle):
        if angle == "random":
            return lambda images, start: torch.stack(
                [
                    rotate(im, float(a))
                    for im, a in zip(images, random_angles[start : start + len(images)], strict=True)
                ]
            )
        return lambda images, start: rotate(images, float(angle))

    y_true, outputs = infer(
        model, dataset, {a: view(a) for a in angles}, batch_size=batch_size, device=resolve_device(device),
        workers=workers, progress=progress, desc="predicting",
    )  # fmt: skip
    result = {}
    for angle, out in outputs.items():
        y_score = torch.softmax(torch.from_numpy(out.logits), dim=1).numpy()
        result[angle] = Predictions(y_true, predict_labels(y_score), y_score, out.codes)
    return result


def rotation_robustness(
    predictions: Mapping[Angle, Predictions],
    class_names: Sequence[str],
    angles: Sequence[Angle] = DEFAULT_ANGLES,
    sweep: Sequence[float] = tuple(range(0, 361, 15)),
) -> dict[str, Any]:
    """The metrics at each of ``angles`` (one row each, "angle" a number or "random") and accuracy over
    the ``sweep``, from ``predict_rotated`` output."""
    upright = predictions[0.0]

    def row(angle: Angle) -> dict[str, Any]:
        p = predictions[canonical_angle(angle)]
        report = classification_report(p.y_true, p.y_pred, p.y_score, class_names)
        return {key: report[key] for key in ROTATION_KEYS} | {
            "changed": float(np.mean(p.y_pred != upright.y_pred))
        }

    sweep_rows = [row(angle) for angle in sweep]
    return {
        "angles": [{"angle": angle} | row(angle) for angle in sorted_angles([0.0, *angles])],
        "sweep": {
            "angles": [float(a) for a in sweep],
            "accuracy": [r["accuracy"] for r in sweep_rows],
            "balanced_accuracy": [r["balanced_accuracy"] for r in sweep_rows],
            "changed": [r["changed"] for r in sweep_rows],
        },
    }


def rotation_row(rotation: Mapping[str, Any], angle: Angle) -> dict[str, Any]:
    """The row of ``angle`` in a report's "rotation" section."""
    angle = canonical_angle(angle)
    for row in rotation["angles"]:
        if canonical_angle(row["angle"]) == angle:
            return row
    raise KeyError(f"the report has no rotation row for {angle!r}")


def evaluate_model(
    model: ImageClassifier,
    dataset: Dataset,
    class_names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    title: str = "model",
    description: Mapping[str, Any] | None = None,
    history: pd.DataFrame | None = None,
    retrieval: Mapping[str, Any] | None = None,
    angles: Sequence[Angle] = DEFAULT_ANGLES,
    sweep_step: float = 15,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    workers: int = 0,
    tsne: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics, rotation robustness and figures of ``model`` on ``dataset``, written to ``out_dir``."""
    out_dir = Path(out_dir)
    sweep = [float(a) for a in np.arange(0, 360 + 1e-9, sweep_step)]
    predictions = predict_rotated(
        model,
        dataset,
        [0.0, *angles, *sweep],
        batch_size,
        device,
        seed=seed,
        workers=workers,
        progress=progress,
    )
    upright = predictions[0.0]
    report: dict[str, Any] = {
        "title": title,
        "model": {**(description or {}), "parameters": sum(p.numel() for p in model.parameters())},
        "data": {"images": len(upright.y_true), "class_names": list(class_names)},
        "classification": classification_report(upright.y_true, upright.y_pred, upright.y_score, class_names),
        "rotation": rotation_robustness(predictions, class_names, angles, sweep) | {"seed": seed},
    }
    if retrieval is not None:
        report["retrieval"] = dict(retrieval)

    figures = {
        "roc": plots.plot_roc(upright.y_true, upright.y_score, class_names, out_dir / "roc.png"),
        "confusion_matrix": plots.plot_confusion_matrix(
            report["classification"]["confusion_matrix"], class_names, out_dir / "confusion_matrix.png"
        ),
        "rotation": plots.plot_rotation_robustness(
            {title: (sweep, report["rotation"]["sweep"]["accuracy"])}, out_dir / "rotation.png"
        ),
    }
    if tsne and upright.features is not None and len(upright.y_true) > 5:
        figures["tsne"] = plots.plot_tsne(
            upright.features, upright.y_true, class_names, out_dir / "tsne.png", seed
        )
    if history is not None and len(history):
        figures["training"] = plots.plot_training_curves(history, out_dir / "training.png")
    report["figures"] = {name: path.name for name, path in figures.items()}
    write_report(report, out_dir)
    return report


def checkpoint_description(run: Run) -> str:
    """Which checkpoint produced the numbers and by what criterion (the paper does not say which it used)."""
    from rmnet.runs import read_checkpoint

    epoch = read_checkpoint(run.checkpoint).get("epoch")
    if run.which == "best":
        return f"best.pt (epoch {epoch}, the best validation {run.config.val_metric})"
    return f"last.pt (epoch {epoch}, the final model)"


def evaluate_run(
    run_dir: str | os.PathLike | Run,
    *,
    part: str = "test",
    checkpoint: str = "best",
    retrieval_k: int = 10,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a run's best (or last) checkpoint on a split part; the report goes to RUN_DIR/report.

    Pass a :class:`~rmnet.runs.Run` to evaluate it on moved data (``Run(dir, data=…)``).
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir, checkpoint=checkpoint)
    model, config, class_names = run.load_model(), run.config, run.class_names
    dataset = run.dataset(part)
    retrieval = None
    if model.hash_bits:  # a hash layer: the paper's retrieval evaluation
        from rmnet.retrieval.evaluation import retrieval_report

        retrieval = retrieval_report(
            model,
            database=run.dataset("train"),
            queries=dataset,
            k=retrieval_k,
            device=resolve_device(options.get("device", "auto")),
            class_names=class_names,
            progress=options.get("progress", True),
        )
    history = run.metrics if (run.dir / METRICS_FILE).is_file() else None
    description = {key: getattr(config, key) for key in ("arch", "rm", "k", "fusion", "hash_bits", "loss")}
    description |= {"checkpoint": checkpoint_description(run), "part": part, "run": str(run.dir)}
    return evaluate_model(
        model,
        dataset,
        class_names,
        run.report_dir,
        title=run.dir.name,
        description=description,
        history=history,
        retrieval=retrieval,
        **options,
    )


def evaluate_repeats(parent_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Evaluate every run inside ``parent_dir`` (seed-0, seed-1 …) and write their mean ± SD summary."""
    parent = Path(parent_dir)
    run_dirs = sorted(p for p in parent.iterdir() if (p / "config.json").is_file())
    if not run_dirs:
        raise FileNotFoundError(f"{parent} holds no run folders (sub-folders with a config.json)")
    moved = ("data", "cache", "on_error")  # Run's options
    relocated = {key: options.pop(key) for key in moved if options.get(key) is not None}
    options = {k: v for k, v in options.items() if k not in moved}
    checkpoint = options.pop("checkpoint", "best")
    reports = [evaluate_run(Run(d, checkpoint=checkpoint, **relocated), **options) for d in run_dirs]
    aggregate = aggregate_reports(reports)
    summary = {"runs": [p.name for p in run_dirs], "metrics": aggregate}
    angles = [row["angle"] for row in reports[0]["rotation"]["angles"]]
    atomic_write_text(parent / REPORT_DIR / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    atomic_write_text(
        parent / REPORT_DIR / "summary.md", summary_markdown(aggregate, summary["runs"], angles)
    )
    return summary
