"""How far rmnet's probabilities and warnings can be trusted, on the demo's models and held-out lesions.

    .venv/bin/python -m benchmarks.trust [--keep DIR] [--per-class N]

Trains the demo (`rmnet demo`: a plain CNN, the same CNN with RM over its whole trunk, and the RM
model with a 16-bit hash layer that the service serves); training ends by calibrating each run on
its validation split (calibration.json). Then, on the demo's test split and on N fresh lesions per
class that no run has seen (rmnet.data's generator with another seed):

- calibration: ECE (15 bins) before and after the temperature, NLL, accuracy, the share the
  uncertainty rule calls uncertain and the accuracy of the rest;
- out of distribution: the energy score, the distance to the nearest training case (the index's
  cosine distance), the colour and texture statistics of the input, and any of the three (what the
  service warns about; thresholds from the validation split, rmnet.trust), as AUROC of
  in-distribution lesions against flat colours, noise and natural photographs (scikit-learn's sample
  images and crops of them), the false-alarm rate on the lesions and the share of each kind of
  stranger flagged.

Writes results/trust/: calibration.md/.csv, ood.md/.csv, reliability.png.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from sklearn.metrics import roc_auc_score

from benchmarks import command_line, machine_description, save_table
from rmnet import plots
from rmnet.calibration import expected_calibration_error, negative_log_likelihood, reliability_bins, softmax
from rmnet.data import ImageDataset, build_transform, load_image_table, make_lesion_dataset
from rmnet.demo import FULL, run_demo
from rmnet.inference import infer
from rmnet.runs import Run
from rmnet.trust import (
    TrustProfile,
    energy_score,
    image_statistics,
    nearest_distances,
    statistics_distance,
    uncertain_mask,
)

OUT = Path("results/trust")
RUNS = {"plain": "plain CNN", "rm": "RM (whole trunk)", "hash": "RM + 16-bit hash (served)"}


def strangers(size: int, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Images that are not skin lesions: flat colours, noise, natural photographs and crops of them."""
    rng = np.random.default_rng(seed)
    colours = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 150, 120), (90, 60, 40)]
    colours += [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(5)]
    flat = [Image.new("RGB", (size, size), c) for c in colours]
    noise = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(10)]
    noise += [
        Image.fromarray(np.clip(rng.normal(128, 40, (size, size, 3)), 0, 255).astype(np.uint8))
        for _ in range(10)
    ]
    photos = []
    for array in load_sample_images().images:
        photos.append(Image.fromarray(array))
        h, w = array.shape[:2]
        for _ in range(20):
            side = int(rng.integers(48, min(h, w)))
            top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            photos.append(Image.fromarray(array[top : top + side, left : left + side]))
    return {"flat colour": flat, "noise": noise, "photograph": photos}


def outputs(model, dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, logits, codes, input statistics) of a dataset, in one pass."""
    statistics = []

    def upright(images, start):
        statistics.append(image_statistics(images))
        return images

    labels, out = infer(model, dataset, {0: upright}, batch_size=128, device="cpu")
    return labels, out[0].logits, out[0].codes, np.concatenate(statistics)


def image_outputs(model, images: list[Image.Image], transform) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = torch.stack([transform(im) for im in images])
    with torch.inference_mode():
        codes, logits = model.eval().forward_codes(x)
    return logits.float().numpy(), codes.float().numpy(), image_statistics(x)


def calibration_row(label: str, part: str, profile: TrustProfile, labels, logits) -> dict:
    before, after = softmax(logits), softmax(logits, profile.temperature)
    uncertain = uncertain_mask(after, profile)
    correct = after.argmax(1) == labels
    return {
        "model": label,
        "images": part,
        "n": len(labels),
        "temperature": profile.temperature,
        "ECE before (%)": 100 * expected_calibration_error(before, labels),
        "ECE after (%)": 100 * expected_calibration_error(after, labels),
        "NLL before": negative_log_likelihood(logits, labels),
        "NLL after": negative_log_likelihood(logits, labels, profile.temperature),
        "accuracy (%)": 100 * correct.mean(),
        "uncertain (%)": 100 * uncertain.mean(),
        "accuracy when not uncertain (%)": 100 * correct[~uncertain].mean()
        if (~uncertain).any()
        else float("nan"),
    }


def detector_scores(
    logits: np.ndarray,
    codes: np.ndarray,
    statistics: np.ndarray,
    reference: np.ndarray,
    profile: TrustProfile,
    validation: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Each detector's score, scaled so that its threshold is 1 and the validation median 0 (an
    image is flagged above 1), and "any": the largest of them, flagged exactly when the service
    flags the image."""
    raw = {
        "energy": energy_score(logits),
        "distance": nearest_distances(codes, reference, profile.distance_metric),
        "statistics": statistics_distance(statistics, profile.statistics_mean, profile.statistics_precision),
    }
    thresholds = {
        "energy": profile.energy_threshold,
        "distance": profile.distance_threshold,
        "statistics": profile.statistics_threshold,
    }
    scaled = {}
    for name, score in raw.items():
        median = float(np.median(validation[name]))
        scaled[name] = (score - median) / (thresholds[name] - median)
    scaled["any"] = np.maximum.reduce(list(scaled.values()))
    return scaled


DETECTORS = {
    "energy": "energy score",
    "distance": "nearest-case distance",
    "statistics": "colour and texture statistics",
    "any": "any of the three (as served)",
}


def measure_run(run: Run, label: str, fresh_dir: Path, others: dict[str, list[Image.Image]]):
    """Calibration rows, out-of-distribution rows and reliability bins (fresh lesions) of one run."""
    profile = TrustProfile.load(run.dir)
    model, config = run.load_model(), run.config
    transform = build_transform(False, config.input_size(), resize=config.resize_short_edge())
    fresh_table = load_image_table(fresh_dir)
    fresh = ImageDataset(fresh_table, list(range(len(fresh_table))), transform)
    _, _, reference, _ = outputs(model, run.dataset("train"))
    _, val_logits, val_codes, val_statistics = outputs(model, run.dataset("val"))
    validation = {
        "energy": energy_score(val_logits),
        "distance": nearest_distances(val_codes, reference, profile.distance_metric),
        "statistics": statistics_distance(
            val_statistics, profile.statistics_mean, profile.statistics_precision
        ),
    }
    calibration_rows, inside = [], []
    for part, dataset in (("demo test split", run.dataset("test")), ("fresh lesions", fresh)):
        labels, logits, codes, statistics = outputs(model, dataset)
        calibration_rows.append(calibration_row(label, part, profile, labels, logits))
        inside.append((logits, codes, statistics))
    curves = {
        "uncalibrated": reliability_bins(softmax(logits), labels).to_dict(),
        f"calibrated (T = {profile.temperature:.2f})": reliability_bins(
            softmax(logits, profile.temperature), labels
        ).to_dict(),
    }
    lesions = detector_scores(*(np.concatenate(parts) for parts in zip(*inside, strict=True)),
                              reference, profile, validation)  # fmt: skip
    groups = {
        kind: detector_scores(*image_outputs(model, images, transform), reference, profile, validation)
        for kind, images in others.items()
    }
    ood_rows = []
    for detector, name in DETECTORS.items():
        strangers_scores = np.concatenate([scores[detector] for scores in groups.values()])
        y = np.r_[np.zeros(len(lesions[detector])), np.ones(len(strangers_scores))]
        row = {
            "model": label,
            "detector": name,
            "AUROC (%)": 100 * roc_auc_score(y, np.r_[lesions[detector], strangers_scores]),
            "false alarms on lesions (%)": 100 * np.mean(lesions[detector] > 1),
        }
        row |= {f"{kind} flagged (%)": 100 * np.mean(scores[detector] > 1) for kind, scores in groups.items()}
        ood_rows.append(row)
    return calibration_rows, ood_rows, curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="train the demo here and keep it (default: a temporary one)"
    )
    parser.add_argument("--per-class", type=int, default=100, help="fresh held-out lesions per class")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="rmnet-trust-"))
    others = strangers(96)
    try:
        run_demo(folder, progress=False)
        fresh_dir = make_lesion_dataset(
            folder / "fresh",
            n_per_class=args.per_class,
            size=FULL.image_px,
            seed=1,
            num_classes=FULL.num_classes,
        )
        calibration_rows, ood_rows = [], []
        for name, label in RUNS.items():
            rows, more, curves = measure_run(Run(folder / name), label, fresh_dir, others)
            calibration_rows += rows
            ood_rows += more
            if name == "hash":
                served_curves = curves
        seconds = time.perf_counter() - started
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    command = command_line("benchmarks.trust", argv)
    sizes = ", ".join(f"{len(v)} {k}s" for k, v in others.items())
    save_table(
        pd.DataFrame(calibration_rows),
        OUT,
        "calibration",
        f"`{command}` ({machine_description()}; {seconds:.0f} s in all, demo training included). "
        "Each run's temperature and uncertainty rule come from its validation split (calibration.json, "
        "fitted at the end of training); measured on the demo's test split and on "
        f"{args.per_class} fresh lesions per class (seed 1). ECE: 15 equal-width bins of the top "
        "probability.",
        floatfmt=".3f",
    )
    save_table(
        pd.DataFrame(ood_rows),
        OUT,
        "ood",
        f"`{command}` ({machine_description()}). Out of distribution: in-distribution = the demo's test "
        f"split and the fresh lesions; strangers: {sizes} (scikit-learn's two sample images and 20 random "
        "crops of each). Thresholds: each score's 99.67 % quantile on the validation split (1 − 1 %/3); "
        "'any' flags an image when one of the three passes (what the service does).",
        floatfmt=".1f",
    )
    plots.plot_reliability(served_curves, OUT / "reliability.png")
    print((OUT / "calibration.md").read_text())
    print((OUT / "ood.md").read_text())


if __name__ == "__main__":
    main()
