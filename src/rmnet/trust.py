"""Warnings a clinician can trust: when the diagnosis is uncertain, the image unfamiliar or too small,
or the answer changes when the image is turned. One vocabulary for the API, the service and the CLI.

    RUN_DIR/calibration.json    the run's TrustProfile, fitted on its validation split:
      temperature               logits / T give calibrated probabilities (rmnet.calibration)
      min_probability, min_margin
                                the uncertainty rule: a diagnosis is "uncertain" when its calibrated
                                top probability is below min_probability or its lead over the second
                                class below min_margin. Each threshold is the lowest value at which the
                                validation images scoring at least that much are right at least
                                ``target_accuracy`` (90 %) of the time; min_probability is never below
                                50 % (a headline diagnosis is more likely right than wrong).
      energy_threshold, distance_threshold, statistics_threshold
                                out of distribution: any of three scores above its threshold: the
                                energy −log Σ exp(logits) (high: no class fits), the distance to the
                                nearest confirmed case of the training split (the index), and the
                                Mahalanobis distance of the network input's colour and texture
                                statistics (:func:`image_statistics`) from the training images'. Each
                                threshold is the 1 − (1 − quantile)/3 quantile of its score on the
                                validation images (quantile 99 %: together they flag about 1 % of them),
                                never below the largest score seen nor the normal tail (:func:`cutoff`)
      min_image_side            smaller images are enlarged to the network's input: warned

The rotation check turns the network input by the angles the model is *not* invariant to by
construction (:func:`invariant_angles` reads that off the run's config; only RM over the whole trunk
with shared weights and mean or max fusion is, and only to exact quarter turns), and reports the
angles checked and the largest change of any class probability.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from rmnet.calibration import (
    ECE_BINS,
    TEMPERATURE_RANGE,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from rmnet.io import atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from rmnet.config import TrainConfig
    from rmnet.runs import Run

CALIBRATION_FILE = "calibration.json"
WARNING_CODES = ("low_confidence", "out_of_distribution", "small_image", "rotation_sensitive")
TARGET_ACCURACY = 0.9  # the uncertainty rule: accepted validation diagnoses are right this often
PROBABILITY_FLOOR = 0.5  # never a headline diagnosis below this calibrated probability
OOD_QUANTILE = 0.99  # out of distribution: about 1 − this share of validation images is flagged
OOD_DETECTORS = 3  # energy, nearest-case distance, input statistics: each at 1 − (1 − q)/3
ROTATION_TOLERANCE = 0.2  # a class probability moving by more than this when turned is a warning
RANDOM_ANGLES = 3  # seeded angles checked besides 45° (and the quarter turns where not invariant)


@dataclass(frozen=True)
class TrustWarning:
    """One warning about a diagnosis: a code from ``WARNING_CODES`` and a sentence in plain words."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in WARNING_CODES:
            raise ValueError(f"unknown warning code {self.code!r}; the codes are {', '.join(WARNING_CODES)}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass
class TrustProfile:
    """What a run's validation split says about its own probabilities (``calibration.json``)."""

    temperature: float = 1.0
    validation_images: int = 0
    ece_before: float | None = None  # on the validation split, 15 bins
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    target_accuracy: float = TARGET_ACCURACY
    min_probability: float = PROBABILITY_FLOOR
    min_margin: float = 0.0
    uncertain_share: float | None = None  # of the validation images, under the rule
    accepted_accuracy: float | None = None  # of the validation images not uncertain
    quantile: float = OOD_QUANTILE
    energy_threshold: float | None = None
    distance_threshold: float | None = None
    distance_metric: str = "cosine"
    statistics_mean: list[float] | None = None  # of image_statistics over the training images
    statistics_precision: list[list[float]] | None = None  # inverse covariance of the same
    statistics_threshold: float | None = None
    min_image_side: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "calibration") -> TrustProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{source} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def save(self, run_dir: str | os.PathLike) -> Path:
        from rmnet.report import json_safe

        return atomic_write_text(
            Path(run_dir) / CALIBRATION_FILE, json.dumps(json_safe(self.to_dict()), indent=2) + "\n"
        )

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> TrustProfile | None:
        """The run's profile, or None when the run was never calibrated (``rmnet calibrate RUN``)."""
        path = Path(run_dir) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}): run `rmnet calibrate {run_dir}` again"
            ) from err
        return cls.from_dict(values, source=str(path))


# -- the uncertainty rule --------------------------------------------------------------------------


def top_two(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, margin to the second) of each row of (N, C) probabilities."""
    ordered = np.sort(np.asarray(probabilities, dtype=np.float64), axis=-1)
    second = ordered[..., -2] if ordered.shape[-1] > 1 else np.zeros_like(ordered[..., -1])
    return ordered[..., -1], ordered[..., -1] - second


def accuracy_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest score s such that the items scoring at least s are correct at least ``target`` of
    the time; above the highest score (everything rejected) when no s qualifies."""
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    accuracy = np.cumsum(c) / np.arange(1, len(s) + 1)
    cut = np.append(s[:-1] > s[1:], True)  # a threshold keeps all items of equal score together
    ok = np.flatnonzero((accuracy >= target) & cut)
    if len(ok) == 0:
        return float(np.nextafter(s[0], np.inf))
    return float(s[ok[-1]])


def uncertainty_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, target: float = TARGET_ACCURACY
) -> tuple[float, float]:
    """(min_probability, min_margin) of the uncertainty rule, from calibrated validation probabilities."""
    top, margin = top_two(probabilities)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(labels)
    min_probability = max(PROBABILITY_FLOOR, accuracy_threshold(top, correct, target))
    return min_probability, accuracy_threshold(margin, correct, target)


def uncertain_mask(probabilities: np.ndarray, profile: TrustProfile) -> np.ndarray:
    """True where a (calibrated) diagnosis is uncertain under the profile's rule; (N,) or a scalar."""
    top, margin = top_two(probabilities)
    return (top < profile.min_probability) | (margin < profile.min_margin)


# -- out of distribution --------------------------------------------------------------------------


def energy_score(logits: np.ndarray) -> np.ndarray:
    """−log Σ_c exp(logit_c) per row (Liu et al., 2020): high when no class fits the image."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return -(m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def nearest_distances(
    codes: np.ndarray, reference: np.ndarray, metric: str = "cosine", chunk: int = 512
) -> np.ndarray:
    """Each code's distance to its nearest reference code, as the index measures it (cosine or hamming)."""
    from rmnet.metrics.retrieval import cosine_distances, hamming_distances

    distance = {"cosine": cosine_distances, "hamming": hamming_distances}.get(metric)
    if distance is None:
        raise ValueError(f"unknown distance metric {metric!r}; choose cosine or hamming")
    codes = np.asarray(codes)
    if len(reference) == 0:
        raise ValueError("no reference codes to measure distances against")
    out = [distance(codes[i : i + chunk], reference).min(axis=1) for i in range(0, len(codes), chunk)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def image_statistics(x: torch.Tensor) -> np.ndarray:
    """(B, 9) colour and texture statistics of network inputs (B, 3, H, W): the mean, the standard
    deviation and the mean absolute difference of neighbouring pixels of each channel. A flat
    image has no spread, noise too much texture, a photograph other colours than skin."""
    x = x.detach().float()
    mean, spread = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
    texture = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(2, 3))
    texture = texture + (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(2, 3))
    return np.concatenate([mean.cpu().numpy(), spread.cpu().numpy(), texture.cpu().numpy()], 1).astype(
        np.float64
    )


def statistics_distance(
    statistics: np.ndarray, mean: Sequence[float], precision: Sequence[Sequence[float]]
) -> np.ndarray:
    """Mahalanobis distance of each row of ``statistics`` (N, 9) from the training images' Gaussian."""
    centred = np.atleast_2d(np.asarray(statistics, dtype=np.float64)) - np.asarray(mean)
    squared = np.einsum("ij,jk,ik->i", centred, np.asarray(precision), centred)
    return np.sqrt(np.maximum(squared, 0.0))


def cutoff(scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of validation ``scores``, estimated so that a small validation split does not
    undercut it: the larger of the empirical quantile taken as a score seen (rounded up, never
    interpolated into the top gap) and the normal tail, mean + z·SD. With 96 validation images the
    99.67 % quantile is beyond the largest score seen, where the empirical estimate alone flagged
    3–5 % of new in-distribution images per score (results/trust, 2026-12-04)."""
    scores = np.asarray(scores, dtype=np.float64)
    empirical = float(np.quantile(scores, quantile, method="higher"))
    if len(scores) < 2:
        return empirical
    normal = float(scores.mean() + NormalDist().inv_cdf(quantile) * scores.std(ddof=1))
    return max(empirical, normal)


def fit_profile(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    codes: np.ndarray | None = None,
    reference_codes: np.ndarray | None = None,
    statistics: np.ndarray | None = None,
    reference_statistics: np.ndarray | None = None,
    metric: str = "cosine",
    quantile: float = OOD_QUANTILE,
    target_accuracy: float = TARGET_ACCURACY,
    min_image_side: int = 0,
) -> TrustProfile:
    """A TrustProfile from validation logits and labels, and optionally their codes and input
    statistics with those of the training images (the reference)."""
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    labels = np.asarray(labels, dtype=np.int64)
    detector_quantile = 1 - (1 - quantile) / OOD_DETECTORS
    temperature = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, temperature)
    min_probability, min_margin = uncertainty_thresholds(after, labels, target_accuracy)
    profile = TrustProfile(
        temperature=temperature,
        validation_images=len(labels),
        ece_before=expected_calibration_error(before, labels, ECE_BINS),
        ece_after=expected_calibration_error(after, labels, ECE_BINS),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        target_accuracy=target_accuracy,
        min_probability=min_probability,
        min_margin=min_margin,
        quantile=quantile,
        energy_threshold=cutoff(energy_score(logits), detector_quantile),
        distance_metric=metric,
        min_image_side=min_image_side,
    )
    uncertain = uncertain_mask(after, profile)
    profile.uncertain_share = float(uncertain.mean())
    accepted = ~uncertain
    if accepted.any():
        profile.accepted_accuracy = float((after.argmax(1) == labels)[accepted].mean())
    if codes is not None and reference_codes is not None and len(reference_codes):
        distances = nearest_distances(codes, reference_codes, metric)
        profile.distance_threshold = cutoff(distances, detector_quantile)
    if statistics is not None and reference_statistics is not None and len(reference_statistics) > 1:
        reference_statistics = np.asarray(reference_statistics, dtype=np.float64)
        covariance = np.cov(reference_statistics, rowvar=False)
        covariance += 1e-6 * np.eye(len(covariance)) * max(1.0, float(np.trace(covariance)))
        profile.statistics_mean = reference_statistics.mean(0).tolist()
        profile.statistics_precision = np.linalg.inv(covariance).tolist()
        distances = statistics_distance(statistics, profile.statistics_mean, profile.statistics_precision)
        profile.statistics_threshold = cutoff(distances, detector_quantile)
    fitted = profile.nll_after + 1e-12
    if any(negative_log_likelihood(logits, labels, end) <= fitted for end in TEMPERATURE_RANGE):
        profile.notes.append(
            f"the temperature {temperature:.3g} is at the end of its range {TEMPERATURE_RANGE}: the "
            "validation split cannot pin it down (too few images, or every one right)"
        )
    if len(labels) < 50:
        profile.notes.append(
            f"only {len(labels)} validation images: the temperature and thresholds are rough estimates"
        )
    return profile


def calibrate_model(
    model,
    validation: Dataset,
    reference: Dataset,
    *,
    min_image_side: int,
    quantile: float = OOD_QUANTILE,
    target_accuracy: float = TARGET_ACCURACY,
    metric: str = "cosine",
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> TrustProfile:
    """Fit a TrustProfile of ``model`` on ``validation`` (eval transform), with ``reference`` (the
    training images, eval transform) as the confirmed cases: one pass over each."""
    from rmnet.inference import infer

    options = dict(batch_size=batch_size, device=device, workers=workers, progress=progress)
    statistics: dict[str, list[np.ndarray]] = {"val": [], "train": []}

    def recording(part: str):  # the upright view, recording the inputs' statistics on the way
        def view(images, start):
            statistics[part].append(image_statistics(images))
            return images

        return {0: view}

    labels, outputs = infer(model, validation, recording("val"), desc="calibrating (validation)", **options)
    _, reference_outputs = infer(
        model, reference, recording("train"), desc="calibrating (reference)", **options
    )
    return fit_profile(
        outputs[0].logits,
        labels,
        codes=outputs[0].codes,
        reference_codes=reference_outputs[0].codes,
        statistics=np.concatenate(statistics["val"]),
        reference_statistics=np.concatenate(statistics["train"]),
        metric=metric,
        quantile=quantile,
        target_accuracy=target_accuracy,
        min_image_side=min_image_side,
    )


def calibrate_run(
    run: str | os.PathLike | Run,
    *,
    quantile: float = OOD_QUANTILE,
    target_accuracy: float = TARGET_ACCURACY,
    metric: str = "cosine",
    batch_size: int = 64,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> TrustProfile:
    """Fit a run's TrustProfile on its validation split (the training split as the reference cases)
    and write it to RUN_DIR/calibration.json."""
    from rmnet.runs import Run

    run = run if isinstance(run, Run) else Run(run)
    profile = calibrate_model(
        run.load_model(),
        run.dataset("val"),
        run.dataset("train", train=False),
        min_image_side=run.config.input_size(),
        quantile=quantile,
        target_accuracy=target_accuracy,
        metric=metric,
        batch_size=batch_size,
        device=device,
        workers=workers,
        progress=progress,
    )
    profile.save(run.dir)
    return profile


# -- rotation -------------------------------------------------------------------------------------


def invariant_angles(config: TrainConfig) -> tuple[float, ...]:
    """The rotations of the network input the model is invariant to by construction: the exact
    quarter turns in RM's group when RM covers the whole trunk with shared weights and mean or max
    fusion (a rotation then only permutes RM's copies); none otherwise."""
    from rmnet.models import model_entry
    from rmnet.models.rmnet import parse_rm_spec

    if config.rm in (None, "none") or not config.rotate or not config.share_weights:
        return ()
    if config.fusion not in ("mean", "max"):
        return ()  # an embedding (1×1 conv) fusion weighs the copies differently
    preset = model_entry(config.arch).preset
    if preset is None:
        return ()
    regions = parse_rm_spec(config.rm, preset)
    if regions != [(0, len(preset.stem) + len(preset.blocks) - 1)]:
        return ()  # some layers run outside RM: not invariant by construction
    step = 360.0 / config.k
    return tuple(float(a) for a in (90, 180, 270) if math.isclose(a / step, round(a / step), abs_tol=1e-9))


def rotation_check_angles(
    config: TrainConfig, random_angles: int = RANDOM_ANGLES, seed: int = 0
) -> list[float]:
    """The angles to check: the quarter turns the model is not invariant to by construction, 45° and
    ``random_angles`` seeded angles (never multiples of 90°), counterclockwise, in degrees."""
    invariant = invariant_angles(config)
    angles = [a for a in (90.0, 180.0, 270.0) if a not in invariant] + [45.0]
    rng = np.random.default_rng(seed)
    while len(angles) < 4 - len(invariant) + random_angles:
        angle = round(float(rng.uniform(1.0, 359.0)), 1)
        if angle % 90 and angle not in angles:
            angles.append(angle)
    return sorted(angles)


@dataclass(frozen=True)
class RotationCheck:
    """How the diagnosis moved when the image was turned by each checked angle."""

    angles: list[float]  # checked, degrees counterclockwise
    largest_change: float  # of any class probability, against the upright image
    largest_change_angle: float | None
    changed_at: list[float]  # angles where the top class differs from the upright one
    invariant_by_construction: list[float]  # not checked: the model cannot change there
    turns: list[dict[str, Any]]  # per angle: angle, prediction, probability

    @property
    def sensitive(self) -> bool:
        return bool(self.changed_at) or self.largest_change > ROTATION_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"sensitive": self.sensitive, "tolerance": ROTATION_TOLERANCE}


def rotation_check(
    upright: np.ndarray,
    rotated: Mapping[float, np.ndarray],
    class_names: Sequence[str],
    invariant: Sequence[float] = (),
) -> RotationCheck:
    """Compare the (calibrated) probabilities at each angle with the upright ones."""
    upright = np.asarray(upright, dtype=np.float64)
    best = int(upright.argmax())
    changes = {float(a): float(np.abs(np.asarray(p) - upright).max()) for a, p in rotated.items()}
    worst = max(changes, key=changes.get) if changes else None
    turns = [
        {"angle": float(a), "prediction": class_names[int(np.argmax(p))], "probability": float(np.max(p))}
        for a, p in rotated.items()
    ]
    return RotationCheck(
        angles=[float(a) for a in rotated],
        largest_change=changes[worst] if worst is not None else 0.0,
        largest_change_angle=worst,
        changed_at=[float(a) for a, p in rotated.items() if int(np.argmax(p)) != best],
        invariant_by_construction=[float(a) for a in invariant],
        turns=turns,
    )


def rotated_batch(x: torch.Tensor, angles: Sequence[float]) -> torch.Tensor:
    """The network input ``x`` (C, H, W) turned by each angle (rmnet.groups.rotate), as one batch."""
    import torch

    from rmnet.groups import rotate

    return torch.stack([rotate(x, float(a)) for a in angles])


def check_rotations(
    probabilities_of: Callable[[torch.Tensor], np.ndarray],
    x: torch.Tensor,
    config: TrainConfig,
    class_names: Sequence[str],
    upright: np.ndarray | None = None,
) -> RotationCheck:
    """Run the model (``probabilities_of``: a batch → calibrated probabilities) on ``x`` turned by
    :func:`rotation_check_angles` and compare with the upright probabilities."""
    angles = rotation_check_angles(config)
    batch = rotated_batch(x, [0.0, *angles] if upright is None else angles)
    probabilities = np.asarray(probabilities_of(batch))
    if upright is None:
        upright, probabilities = probabilities[0], probabilities[1:]
    return rotation_check(
        upright, dict(zip(angles, probabilities, strict=True)), class_names, invariant_angles(config)
    )


# -- the warnings ---------------------------------------------------------------------------------


def _pct(p: float) -> str:
    return f"{100 * p:.1f} %"


def assess(
    probabilities: np.ndarray,
    class_names: Sequence[str],
    profile: TrustProfile,
    *,
    logits: np.ndarray | None = None,
    nearest_distance: float | None = None,
    statistics: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
    rotation: RotationCheck | None = None,
) -> tuple[bool, list[TrustWarning]]:
    """(uncertain, warnings) for one image's calibrated ``probabilities`` (C,); each check runs when
    its input is given and the profile has its threshold."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    warnings: list[TrustWarning] = []
    order = np.argsort(-probabilities, kind="stable")
    top, margin = top_two(probabilities)
    uncertain = bool(uncertain_mask(probabilities, profile))
    if uncertain:
        first = class_names[order[0]]
        second = f" and {class_names[order[1]]} ({_pct(probabilities[order[1]])})" if len(order) > 1 else ""
        warnings.append(
            TrustWarning(
                "low_confidence",
                f"The model is not sure: the most likely diagnoses are {first} ({_pct(top)}){second}. "
                f"On the validation images, diagnoses below {_pct(profile.min_probability)} or less than "
                f"{100 * profile.min_margin:.1f} points ahead of the second were right less than "
                f"{_pct(profile.target_accuracy)} of the time.",
            )
        )
    unfamiliar = []
    if logits is not None and profile.energy_threshold is not None:
        if float(energy_score(logits)) > profile.energy_threshold:
            unfamiliar.append("no diagnosis fits it as well as it fits the validation images")
    if nearest_distance is not None and profile.distance_threshold is not None:
        if nearest_distance > profile.distance_threshold:
            unfamiliar.append(
                f"its nearest confirmed case is farther away ({nearest_distance:.4g}) than that of "
                f"nearly all validation images ({profile.distance_threshold:.4g})"
            )
    if statistics is not None and profile.statistics_threshold is not None:
        distance = float(
            statistics_distance(statistics, profile.statistics_mean, profile.statistics_precision)[0]
        )
        if distance > profile.statistics_threshold:
            unfamiliar.append("its colours and texture are unlike those of the training images")
    if unfamiliar:
        warnings.append(
            TrustWarning(
                "out_of_distribution",
                "This image is unlike the images the model was trained on: "
                + "; ".join(unfamiliar)
                + ". The diagnosis and the similar cases may mean nothing.",
            )
        )
    if image_size is not None and profile.min_image_side and min(image_size) < profile.min_image_side:
        width, height = image_size
        warnings.append(
            TrustWarning(
                "small_image",
                f"The image is only {width}×{height} px, smaller than the {profile.min_image_side} px the "
                "model looks at: it was enlarged, and details the model relies on are missing.",
            )
        )
    if rotation is not None and rotation.sensitive:
        where = ", ".join(f"{a:g}°" for a in rotation.changed_at) or f"{rotation.largest_change_angle:g}°"
        warnings.append(
            TrustWarning(
                "rotation_sensitive",
                f"The diagnosis is not stable when the image is turned (at {where}): a probability moved "
                f"by up to {100 * rotation.largest_change:.1f} points. Treat it with caution.",
            )
        )
    return uncertain, warnings
