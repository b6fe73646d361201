"""The paper's tables from finished runs: ``OUT/tableN.md`` in its layout, ours beside the paper's,
and ``OUT/runs.csv`` with every run (every position of every compared method included).

Ours is the mean ± sample SD over seeds of each run's test report (``rmnet evaluate``); the
paper's cell is as printed. A row with several candidates shows the one with the best mean
validation score (the metric that picked each run's best.pt), and names it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from rmnet.io import atomic_write_text
from rmnet.report import markdown_table
from rmnet.reproduce.job import REPORT, run_state
from rmnet.reproduce.paper import CLASS_COLUMNS, COLUMNS, METRIC_ROWS, MISPRINTS, NOTES, TITLES, paper_cell
from rmnet.reproduce.plan import Experiment, Plan, Row

# Our report's key for each paper column (Tables 3–7, 9–11).
SUMMARY_KEYS = {
    "AP (%)": "mean_precision",
    "Ave Sen (%)": "mean_sensitivity",
    "Ave Spec (%)": "mean_specificity",
    "Kappa (%)": "kappa",
    "mAP@10(%)": "map_at_k",
    "mRR@10(%)": "mrr_at_k",
}
AVERAGE_KEYS = {"precision": "mean_precision", "sensitivity": "mean_sensitivity",
                "specificity": "mean_specificity", "kappa": "kappa"}  # fmt: skip
CSV_METRICS = ("mean_precision", "mean_sensitivity", "mean_specificity", "kappa", "map_at_k", "mrr_at_k")


def run_dir(out: Path, experiment: Experiment, seed: int) -> Path:
    return out / "runs" / experiment.key / f"seed-{seed}"


def run_metrics(path: Path) -> dict[str, float]:
    """A finished run's numbers, flat: the classification summary, "CLASS.metric" per class, the
    retrieval mAP@10 and mRR@10 (upright queries, cosine ranking, as the paper), and "val" (its
    best validation score)."""
    values: dict[str, float] = {}
    if (path / REPORT).is_file():
        report = json.loads((path / REPORT).read_text())
        cls = report["classification"]
        values |= {key: cls[key] for key in AVERAGE_KEYS.values() if cls.get(key) is not None}
        for name, row in cls["per_class"].items():
            values |= {f"{name}.{m}": row[m] for m in METRIC_ROWS[:3] if row.get(m) is not None}
        for result in report.get("retrieval", {}).get("results", []):
            if float(result["angle"]) == 0 and result["metric"] == "cosine":
                values |= {key: result[key] for key in ("map_at_k", "mrr_at_k")}
    values |= {"val": best_validation(path)} if (path / "metrics.csv").is_file() else {}
    return {k: float(v) for k, v in values.items() if v is not None and not math.isnan(float(v))}


def best_validation(path: Path) -> float:
    """The best validation score of a run, higher is better (the loss counts negated)."""
    metric = json.loads((path / "config.json").read_text()).get("val_metric", "balanced_accuracy")
    with open(path / "metrics.csv", newline="") as handle:
        scores = [float(row[f"val_{metric}"]) for row in csv.DictReader(handle) if row.get(f"val_{metric}")]
    scores = [s for s in scores if not math.isnan(s)]
    if not scores:
        return float("nan")
    return -min(scores) if metric == "loss" else max(scores)


def mean_sd(values: Sequence[float]) -> str:
    """ "64.21 ± 0.50" in % (no SD from one run), "–" for none."""
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


class Results:
    """Every run's numbers, read once; the chosen candidate of each row."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out = plan, out
        self.metrics = {(e.key, seed): run_metrics(run_dir(out, e, seed)) for e, seed in plan.runs()}

    def values(self, key: str, metric: str) -> list[float]:
        return [m[metric] for s in self.plan.seeds if metric in (m := self.metrics[(key, s)])]

    def chosen(self, row: Row) -> str:
        """The candidate with the best mean validation score (the first one when none has run)."""
        scored = [(sum(v) / len(v), key) for key in row.candidates if (v := self.values(key, "val"))]
        return max(scored, key=lambda pair: pair[0])[1] if scored else row.candidates[0]

    def label(self, row: Row) -> str:
        label = row.label + (f" ({row.note})" if row.note else "")
        if len(row.candidates) > 1 and not any(self.values(key, "val") for key in row.candidates):
            label += f" [{len(row.candidates)} positions, none run]"
        elif len(row.candidates) > 1:
            experiment = self.plan.experiments[self.chosen(row)]
            method = (
                experiment.args[experiment.args.index("--method") + 1]
                if "--method" in experiment.args
                else ""
            )
            label += f" [{method} at {experiment.position}, best of {len(row.candidates)} by validation]"
        return label


def table_markdown(table: int, results: Results, smoke: bool = False) -> str:
    """One paper table: each of its columns as ours, then the paper's."""
    rows = [r for r in results.plan.rows if r.table == table]
    seeds = " ".join(map(str, results.plan.seeds))
    lines = [f"# Table {table}: {TITLES[table]}", ""]
    lines += [
        f"Ours: mean ± SD over seeds {seeds} of `rmnet reproduce` (test split, %); the paper: as printed."
    ]
    if smoke:
        lines += ["", "**Smoke run** (tiny images, one epoch, a few images): the numbers check the "
                  "pipeline, not the paper; rows without a number were not in the smoke grid."]  # fmt: skip
    lines += [""]
    if table == 8:
        header = ["Method", "Metric"] + [f"{c} {who}" for c in CLASS_COLUMNS for who in ("ours", "paper")]
        body = []
        for row in rows:
            key = results.chosen(row)
            for metric in METRIC_ROWS:
                cells = []
                for column in CLASS_COLUMNS:
                    if column == "Average":
                        ours = mean_sd(results.values(key, AVERAGE_KEYS[metric]))
                    else:
                        ours = (
                            "-" if metric == "kappa" else mean_sd(results.values(key, f"{column}.{metric}"))
                        )
                    paper = (
                        "-"
                        if metric == "kappa" and column != "Average"
                        else paper_cell(8, row.label, metric, column)
                    )
                    cells += [ours, paper]
                body.append([results.label(row) if metric == METRIC_ROWS[0] else "", metric, *cells])
        lines.append(markdown_table(header, body))
    else:
        header = ["Network"] + [f"{c} {who}" for c in COLUMNS[table] for who in ("ours", "paper")]
        body, group = [], None
        for row in rows:
            if row.group and row.group != group:
                body.append([f"**{row.group}**"] + [""] * (len(header) - 1))
                group = row.group
            key = results.chosen(row)
            cells = []
            for column in COLUMNS[table]:
                cells += [
                    mean_sd(results.values(key, SUMMARY_KEYS[column])),
                    paper_cell(table, row.group, row.label, column),
                ]
            body.append([results.label(row), *cells])
        lines.append(markdown_table(header, body))
    if table in NOTES:
        lines += ["", NOTES[table]]
    notes = [m for m in MISPRINTS if f"Table {table}" in m]
    if notes:
        lines += ["", "The paper's text as printed: " + " ".join(notes)]
    return "\n".join(lines) + "\n"


def runs_csv(results: Results) -> str:
    """Every run: where it is, what it is, its state and its numbers (%)."""
    rows_of: dict[str, list[str]] = {}
    for row in results.plan.rows:
        for key in row.candidates:
            rows_of.setdefault(key, []).append(
                f"Table {row.table}: {' '.join(filter(None, (row.group, row.label)))}"
            )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["experiment", "seed", "rows", "arch", "task", "position", "state", "val_score",
                     *CSV_METRICS, "run_dir", "train_args"])  # fmt: skip
    for experiment, seed in results.plan.runs():
        path = run_dir(results.out, experiment, seed)
        metrics = results.metrics[(experiment.key, seed)]
        numbers = [f"{100 * metrics[k]:.2f}" if k in metrics else "" for k in CSV_METRICS]
        writer.writerow([
            experiment.key, seed, "; ".join(rows_of.get(experiment.key, [])), experiment.arch,
            experiment.task, experiment.position, run_state(path),
            f"{metrics['val']:.4f}" if "val" in metrics else "",
            *numbers, str(path.relative_to(results.out)), " ".join(experiment.args),
        ])  # fmt: skip
    return buffer.getvalue()


def write_tables(plan: Plan, out: str | Path, smoke: bool = False) -> list[Path]:
    """Write ``tableN.md`` for each planned table and ``runs.csv``; returns the paths."""
    out = Path(out)
    results = Results(plan, out)
    paths = [atomic_write_text(out / f"table{t}.md", table_markdown(t, results, smoke)) for t in plan.tables]
    return [*paths, atomic_write_text(out / "runs.csv", runs_csv(results))]
