"""Warnings a clinician can trust: the uncertainty rule, out-of-distribution scores, small images, the
honest rotation check, one vocabulary, and calibration at the end of training."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from rmnet.calibration import softmax
from rmnet.config import TrainConfig, build_model
from rmnet.data import build_transform, make_lesion_dataset
from rmnet.equivariance import check_invariance
from rmnet.groups import make_group, rotate
from rmnet.inference import infer
from rmnet.runs import Run
from rmnet.train import train
from rmnet.trust import (
    CALIBRATION_FILE,
    WARNING_CODES,
    TrustProfile,
    TrustWarning,
    accuracy_threshold,
    assess,
    check_rotations,
    energy_score,
    fit_profile,
    invariant_angles,
    nearest_distances,
    rotation_check_angles,
    uncertain_mask,
    uncertainty_thresholds,
)

# -- one vocabulary --------------------------------------------------------------------------------


def test_warning_codes_are_the_four_of_the_contract():
    assert WARNING_CODES == ("low_confidence", "out_of_distribution", "small_image", "rotation_sensitive")
    assert TrustWarning("small_image", "too small").to_dict() == {
        "code": "small_image",
        "message": "too small",
    }
    with pytest.raises(ValueError, match="unknown warning code 'shaky'"):
        TrustWarning("shaky", "?")


# -- the uncertainty rule --------------------------------------------------------------------------


def test_accuracy_threshold_pinned_by_hand():
    scores = np.array([0.5, 0.9, 0.7, 0.8, 0.6])
    correct = np.array([0, 1, 0, 1, 1])  # by descending score: 1, 1, 0, 1, 0 → accuracy 1, 1, .67, .75, .6
    assert accuracy_threshold(scores, correct, 0.75) == 0.6
    assert accuracy_threshold(scores, correct, 0.9) == 0.8
    # a threshold never splits equal scores: 0.8 twice, one of them wrong
    assert accuracy_threshold(np.array([0.9, 0.8, 0.8, 0.5]), np.array([1, 1, 0, 1]), 0.9) == 0.9
    # nothing qualifies: above the highest score, so every item is rejected
    assert accuracy_threshold(np.array([0.7, 0.6]), np.array([0, 0]), 0.9) > 0.7


def test_uncertainty_thresholds_never_headline_below_one_half():
    probabilities = np.array([[0.4, 0.35, 0.25]] * 10)
    labels = np.zeros(10, dtype=int)  # always right, yet 40 % is not a headline
    min_probability, min_margin = uncertainty_thresholds(probabilities, labels)
    assert min_probability == 0.5 and min_margin == pytest.approx(0.05)


def test_a_low_top_probability_of_an_eight_class_model_is_uncertain_with_its_top_classes():
    names = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    profile = TrustProfile(min_probability=0.55, min_margin=0.2, target_accuracy=0.9)
    p = np.array([0.13, 0.12, 0.159, 0.12, 0.12, 0.12, 0.121, 0.11])
    uncertain, warnings = assess(p, names, profile)
    assert uncertain and [w.code for w in warnings] == ["low_confidence"]
    assert "BCC (15.9 %)" in warnings[0].message and "MEL (13.0 %)" in warnings[0].message
    confident = np.array([0.97, 0.01, 0.01, 0.004, 0.002, 0.002, 0.001, 0.001])
    assert assess(confident, names, profile) == (False, [])
    # a high top probability with a small lead over the second is uncertain too
    assert bool(uncertain_mask(np.array([0.56, 0.44]), profile))


def test_fit_profile_notes_a_temperature_the_validation_split_cannot_pin_down():
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [3.0, 1.0]])  # every one right: sharper is always better
    profile = fit_profile(logits, np.array([0, 1, 0]))
    assert profile.temperature < 0.1
    assert any("end of its range" in note for note in profile.notes)
    assert any("only 3 validation images" in note for note in profile.notes)
    labels = np.array([0, 1, 1])  # one wrong: a finite temperature fits, and no note says otherwise
    assert not any("end of its range" in note for note in fit_profile(logits, labels).notes)


# -- out of distribution ---------------------------------------------------------------------------


def test_energy_score_and_nearest_distance_pinned():
    assert energy_score(np.array([[0.0, 0.0]]))[0] == pytest.approx(-math.log(2))
    assert energy_score(np.array([[10.0, 0.0]]))[0] < energy_score(np.array([[1.0, 0.0]]))[0]
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    queries = np.array([[2.0, 0.0], [1.0, 1.0]])
    assert nearest_distances(queries, reference) == pytest.approx([0.0, 1 - 1 / math.sqrt(2)], abs=1e-5)
    with pytest.raises(ValueError, match="unknown distance metric"):
        nearest_distances(queries, reference, metric="manhattan")


def test_small_images_and_unfamiliar_scores_are_warned():
    profile = TrustProfile(
        min_probability=0.5, energy_threshold=-2.0, distance_threshold=0.1, min_image_side=28
    )
    p = np.array([0.9, 0.1])
    _, warnings = assess(
        p, ["a", "b"], profile, logits=np.array([1.0, -1.0]), nearest_distance=0.05, image_size=(1, 1)
    )
    assert [w.code for w in warnings] == ["out_of_distribution", "small_image"]  # energy −1.13 > −2
    assert "1×1 px" in warnings[1].message and "28 px" in warnings[1].message
    _, warnings = assess(
        p, ["a", "b"], profile, logits=np.array([9.0, -1.0]), nearest_distance=0.5, image_size=(64, 64)
    )
    assert [w.code for w in warnings] == ["out_of_distribution"] and "nearest confirmed case" in warnings[
        0
    ].message
    assert assess(p, ["a", "b"], profile, logits=np.array([9.0, -1.0]), nearest_distance=0.05)[1] == []


# -- the rotation check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ()),
        ({"rm": "all"}, (90.0, 180.0, 270.0)),
        ({"rm": "all", "k": 8}, (90.0, 180.0, 270.0)),
        ({"rm": "all", "k": 6}, (180.0,)),
        ({"rm": "all", "fusion": "embedding"}, ()),
        ({"rm": "all", "share_weights": False}, ()),
        ({"rm": "all", "rotate": False}, ()),
        ({"rm": "3-4"}, ()),
    ],
)
def test_invariant_angles_are_only_those_the_model_has_by_construction(options, expected):
    config = TrainConfig(arch="small_cnn", model_options={"width": 4}, **options)
    assert invariant_angles(config) == expected
    torch.manual_seed(0)
    model = build_model(config, 3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for p in model.parameters():  # as after training: RM-NWS copies and a 1×1 fusion start symmetric
            p.add_(0.2 * torch.randn_like(p))
        upright = model(x)
        for angle in (90.0, 180.0, 270.0):
            error = float((model(rotate(x, angle)) - upright).abs().max() / upright.abs().max())
            assert (error < 1e-4) == (angle in expected), (angle, error)


def test_invariant_angles_of_a_partial_rm_resnet_are_none():
    assert invariant_angles(TrainConfig(arch="resnet18", rm="5-8")) == ()
    check_invariance(
        build_model(TrainConfig(arch="small_cnn", rm="all", model_options={"width": 4}), 2).eval(),
        make_group(4),
        torch.randn(1, 3, 16, 16),
    )


def test_rotation_check_angles_skip_only_the_turns_invariant_by_construction():
    rm_all = rotation_check_angles(TrainConfig(arch="small_cnn", rm="all"))
    assert 45.0 in rm_all and not {90.0, 180.0, 270.0} & set(rm_all) and len(rm_all) == 4
    plain = rotation_check_angles(TrainConfig(arch="small_cnn"))
    assert {45.0, 90.0, 180.0, 270.0} <= set(plain) and len(plain) == 7
    assert rotation_check_angles(TrainConfig(arch="small_cnn")) == plain  # seeded


def top_versus_bottom(batch: torch.Tensor) -> np.ndarray:
    """Class 0 when the top half is brighter than the bottom half: turning the image flips it."""
    half = batch.shape[-2] // 2
    score = 20 * (batch[..., :half, :].mean(dim=(1, 2, 3)) - batch[..., half:, :].mean(dim=(1, 2, 3)))
    return softmax(torch.stack([score, -score], dim=1).numpy())


def test_rotation_check_flags_a_plain_model_that_changes_with_quarter_turns():
    x = torch.zeros(3, 16, 16)
    x[:, :8] = 1.0  # bright top half
    config = TrainConfig(arch="small_cnn")
    check = check_rotations(top_versus_bottom, x, config, ["top", "bottom"])
    assert check.angles == rotation_check_angles(config) and check.invariant_by_construction == []
    assert 180.0 in check.changed_at and check.sensitive and check.largest_change > 0.9
    _, warnings = assess(np.array([0.99, 0.01]), ["top", "bottom"], TrustProfile(), rotation=check)
    assert [w.code for w in warnings] == ["rotation_sensitive"] and "180°" in warnings[0].message
    stable = check_rotations(lambda b: np.tile([0.9, 0.1], (len(b), 1)), x, config, ["top", "bottom"])
    assert not stable.sensitive and stable.largest_change == 0.0


def test_rotation_check_of_an_rm_model_names_what_it_did_not_check():
    config = TrainConfig(arch="small_cnn", rm="all", model_options={"width": 4})
    torch.manual_seed(0)
    model = build_model(config, 2).eval()

    def probabilities(batch):
        with torch.no_grad():
            return softmax(model(batch).numpy())

    check = check_rotations(probabilities, torch.randn(3, 16, 16), config, ["a", "b"])
    assert check.invariant_by_construction == [90.0, 180.0, 270.0]
    assert 45.0 in check.angles and 90.0 not in check.angles
    assert check.to_dict()["sensitive"] == check.sensitive and len(check.turns) == len(check.angles)


# -- calibration at the end of training, and the detectors on a trained model ----------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small RM CNN with a hash layer, trained for 4 epochs on 240 generated lesions (3 classes)."""
    root = tmp_path_factory.mktemp("trust")
    data = make_lesion_dataset(root / "data", n_per_class=80, size=20, num_classes=3)
    config = TrainConfig(
        arch="small_cnn",
        rm="all",
        model_options={"width": 8},
        hash_bits=16,
        data=str(data),
        image_size=16,
        resize=20,
        epochs=4,
        batch_size=16,
        lr=0.02,
        workers=0,
        device="cpu",
    )
    train(config, root / "run", progress=False)
    return Run(root / "run")


def test_training_ends_with_a_calibration_of_the_run(trained_run):
    saved = json.loads((trained_run.dir / CALIBRATION_FILE).read_text())
    profile = TrustProfile.load(trained_run.dir)
    assert profile.validation_images == len(trained_run.split.val) == saved["validation_images"]
    assert profile.temperature > 0 and profile.temperature != 1.0
    assert profile.nll_after <= profile.nll_before + 1e-9
    assert profile.min_image_side == 16 and profile.min_probability >= 0.5
    assert profile.energy_threshold is not None and profile.distance_threshold is not None


def test_out_of_distribution_flags_flat_noise_and_photos_but_few_lesions(trained_run):
    profile = TrustProfile.load(trained_run.dir)
    model = trained_run.load_model()
    _, reference = infer(model, trained_run.dataset("train"))
    rng = np.random.default_rng(0)
    images = [
        Image.new("RGB", (64, 64)),
        Image.new("RGB", (64, 64), (128, 128, 128)),
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        *(Image.fromarray(photo) for photo in load_sample_images().images),
    ]
    transform = build_transform(False, 16, resize=20)
    with torch.no_grad():
        codes, logits = model.forward_codes(torch.stack([transform(im) for im in images]))
    distances = nearest_distances(codes.numpy(), reference[0].codes)
    for name, lg, d in zip(
        ["black", "grey", "noise", "photo 1", "photo 2"], logits.numpy(), distances, strict=True
    ):
        _, warnings = assess(
            softmax(lg[None], profile.temperature)[0],
            ["a", "b", "c"],
            profile,
            logits=lg,
            nearest_distance=float(d),
        )
        assert "out_of_distribution" in [w.code for w in warnings], name
    _, test = infer(model, trained_run.dataset("test"))
    flagged = (energy_score(test[0].logits) > profile.energy_threshold) | (
        nearest_distances(test[0].codes, reference[0].codes) > profile.distance_threshold
    )
    assert flagged.mean() <= 0.1, flagged.mean()


def test_calibrate_command_writes_the_profile_and_evaluate_reports_calibrated_ece(trained_run, tmp_path):
    (trained_run.dir / CALIBRATION_FILE).unlink()
    result = subprocess.run(
        [sys.executable, "-m", "rmnet", "calibrate", str(trained_run.dir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "temperature" in result.stdout and (trained_run.dir / CALIBRATION_FILE).is_file()
    from rmnet.evaluate import evaluate_run

    report = evaluate_run(trained_run.dir, device="cpu", workers=0, tsne=False, progress=False, angles=[90.0])
    calibration = report["calibration"]
    assert calibration["calibrated"] and calibration["temperature"] == pytest.approx(
        TrustProfile.load(trained_run.dir).temperature
    )
    assert 0 <= calibration["ece_after"] <= 1 and 0 <= calibration["ece_before"] <= 1
    markdown = (trained_run.report_dir / "report.md").read_text()
    assert "**calibrated**" in markdown and "ECE (15 bins)" in markdown and "reliability.png" in markdown
    assert (trained_run.report_dir / "reliability.png").stat().st_size > 1000


def test_calibrate_command_refuses_a_missing_run_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rmnet", "calibrate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 1 and result.stderr.count("\n") == 1 and "run folder not found" in result.stderr
    )


def test_out_of_distribution_cutoffs_never_undercut_a_small_validation_split():
    from rmnet.trust import cutoff

    # 96 scores 1 … 96: the normal tail (mean 48.5 + 2.7131 × SD 27.8568 = 124.08) is beyond the
    # largest score seen; the interpolated quantile (95.68) would flag more new images.
    assert cutoff(np.arange(1.0, 97.0), 0.99667) == pytest.approx(124.08, abs=0.01)
    # A long right tail: the empirical quantile, a score seen, is the larger.
    scores = np.r_[np.zeros(90), np.full(10, 100.0)]
    assert cutoff(scores, 0.95) == 100.0
    assert cutoff(np.array([3.0, 1.0, 2.0]), 0.5) == pytest.approx(2.0 + 0.0)  # median: a score seen
    assert cutoff(np.array([5.0]), 0.99) == 5.0
