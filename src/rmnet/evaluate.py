"""Evaluate a trained model: predictions, the paper's metrics, robustness to rotation, and the report.

    evaluate_run(RUN_DIR)  ->  RUN_DIR/report/report.json, report.md and the figures

Robustness to rotation: the test images (normalised tensors) are rotated counterclockwise with
``rmnet.groups.rotate``: exactly by index permutation at multiples of 90°, bilinearly otherwise
(corners then fall outside the image and read as the mean colour). "random" rotates each image by
its own angle, uniform in [0°, 360°) from a fixed seed. "changed" is the fraction of images whose
predicted class differs from the upright prediction.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rmnet import plots
from rmnet.groups import rotate
from rmnet.metrics.classification import classification_report, predict_labels
from rmnet.retrieval.evaluation import retrieval_report
from rmnet.runs import METRICS_FILE, REPORT_DIR, Run, atomic_write_text

Angle = float | str  # degrees, or "random"
HEADLINE = (  # (key in the classification report, name in the paper's tables)
    ("mean_precision", "AP (mean precision)"),
    ("mean_sensitivity", "Ave Sen"),
    ("mean_specificity", "Ave Spec"),
    ("kappa", "Kappa"),
    ("balanced_accuracy", "balanced accuracy (ISIC)"),
    ("accuracy", "accuracy"),
    ("auc_micro", "AUC overall (micro)"),
    ("auc_macro", "AUC macro"),
)
ROTATION_KEYS = ("accuracy", "balanced_accuracy", "mean_precision", "kappa", "auc_micro")


@dataclass
class Predictions:
    y_true: np.ndarray  # (N,) labels
    y_pred: np.ndarray  # (N,) arg-max class, -1 where the top scores tie
    y_score: np.ndarray  # (N, C) softmax probabilities
    features: np.ndarray | None  # (N, D) model.embed: hash codes, or pooled features


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    *,
    angle: Angle = 0.0,
    workers: int = 0,
) -> Predictions:
    """Predictions of ``model`` on ``dataset``, its images rotated by ``angle`` (0: upright)."""
    predictions = predict_rotated(
        model, dataset, [angle], batch_size, device, workers=workers, progress=False
    )
    return predictions[angle]


def predict_rotated(
    model: nn.Module,
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

    Features are kept for the first angle only (they are for the t-SNE; the others would cost memory).
    """
    device = resolve_device(device)
    model = model.eval().to(device)
    random_angles = np.random.default_rng(seed).uniform(0.0, 360.0, len(dataset))
    outputs: dict[Angle, tuple[list, list]] = {angle: ([], []) for angle in angles}
    labels, start = [], 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc="predicting", leave=False, disable=not progress):
            images = images.to(device)
            labels.append(torch.as_tensor(targets))
            for angle in angles:
                if angle == "random":
                    batch_angles = random_angles[start : start + len(images)]
                    rotated = torch.stack(
                        [rotate(im, float(a)) for im, a in zip(images, batch_angles, strict=True)]
                    )
                else:
                    rotated = rotate(images, float(angle))
                logits, features = _logits_and_features(model, rotated)
                outputs[angle][0].append(torch.softmax(logits.float(), dim=1).cpu())
                if features is not None and angle == angles[0]:
                    outputs[angle][1].append(features.float().cpu())
            start += len(images)
    y_true = torch.cat(labels).numpy()
    result = {}
    for angle, (scores, features) in outputs.items():
        y_score = torch.cat(scores).numpy()
        kept = torch.cat(features).numpy() if features else None
        result[angle] = Predictions(y_true, predict_labels(y_score), y_score, kept)
    return result


def _logits_and_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, codes) in one pass for rmnet models; other models give logits (and embed, if they have it)."""
    if hasattr(model, "forward_codes"):
        codes, logits = model.forward_codes(images)
        return logits, codes
    logits = model(images)
    return logits, model.embed(images) if hasattr(model, "embed") else None


def rotation_robustness(
    predictions: Mapping[Angle, Predictions],
    class_names: Sequence[str],
    angles: Sequence[Angle] = (90, 180, 270, "random"),
    sweep: Sequence[float] = tuple(range(0, 361, 15)),
) -> dict[str, Any]:
    """The metrics at each of ``angles`` and accuracy over the ``sweep``, from ``predict_rotated`` output."""
    upright = predictions[0]

    def row(angle: Angle) -> dict[str, float]:
        p = predictions[_canonical(angle)]
        report = classification_report(p.y_true, p.y_pred, p.y_score, class_names)
        return {key: report[key] for key in ROTATION_KEYS} | {
            "changed": float(np.mean(p.y_pred != upright.y_pred))
        }

    sweep_rows = [row(angle) for angle in sweep]
    return {
        "angles": {angle_name(angle): row(angle) for angle in (0, *angles)},
        "sweep": {
            "angles": [float(a) for a in sweep],
            "accuracy": [r["accuracy"] for r in sweep_rows],
            "balanced_accuracy": [r["balanced_accuracy"] for r in sweep_rows],
            "changed": [r["changed"] for r in sweep_rows],
        },
    }


def angle_name(angle: Angle) -> str:
    """The key of an angle in the report: "90", "22.5", "random"."""
    return angle if angle == "random" else f"{float(angle):g}"


def _canonical(angle: Angle) -> Angle:
    """360° is 0°: the same predictions, computed once."""
    return angle if angle == "random" else float(angle) % 360


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    title: str = "model",
    description: Mapping[str, Any] | None = None,
    history: pd.DataFrame | None = None,
    retrieval: Mapping[str, Any] | None = None,
    angles: Sequence[Angle] = (90, 180, 270, "random"),
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
    needed = list(dict.fromkeys(_canonical(a) for a in (0, *angles, *sweep)))
    predictions = predict_rotated(
        model, dataset, needed, batch_size, device, seed=seed, workers=workers, progress=progress
    )
    upright = predictions[0]
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


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    part: str = "test",
    checkpoint: str = "best",
    retrieval_k: int = 10,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a run's best (or last) checkpoint on a split part; the report goes to RUN_DIR/report."""
    run = Run(run_dir)
    model, config, class_names = run.load_model(checkpoint), run.config, run.class_names
    dataset = run.dataset(part)
    device = options.get("device", "auto")
    retrieval = None
    if getattr(model, "hash_bits", None):  # a hash layer: the paper's retrieval evaluation
        retrieval = retrieval_report(
            model,
            database=run.dataset("train"),
            queries=dataset,
            k=retrieval_k,
            device=resolve_device(device),
            class_names=class_names,
            progress=options.get("progress", True),
        )
    history = run.metrics if (run.dir / METRICS_FILE).is_file() else None
    description = {key: getattr(config, key) for key in ("arch", "rm", "k", "fusion", "hash_bits", "loss")}
    description |= {"checkpoint": checkpoint, "part": part, "run": str(run.dir)}
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


# The report: JSON for machines, Markdown for people.


def json_safe(value: Any) -> Any:
    """NaN and infinities as null, numpy scalars as Python numbers: strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """report.json and report.md in ``out_dir``."""
    out_dir = Path(out_dir)
    json_path = atomic_write_text(out_dir / "report.json", json.dumps(json_safe(report), indent=2) + "\n")
    return json_path, atomic_write_text(out_dir / "report.md", report_markdown(report))


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report for people: the paper's tables (values in %), then the figures."""
    cls, figures = report["classification"], report.get("figures", {})
    model = ", ".join(f"{k}={v}" for k, v in report["model"].items() if v is not None)
    out = [f"# Evaluation report: {report['title']}", "", f"Model: {model}.", ""]
    out += [f"Test images: {cls['n']} in {len(cls['class_names'])} classes. Values in %.", ""]
    out += [
        "## Classification",
        "",
        _table(["metric", "value"], [(n, _pct(cls[k])) for k, n in HEADLINE]),
        "",
    ]
    out += ["Kappa > 75: good agreement; 40–75: moderate; < 40: poor.", ""]
    if cls["ties"]:
        out += [f"{cls['ties']} images had tied top scores and count as wrong.", ""]
    per_class = [
        (name, row["support"], _pct(row["precision"]), _pct(row["sensitivity"]), _pct(row["specificity"]),
         _pct(row["auc"]))
        for name, row in cls["per_class"].items()
    ]  # fmt: skip
    out += ["### Per class (one vs the rest)", ""]
    out += [_table(["class", "images", "precision", "sensitivity", "specificity", "AUC"], per_class), ""]
    names = cls["class_names"]
    matrix = [[f"**{name}**", *row] for name, row in zip(names, cls["confusion_matrix"], strict=True)]
    out += ["### Confusion matrix (rows: true class, columns: predicted)", ""]
    out += [_table(["", *names], matrix), ""]
    out += _figure(figures, "confusion_matrix", "Confusion matrix") + _figure(figures, "roc", "ROC curves")

    rotation = report["rotation"]
    rows = [
        ("upright" if angle == "0" else (f"{angle}°" if angle != "random" else "random angle"),
         *(_pct(values[k]) for k in ROTATION_KEYS), _pct(values["changed"]))
        for angle, values in rotation["angles"].items()
    ]  # fmt: skip
    header = ["test images", "accuracy", "balanced acc.", "AP", "Kappa", "AUC", "predictions changed"]
    out += ["## Robustness to rotation", "", _table(header, rows), ""]
    out += [
        "Rotations are counterclockwise; multiples of 90° are exact, other angles interpolate. "
        f"Random angles: one per image, seed {rotation['seed']}. Predictions changed: share of images "
        "whose predicted class differs from the upright prediction.",
        "",
    ]
    out += _figure(figures, "rotation", "Accuracy against rotation angle")
    out += _figure(figures, "tsne", "t-SNE of the last-layer features")
    out += _figure(figures, "training", "Training curves")
    if "retrieval" in report:
        out += ["## Retrieval", "", retrieval_markdown(report["retrieval"]), ""]
    return "\n".join(out)


def _figure(figures: Mapping[str, str], key: str, caption: str) -> list[str]:
    return [f"![{caption}]({figures[key]})", ""] if key in figures else []


def retrieval_markdown(retrieval: Mapping[str, Any]) -> str:
    """mAP@k and mRR@k per query rotation and distance, from rmnet.retrieval.evaluation.retrieval_report."""
    k = retrieval.get("k", 10)
    rows = [
        (f"{r['angle']}°", r["metric"], _pct(r["map_at_k"]), _pct(r["mrr_at_k"]), _pct(r.get("map")))
        for r in retrieval.get("results", [])
    ]
    return _table(["queries rotated", "distance", f"mAP@{k}", f"mRR@{k}", "mAP (full ranking)"], rows)


# Repeated runs: mean ± SD, as the paper reports.


def flatten_numbers(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a report as "section.key.sub" -> value (lists and matrices left out)."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten_numbers(value, f"{name}.")
        elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def aggregate_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample SD over runs of every number the reports share: {"classification.kappa": {...}}."""
    flats = [flatten_numbers(r) for r in reports]
    shared = [key for key in flats[0] if all(key in f for f in flats[1:])]
    out = {}
    for key in shared:
        values = np.array([f[key] for f in flats], dtype=float)
        finite = values[np.isfinite(values)]
        out[key] = {
            "mean": float(finite.mean()) if len(finite) else None,
            "sd": float(finite.std(ddof=1)) if len(finite) > 1 else None,
            "n": len(finite),
        }
    return out


def summary_markdown(aggregate: Mapping[str, Mapping[str, Any]], runs: Sequence[str]) -> str:
    """The headline metrics as mean ± SD over the repeated runs (values in %)."""

    def cell(key: str) -> str:
        stats = aggregate.get(key)
        if stats is None or stats["mean"] is None:
            return "–"
        sd = "" if stats["sd"] is None else f" ± {100 * stats['sd']:.2f}"
        return f"{100 * stats['mean']:.2f}{sd}"

    rows = [(name, cell(f"classification.{key}")) for key, name in HEADLINE]
    rotated = sorted({key.split(".")[2] for key in aggregate if key.startswith("rotation.angles.")}, key=str)
    rows += [(f"accuracy, rotated {a}{'°' if a != 'random' else ''}", cell(f"rotation.angles.{a}.accuracy"))
             for a in rotated if a != "0"]  # fmt: skip
    rows += [(f"predictions changed, {a}{'°' if a != 'random' else ''}", cell(f"rotation.angles.{a}.changed"))
             for a in rotated if a != "0"]  # fmt: skip
    lines = [f"# Summary over {len(runs)} runs (mean ± SD, %)", "", "Runs: " + ", ".join(runs), ""]
    return "\n".join([*lines, _table(["metric", "mean ± SD"], rows), ""])


def evaluate_repeats(parent_dir: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Evaluate every run inside ``parent_dir`` (seed-0, seed-1 …) and write their mean ± SD summary."""
    parent = Path(parent_dir)
    run_dirs = sorted(p for p in parent.iterdir() if (p / "config.json").is_file())
    if not run_dirs:
        raise FileNotFoundError(f"{parent} holds no run folders (sub-folders with a config.json)")
    reports = [evaluate_run(run_dir, **options) for run_dir in run_dirs]
    aggregate = aggregate_reports(reports)
    summary = {"runs": [p.name for p in run_dirs], "metrics": aggregate}
    atomic_write_text(parent / REPORT_DIR / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
    atomic_write_text(parent / REPORT_DIR / "summary.md", summary_markdown(aggregate, summary["runs"]))
    return summary
