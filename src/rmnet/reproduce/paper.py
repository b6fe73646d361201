# ruff: noqa: E501 (the paper's rows, one line each, as printed)
"""The paper's published numbers, cell by cell, transcribed from its text (shared/seeds/).

``PAPER[table][(group, row, column)]`` is the cell as printed ("64.66±0.99"), so a table of ours
can put the paper's number beside each of its own. Transcribed as printed, misprints included
(they are listed in ``MISPRINTS``); cells the text does not give are absent.
"""

from __future__ import annotations

CLASS_COLUMNS = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "Average")
METRIC_ROWS = ("precision", "sensitivity", "specificity", "kappa")

COLUMNS: dict[int, tuple[str, ...]] = {
    3: ("AP (%)", "Ave Sen (%)", "Ave Spec (%)"),
    4: ("AP (%)", "Ave Sen (%)", "Ave Spec (%)"),
    5: ("AP (%)", "Ave Sen (%)", "Ave Spec (%)"),
    6: ("AP (%)", "Ave Sen (%)", "Ave Spec (%)"),
    7: ("AP (%)", "Ave Sen (%)", "Ave Spec (%)"),
    8: CLASS_COLUMNS,
    9: ("AP (%)", "Ave Sen (%)", "Ave Spec (%)", "Kappa (%)"),
    10: ("mAP@10(%)", "mRR@10(%)"),
    11: ("mAP@10(%)", "mRR@10(%)"),
}

TITLES = {
    3: "Ablation study on RM",
    4: "The classification results of different fusion strategy",
    5: "The classification results of different rotation intervals",
    6: "The classification results of embedding a strict RM-GAP structure in different CNNs",
    7: "The classification results compared relaxed RM-GAP structure and strict RM-GAP structure in "
    "different CNNs",
    8: "The classification results of different rotation invariance or equivariance methods (%)",
    9: "The performance of other dermoscopy image classification methods",
    10: "The retrieval performance of RM networks in different CNNs",
    11: "Comparison with other retrieval methods (ResNet18)",
}

# Rows as "group | row | cell | cell …" (group empty where the table has none).
_ROWS = {
    3: """
| baseline | 55.41±0.95 | 72.07±1.57 | 96.78±0.17
| RM-WR | 55.86±1.10 | 73.88±2.70 | 96.83±0.10
| RM-NWS | 56.31±2.23 | 74.19±1.08 | 96.99±0.08
| RM | 64.66±0.99 | 75.97±0.81 | 97.16±0.04
""",
    4: """
| Baseline | 55.41±0.95 | 72.07±1.57 | 96.78±0.17
| Embedding | 61.59±1.75 | 74.11±1.39 | 96.78±0.02
| Maxout | 62.21±1.93 | 72.67±1.79 | 96.89±0.10
| Meanout | 64.66±0.99 | 75.91±0.81 | 97.16±0.04
""",
    5: """
| Baseline | 55.41±0.95 | 72.07±1.57 | 96.78±0.17
| 90 | 64.66±0.99 | 75.97±0.81 | 97.16±0.04
| 60 | 64.47±0.41 | 73.85±0.98 | 96.87±0.12
| 45 | 64.92±0.76 | 73.97±0.58 | 96.84±0.07
""",
    6: """
ResNet18 | Baseline | 55.41±0.95 | 72.07±1.57 | 96.78±0.17
ResNet18 | 1–8 | 60.70±2.16 | 74.14±2.43 | 97.00±0.16
ResNet18 | 3–8 | 62.51±2.17 | 74.34±2.00 | 96.93±0.09
ResNet18 | 5–8 | 64.66±0.18 | 75.97±0.81 | 97.16±0.04
ResNet18 | 7–8 | 58.60±0.23 | 73.61±1.73 | 96.87±0.06
ResNet34 | Baseline | 60.28±2.33 | 72.61±1.67 | 96.90±0.03
ResNet34 | 1–16 | 63.19±2.43 | 69.98±2.15 | 96.95±0.08
ResNet34 | 4–16 | 63.49±1.96 | 73.11±2.05 | 97.07±0.15
ResNet34 | 8–16 | 67.09±0.67 | 74.32±1.12 | 97.08±0.02
ResNet34 | 12–16 | 63.60±2.30 | 75.37±2.13 | 97.10±0.06
ResNet34 | 14–16 | 62.09±0.63 | 71.29±2.87 | 97.21±0.47
GoogleNet-Inception-V3 | Baseline | 59.25±4.83 | 67.87±3.96 | 96.30±0.59
GoogleNet-Inception-V3 | A–E | 66.52±0.72 | 73.52±1.04 | 96.86±0.43
GoogleNet-Inception-V3 | B–E | 63.34±0.90 | 68.43±3.75 | 95.91±0.57
GoogleNet-Inception-V3 | C–E | 68.86±2.05 | 73.79±1.69 | 97.27±0.11
GoogleNet-Inception-V3 | D–E | 68.02±0.55 | 71.12±0.87 | 97.03±0.03
EfficientNet-b0 | Baseline | 67.22±1.12 | 76.24±0.80 | 97.51±0.03
EfficientNet-b0 | 2–9 | 68.77±1.32 | 74.24±2.99 | 97.16±0.19
EfficientNet-b0 | 4–9 | 69.09±0.98 | 75.77±2.43 | 97.34±0.11
EfficientNet-b0 | 5–9 | 69.67±0.77 | 78.15±1.02 | 97.41±0.08
EfficientNet-b0 | 6–9 | 68.73±1.45 | 77.38±0.79 | 97.52±0.01
EfficientNet-b0 | 8–9 | 67.93±0.74 | 76.89±2.38 | 97.54±0.05
""",
    7: """
ResNet18 | Baseline | 55.41±0.95 | 72.07±1.57 | 96.78±0.17
ResNet18 | Relax | 58.12±1.38 | 65.70±0.88 | 96.31±0.06
ResNet18 | Strict | 64.66±0.99 | 75.97±0.81 | 97.16±0.04
ResNet34 | Baseline | 59.61±1.55 | 71.94±0.99 | 96.90±0.03
ResNet34 | Relax | 60.18±0.13 | 73.97±0.41 | 96.96±0.04
ResNet34 | Strict | 67.09±0.67 | 74.32±1.12 | 97.08±0.02
GoogleNet-Inception-V3 | Baseline | 59.25±4.83 | 67.87±3.96 | 96.30±0.59
GoogleNet-Inception-V3 | Relax | 62.89±0.03 | 70.29±0.78 | 96.60±0.07
GoogleNet-Inception-V3 | Strict | 68.86±2.05 | 73.79±1.69 | 97.27±0.11
EfficientNet-b0 | Baseline | 67.22±1.12 | 76.24±0.80 | 97.51±0.03
EfficientNet-b0 | Relax | 69.14±0.97 | 74.99±1.15 | 97.30±0.05
EfficientNet-b0 | Strict | 69.67±0.77 | 78.15±1.02 | 97.41±0.08
""",
    9: """
| ARLNet18 | 59.53±0.36 | 73.31±0.64 | 96.90±0.02 | 71.10±0.19
| ResNet18 RM | 64.66±0.99 | 75.97±0.81 | 97.16±0.04 | 74.12±0.83
| ARLNet34 | 60.21±1.06 | 73.59±1.17 | 96.64±0.10 | 69.53±0.64
| ResNet34 RM | 67.09±0.67 | 74.32±1.12 | 97.08±0.02 | 73.39±0.35
| RegNetY800M | 64.32±1.21 | 76.84±0.25 | 97.23±0.02 | 73.60±0.06
| RegNetY800M RM | 69.53±1.31 | 77.73±0.57 | 97.26±0.16 | 75.24±0.91
| RegNetY800M MWNL | 77.82±0.78 | 77.62±0.93 | 97.35±0.04 | 77.10±0.32
| RegNetY800M MWNL RM | 79.85±1.55 | 81.62±2.39 | 97.59±0.14 | 79.33±0.76
""",
    10: """
| ResNet18 | 54.11±0.29 | 63.56±1.60
| ResNet18 RM | 60.20±2.74 | 67.82±2.48
| ResNet34 | 57.18±3.80 | 66.46±2.21
| ResNet34 RM | 59.67±4.77 | 68.16±2.68
| Inception-V3 | 59.51±0.92 | 66.74±0.52
| Inception-V3 RM | 63.36±3.46 | 70.50±3.24
| EfficientNet-b0 | 68.47±0.33 | 76.88±0.66
| EfficientNet-b0 RM | 69.84±0.47 | 77.16±0.87
""",
    # Table 11's own figures are not in our copy of the text. RM's row is Table 10's ResNet18 RM;
    # CRI's follows from "compared to the second place method CRI, mAP@10 and mRR@10 of our method
    # are improved by 1.53% and 2.67%" (read as percentage points): 60.20 − 1.53, 67.82 − 2.67.
    11: """
| CRI | 58.67 (derived) | 65.15 (derived)
| RM | 60.20±2.74 | 67.82±2.48
""",
}

# Table 8: per method, its precision, sensitivity and specificity per class (MEL … SCC), then
# the averages (precision, sensitivity, specificity, kappa). Per-class kappa is "-" in the paper.
_TABLE_8 = {
    "Baseline": """68.88±2.11 76.43±1.65 93.37±0.38 | 94.51±0.69 85.47±1.82 93.62±0.57 | 87.65±1.68 77.39±0.97 98.09±0.26 |
        29.07±2.01 53.96±1.20 97.54±0.06 | 61.58±4.99 70.42±2.53 95.63±0.52 | 14.49±2.51 53.33±5.77 99.22±0.02 |
        64±6.93 96.29±3.21 99.64±0.07 | 23.12±0.93 63.24±2.20 98.10±0.02 | 55.41±0.95 72.07±1.57 96.78±0.17 70.39±1.07""",
    "RA": """64.82±2.55 77.98±2.55 92.62±0.44 | 95.28±0.75 84.18±0.77 94.35±0.80 | 89.26±2.12 76.13±1.01 98.34±0.32 |
        29.46±3.36 58.85±3.52 97.36±0.11 | 59.03±0.79 73.57±3.59 95.37±0.06 | 18.84±6.64 75.79±9.54 99.26±0.06 |
        74.67±2.31 93.41±2.54 99.75±0.02 | 27.96±0.93 65.97±8.42 98.21±0.02 | 57.42±0.56 74.42±1.77 96.85±0.10 70.03±0.51""",
    "TI-pooling": """68.21±4.66 75.42±0.68 93.23±0.89 | 93.50±0.70 85.89±1.21 92.59±0.62 | 87.95±2.11 75.83±2.39 98.14±0.32 |
        31.78±7.01 51.97±3.51 97.63±0.23 | 62.09±1.76 73.67±4.65 95.69±0.16 | 28.99±5.02 65.51±8.25 99.31±0.10 |
        74.67±2.31 90.53±4.19 99.75±0.02 | 27.42±2.79 61.86±3.71 98.20±0.07 | 59.33±1.43 72.58±0.75 96.82±0.08 70.41±1.30""",
    "GCNN": """61.06±2.61 78.26±2.78 91.91±0.44 | 95.26±0.71 82.46±1.06 94.16±0.70 | 87.15±1.14 73.33±0.92 98.00±0.17 |
        22.48±4.08 48.55±9.46 97.32±0.13 | 56.36±1.81 69.75±1.23 95.07±0.20 | 10.15±2.51 69.45±4.81 99.18±0.02 |
        82.67±2.31 96.97±5.25 99.83±0.02 | 16.13±1.61 62.05±10.96 97.93±0.04 | 53.19±0.53 72.60±1.30 96.58±0.10 66.23±1.10""",
    "ORN": """59.81±1.79 75.61±2.91 91.63±0.32 | 95.15±0.31 81.81±0.39 93.96±0.32 | 86.34±1.52 71.82±1.50 97.87±0.23 |
        22.09±1.17 48.85±2.24 97.31±0.04 | 51.40±1.54 69.43±0.81 94.55±0.15 | 13.04±4.35 69.45±4.81 99.21±0.04 |
        62.67±2.31 96.08±6.79 99.63±0.02 | 23.12±1.86 68.51±8.35 98.10±0.05 | 51.70±1.21 72.45±2.54 96.49±0.13 65.27±1.03""",
    "STN": """65.16±2.29 75.58±1.15 92.46±0.48 | 95.16±0.38 81.64±3.33 94.01±0.17 | 86.84±2.22 75.13±2.48 97.82±0.36 |
        34.49±4.08 53.91±3.38 97.72±0.14 | 55.62±5.36 74.22±5.17 94.67±0.67 | 14.49±2.51 86.67±23.09 99.22±0.02 |
        72.67±3.06 94.73±0.28 99.72±0.04 | 23.04±3.33 66.20±10.10 98.07±0.08 | 55.93±1.31 74.13±1.77 96.71±0.16 67.65±2.27""",
    "CyCNN": """72.86±1.05 79.28±1.85 94.19±0.18 | 93.53±0.65 87.38±1.10 92.77±0.56 | 88.86±0.91 73.15±0.62 98.26±0.14 |
        29.46±1.78 47.03±4.10 97.55±0.06 | 64.12±0.66 75.35±1.20 95.93±0.07 | 13.71±1.15 60.67±1.15 99.22±0.02 |
        78.67±6.11 94.07±5.14 99.79±0.06 | 31.05±3.58 67.25±2.74 98.29±0.08 | 59.03±0.95 73.02±1.30 97.00±0.02 72.21±0.32""",
    "E4-Net": """65.42±1.59 75.46±0.58 92.43±0.18 | 94.94±1.84 82.51±0.51 92.67±0.33 | 85.87±0.90 71.55±0.96 97.60±0.10 |
        29.24±2.29 52.13±1.77 97.50±0.07 | 53,50±3.60 68.52±1.76 94.62±0.21 | 18.72±1.53 91.67±8.33 99.27±0.03 |
        69.23±7.37 94.41±0.57 99.68±0.07 | 20.15±2.11 65.26±7.39 98.00±0.08 | 54.69±1.70 75.15±0.76 96.47±0.03 69.74±3.13""",
    "RiDe": """62.98±1.57 78.18±1.64 92.27±0.27 | 95.72±0.81 82.41±0.99 93.91±0.35 | 82.23±0.79 73.99±1.18 97.27±0.12 |
        31.78±2.42 52.00±3.46 97.63±0.08 | 54.45±2.48 68.59±1.81 94.86±0.27 | 15.94±2.51 65.71±12.45 99.24±0.02 |
        56.00±6.93 79.09±4.17 99.56±0.07 | 26.88±0.93 61.85±3.39 98.19±0.02 | 53.17±0.77 70.23±1.05 96.61±0.04 66.76±0.78""",
    "RIR": """69.62±1.47 77.71±1.51 93.53±0.30 | 94.66±1.37 84.63±1.28 93.73±1.36 | 86.54±1.55 78.52±0.88 97.94±0.23 |
        39.92±2.92 53.52±4.20 97.90±0.09 | 58.91±6.46 75.31±3.95 95.37±3.95 | 20.29±5.02 58.09±1.65 99.28±0.05 |
        70.67±6.11 98.33±2.89 99.71±0.06 | 27.42±7.03 76.21±1.42 76.21±1.42 | 58.50±1.20 75.29±1.30 96.99±0.19 70.85±0.88""",
    "RM": """71.61±2.68 79.51±3.42 93.96±0.47 | 93.81±0.24 87.58±1.01 93.08±0.17 | 87.65±1.51 79.25±1.24 98.10±0.23 |
        40.70±3.07 59.72±4.16 97.94±0.10 | 69.21±5.56 74.45±3.16 96.47±0.59 | 34.78±4.35 65.28±4.32 99.40±0.04 |
        78.67±8.33 97.22±4.81 99.79±0.08 | 40.86±8.12 64.72±3.60 98.53±0.20 | 64.66±0.99 75.97±0.81 97.16±0.04 73.91±0.57""",
}

NOTES = {
    11: "Table 11's own figures are not in our copy of the paper's text: RM's row is Table 10's "
    "ResNet18 RM; CRI's is derived from the text (RM improves on CRI by 1.53 and 2.67 points); "
    "DCH, DPN and CSQ have none.",
    10: "RegNetY-800MF rows are ours (the paper's fifth CNN appears only in its Table 9).",
}

MISPRINTS = (
    "Table 6 gives ResNet18 5–8 as 64.66±0.18 AP, Table 3 the same run as 64.66±0.99.",
    "Table 7's ResNet34 baseline (59.61±1.55 AP) differs from Table 6's (60.28±2.33).",
    "Table 4's meanout Ave Sen is 75.91±0.81; every other table gives 75.97±0.81.",
    "Table 9's ResNet18 RM kappa is 74.12±0.83; Table 8's RM kappa is 73.91±0.57.",
    "Table 8: E4-Net's BKL precision is printed 53,50±3.60; RIR's SCC specificity repeats its "
    "sensitivity (76.21±1.42) and its BKL specificity SD (3.95) repeats its sensitivity SD.",
)


def _parse_rows(table: int, text: str) -> dict[tuple[str, str, str], str]:
    cells = {}
    for line in text.strip().splitlines():
        group, row, *values = (part.strip() for part in line.split("|"))
        if len(values) != len(COLUMNS[table]):
            raise AssertionError(f"Table {table} row {row!r}: {len(values)} cells for {COLUMNS[table]}")
        cells |= {(group, row, column): value for column, value in zip(COLUMNS[table], values, strict=True)}
    return cells


def _parse_table_8() -> dict[tuple[str, str, str], str]:
    cells = {}
    for method, text in _TABLE_8.items():
        per_class = [part.split() for part in text.split("|")]
        if len(per_class) != len(CLASS_COLUMNS) or len(per_class[-1]) != 4:
            raise AssertionError(f"Table 8 {method}: {[len(p) for p in per_class]} cells per column")
        for column, values in zip(CLASS_COLUMNS, per_class, strict=True):
            for metric, value in zip(METRIC_ROWS, values, strict=False):
                cells[(method, metric, column)] = value
    return cells


PAPER: dict[int, dict[tuple[str, str, str], str]] = {
    table: _parse_rows(table, text) for table, text in _ROWS.items()
} | {8: _parse_table_8()}


def paper_cell(table: int, group: str, row: str, column: str) -> str:
    """The paper's cell, or "–" where its text gives none."""
    return PAPER.get(table, {}).get((group, row, column), "–")
