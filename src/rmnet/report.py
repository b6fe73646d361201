"""The evaluation report for machines (JSON) and people (Markdown), and mean ± SD over runs."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmnet.io import atomic_write_text, format_percent

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


def angle_label(angle: float | str) -> str:
    """How an angle reads in a table: "upright", "90°", "22.5°", "random angle"."""
    if angle == "random":
        return "random angle"
    return "upright" if float(angle) == 0 else f"{float(angle):g}°"


def angle_key(angle: float | str) -> str:
    """The key of an angle in flattened reports ("90", "22.5", "random"): for lookups, never parsed."""
    return angle if angle == "random" else f"{float(angle):g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


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


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report for people: the paper's tables (values in %), then the figures."""
    cls, figures = report["classification"], report.get("figures", {})
    model = ", ".join(f"{k}={v}" for k, v in report["model"].items() if v is not None)
    out = [f"# Evaluation report: {report['title']}", "", f"Model: {model}.", ""]
    out += [f"Test images: {cls['n']} in {len(cls['class_names'])} classes. Values in %.", ""]
    out += [
        "## Classification",
        "",
        markdown_table(["metric", "value"], [(n, format_percent(cls[k])) for k, n in HEADLINE]),
        "",
    ]
    out += ["Kappa > 75: good agreement; 40–75: moderate; < 40: poor.", ""]
    if cls["ties"]:
        out += [f"{cls['ties']} images had tied top scores and count as wrong.", ""]
    per_class = [
        (
            name,
            row["support"],
            *(format_percent(row[key]) for key in ("precision", "sensitivity", "specificity", "auc")),
        )
        for name, row in cls["per_class"].items()
    ]
    out += ["### Per class (one vs the rest)", ""]
    out += [
        markdown_table(["class", "images", "precision", "sensitivity", "specificity", "AUC"], per_class),
        "",
    ]
    names = cls["class_names"]
    matrix = [[f"**{name}**", *row] for name, row in zip(names, cls["confusion_matrix"], strict=True)]
    out += ["### Confusion matrix (rows: true class, columns: predicted)", ""]
    out += [markdown_table(["", *names], matrix), ""]
    out += _figure(figures, "confusion_matrix", "Confusion matrix") + _figure(figures, "roc", "ROC curves")

    out += calibration_markdown(report.get("calibration"), figures)

    rotation = report["rotation"]
    rows = [
        (
            angle_label(row["angle"]),
            *(format_percent(row[k]) for k in ROTATION_KEYS),
            format_percent(row["changed"]),
        )
        for row in rotation["angles"]
    ]
    header = ["test images", "accuracy", "balanced acc.", "AP", "Kappa", "AUC", "predictions changed"]
    out += ["## Robustness to rotation", "", markdown_table(header, rows), ""]
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


def calibration_markdown(calibration: Mapping[str, Any] | None, figures: Mapping[str, str]) -> list[str]:
    """The calibration section: which probabilities the report shows, and the ECE before and after."""
    if not calibration:
        return []
    bins = calibration.get("bins", 15)
    rows = [("uncalibrated (softmax of the logits)", format_percent(calibration["ece_before"]))]
    if calibration.get("calibrated"):
        t = calibration["temperature"]
        rows.append((f"calibrated (logits / {t:.3f})", format_percent(calibration.get("ece_after"))))
        note = (
            f"Probabilities in this report are **calibrated**: the logits are divided by the temperature "
            f"T = {t:.3f} fitted on the validation split (calibration.json)."
        )
    else:
        note = "Probabilities in this report are **not calibrated**: run `rmnet calibrate RUN` first."
    out = ["## Calibration", "", note, ""]
    out += [markdown_table(["probabilities", f"ECE ({bins} bins), %"], rows), ""]
    out += [
        "ECE: the gap between the top probability and the accuracy, averaged over equal-width bins of "
        "the top probability, weighted by their images (0 is perfectly calibrated).",
        "",
    ]
    return out + _figure(figures, "reliability", "Reliability diagram")


def _figure(figures: Mapping[str, str], key: str, caption: str) -> list[str]:
    return [f"![{caption}]({figures[key]})", ""] if key in figures else []


def retrieval_markdown(retrieval: Mapping[str, Any]) -> str:
    """mAP@k and mRR@k per query rotation and ranking (%, as in the paper's Tables 10 and 11), from
    rmnet.retrieval.evaluation.retrieval_report."""
    k = retrieval.get("k", 10)
    header = ["query rotation", "ranking", f"mAP@{k} (%)", f"mRR@{k} (%)", "mAP, full ranking (%)"]
    rows = [
        (
            f"{float(r['angle']):g}°",
            r["metric"],
            *(format_percent(r.get(key)) for key in ("map_at_k", "mrr_at_k", "map")),
        )
        for r in retrieval.get("results", [])
    ]
    caption = []
    if "database_size" in retrieval:
        caption = [
            f"Database {retrieval['database_size']} images, {retrieval['num_queries']} queries, "
            f"{retrieval['code_length']}-dimensional codes.",
            "",
        ]
    return "\n".join([*caption, markdown_table(header, rows)]) + "\n"


# Repeated runs: mean ± SD, as the paper reports.


def flatten_numbers(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a report as "section.key.sub" -> value; the rotation rows (a list, one per
    angle) as "rotation.angles.<angle_key>.metric"; other lists and matrices are left out."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten_numbers(value, f"{name}.")
        elif name == "rotation.angles":
            for row in value:
                flat |= flatten_numbers(
                    {k: v for k, v in row.items() if k != "angle"}, f"{name}.{angle_key(row['angle'])}."
                )
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


def summary_markdown(
    aggregate: Mapping[str, Mapping[str, Any]], runs: Sequence[str], angles: Sequence[float | str] = ()
) -> str:
    """The headline metrics as mean ± SD over the repeated runs (values in %); ``angles`` in table order."""

    def cell(key: str) -> str:
        stats = aggregate.get(key)
        if stats is None or stats["mean"] is None:
            return "–"
        sd = "" if stats["sd"] is None else f" ± {100 * stats['sd']:.2f}"
        return f"{100 * stats['mean']:.2f}{sd}"

    rows = [(name, cell(f"classification.{key}")) for key, name in HEADLINE]
    rotated = [a for a in angles if a == "random" or float(a) != 0]
    rows += [
        (f"accuracy, {angle_label(a)}", cell(f"rotation.angles.{angle_key(a)}.accuracy")) for a in rotated
    ]
    rows += [
        (f"predictions changed, {angle_label(a)}", cell(f"rotation.angles.{angle_key(a)}.changed"))
        for a in rotated
    ]
    lines = [f"# Summary over {len(runs)} runs (mean ± SD, %)", "", "Runs: " + ", ".join(runs), ""]
    return "\n".join([*lines, markdown_table(["metric", "mean ± SD"], rows), ""])
