"""Evaluation: predictions, robustness to rotation, the report files, and mean ± SD over runs."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rmnet import create_model
from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset
from rmnet.evaluate import (
    aggregate_reports,
    evaluate_model,
    evaluate_repeats,
    evaluate_run,
    predict,
    predict_rotated,
    rotation_robustness,
    summary_markdown,
)
from rmnet.groups import rotate
from rmnet.metrics.classification import predict_labels
from rmnet.models.base import ImageClassifier
from rmnet.train import repeat, train

CLASSES = ["a", "b", "c"]


def random_images(n: int = 24, size: int = 16) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % 3)


def invariant_model() -> nn.Module:
    """RM over the whole trunk: exactly invariant to rotations of the image by multiples of 90°."""
    torch.manual_seed(0)
    return create_model("small_cnn", 3, rm="all", width=8).eval()


class TopVersusBottom(ImageClassifier):
    """Class 0 when the top half is brighter than the bottom half, else class 1: rotating by 180° flips it."""

    num_classes, num_features = 2, 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-2] // 2
        return (x[..., :half, :].mean(dim=(1, 2, 3)) - x[..., half:, :].mean(dim=(1, 2, 3)))[:, None]

    def forward_head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features, torch.cat([features, -features], dim=1)


def orientation_sensitive_model() -> nn.Module:
    """A plain small CNN (not invariant) with its logits scaled up, so rotations move its scores a lot."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 3, width=8).eval()
    with torch.no_grad():
        model.fc.weight.mul_(300.0)
    return model


def angle_row(robustness: dict, angle) -> dict:
    """The metrics of one test angle in a rotation_robustness result (rows keyed by their angle)."""
    rows = robustness["angles"]
    if isinstance(rows, dict):  # keyed by the angle's name, "90" or "random"
        return rows[angle if angle == "random" else f"{float(angle):g}"]
    return next(row for row in rows if row["angle"] == (angle if angle == "random" else float(angle)))


def test_an_invariant_model_scores_the_same_at_every_multiple_of_90_degrees():
    predictions = predict_rotated(invariant_model(), random_images(), [0.0, 90.0, 180.0, 270.0, "random"])
    robustness = rotation_robustness(
        predictions, CLASSES, angles=(90, 180, 270), sweep=(0, 90, 180, 270, 360)
    )
    upright = angle_row(robustness, 0)
    for angle in (90, 180, 270):
        assert angle_row(robustness, angle)["changed"] == 0.0
        for key in ("accuracy", "balanced_accuracy", "mean_precision", "kappa"):
            assert angle_row(robustness, angle)[key] == pytest.approx(upright[key], abs=1e-12), (angle, key)
        np.testing.assert_allclose(predictions[float(angle)].y_score, predictions[0.0].y_score, atol=1e-5)
    assert robustness["sweep"]["changed"] == [0.0] * 5


def test_changed_counts_the_predictions_that_a_rotation_flips():
    images = torch.zeros(4, 1, 4, 4)
    images[:2, :, :2] = 1.0  # bright top: class 0
    images[2:, :, 2:] = 1.0  # bright bottom: class 1
    data = TensorDataset(images, torch.tensor([0, 0, 1, 1]))
    predictions = predict_rotated(TopVersusBottom(), data, [0.0, 90.0, 180.0])
    robustness = rotation_robustness(predictions, ["top", "bottom"], angles=(90, 180), sweep=(0, 180))
    assert angle_row(robustness, 0)["accuracy"] == 1.0
    assert {k: v for k, v in angle_row(robustness, 180).items() if k != "angle"} == pytest.approx(
        {
            "accuracy": 0.0,
            "balanced_accuracy": 0.0,
            "mean_precision": 0.0,
            "kappa": -1.0,
            "auc_micro": 0.0,
            "changed": 1.0,
        }  # fmt: skip
    )
    assert angle_row(robustness, 90)["changed"] == 1.0  # top/bottom contrast 0: a tie, so no class
    assert robustness["sweep"]["accuracy"] == [1.0, 0.0]


def test_predict_gives_probabilities_labels_and_last_layer_features():
    result = predict(invariant_model(), random_images(n=10), batch_size=4, device="cpu")
    assert result.y_true.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    np.testing.assert_allclose(result.y_score.sum(axis=1), 1.0, rtol=1e-6)
    assert result.y_pred.tolist() == result.y_score.argmax(axis=1).tolist()
    assert result.features.shape == (10, 8)  # the pooled features of a width-8 small CNN


@pytest.mark.parametrize("angle", [90.0, 180.0, 270.0, 45.0, 30.0])
def test_predictions_at_an_angle_are_those_of_the_rotated_images(angle):
    # A plain CNN is not invariant: rotation must change its scores, and by exactly this much.
    model, data = orientation_sensitive_model(), random_images(n=10)
    predictions = predict_rotated(model, data, [0.0, angle], batch_size=4, device="cpu", progress=False)
    images = data.tensors[0]
    with torch.no_grad():
        expected = torch.softmax(model(rotate(images, angle)), dim=1).numpy()
        upright = torch.softmax(model(images), dim=1).numpy()
    assert np.abs(expected - upright).max() > 0.1  # the rotation matters to this model
    np.testing.assert_allclose(predictions[angle].y_score, expected, atol=1e-5)
    np.testing.assert_allclose(predictions[0.0].y_score, upright, atol=1e-5)
    assert predictions[angle].y_pred.tolist() == predict_labels(expected).tolist()


def test_random_angles_rotate_every_image_by_its_own_angle():
    model, data = orientation_sensitive_model(), random_images(n=12)
    predictions = predict_rotated(model, data, [0.0, "random"], batch_size=5, device="cpu", progress=False)
    upright, rotated = predictions[0.0].y_score, predictions["random"].y_score
    assert np.abs(rotated - upright).max() > 0.1
    # Image i turns by the i-th angle drawn from the seed (uniform in [0°, 360°)).
    angles = np.random.default_rng(0).uniform(0.0, 360.0, len(data))
    with torch.no_grad():
        expected = torch.cat(
            [torch.softmax(model(rotate(image[None], float(a))), dim=1) for image, a in
             zip(data.tensors[0], angles, strict=True)]
        ).numpy()  # fmt: skip
    np.testing.assert_allclose(rotated, expected, atol=1e-5)


def test_random_angles_are_reproducible_for_a_seed():
    model, data = create_model("small_cnn", 3, width=8).eval(), random_images(n=12)
    first = predict_rotated(model, data, ["random"], seed=3)["random"].y_score
    again = predict_rotated(model, data, ["random"], seed=3)["random"].y_score
    other = predict_rotated(model, data, ["random"], seed=4)["random"].y_score
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_evaluate_model_writes_strict_json_markdown_and_every_figure(tmp_path):
    report = evaluate_model(
        invariant_model(),
        random_images(),
        CLASSES,
        tmp_path,
        title="rm",
        sweep_step=90,
        device="cpu",
        progress=False,
    )
    saved = json.loads((tmp_path / "report.json").read_text(), parse_constant=pytest.fail)  # no NaN literals
    assert saved["classification"]["n"] == 24 and saved["rotation"]["sweep"]["angles"] == [
        0,
        90,
        180,
        270,
        360,
    ]
    markdown = (tmp_path / "report.md").read_text()
    for name in ("roc", "confusion_matrix", "rotation", "tsne"):
        figure = report["figures"][name]
        assert (tmp_path / figure).stat().st_size > 1000 and f"]({figure})" in markdown
    assert "| 90° |" in markdown and "AP (mean precision)" in markdown


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    return make_lesion_dataset(
        tmp_path_factory.mktemp("data") / "lesions", n_per_class=8, size=20, num_classes=3
    )


def test_evaluate_run_reports_on_the_test_split_with_training_curves_and_retrieval(lesions, tmp_path):
    config = TrainConfig(
        arch="small_cnn", hash_bits=4, model_options={"width": 8}, data=str(lesions), image_size=16,
        epochs=1, batch_size=8, workers=0,
    )  # fmt: skip
    train(config, tmp_path, progress=False)
    report = evaluate_run(tmp_path, sweep_step=90, device="cpu", progress=False, tsne=False)
    assert (tmp_path / "report/report.md").is_file() and (tmp_path / "report/training.png").is_file()
    assert report["data"]["images"] == report["classification"]["n"] == 3  # 8 per class: 1 in test
    assert report["model"]["hash_bits"] == 4
    angles = {(row["angle"], row["metric"]) for row in report["retrieval"]["results"]}
    assert (0, "cosine") in angles and (90, "hamming") in angles
    assert "## Retrieval" in (tmp_path / "report/report.md").read_text()


def test_aggregate_reports_gives_mean_and_sample_sd_of_every_shared_number():
    reports = [
        {"classification": {"kappa": 0.5, "accuracy": 0.8, "class_names": ["a"]}, "extra": 1.0},
        {"classification": {"kappa": 0.7, "accuracy": 0.8, "class_names": ["a"]}},
    ]
    aggregate = aggregate_reports(reports)
    assert set(aggregate) == {"classification.kappa", "classification.accuracy"}  # "extra" is not shared
    # mean 0.6; sample SD sqrt(((0.5-0.6)² + (0.7-0.6)²) / (2-1)) = sqrt(0.02)
    assert aggregate["classification.kappa"]["mean"] == pytest.approx(0.6)
    assert aggregate["classification.kappa"]["sd"] == pytest.approx(math.sqrt(0.02))
    assert aggregate["classification.accuracy"] == pytest.approx({"mean": 0.8, "sd": 0.0, "n": 2})
    assert "| Kappa | 60.00 ± 14.14 |" in summary_markdown(aggregate, ["seed-0", "seed-1"])


def test_evaluate_repeats_writes_a_mean_and_sd_summary_over_seed_runs(lesions, tmp_path):
    config = TrainConfig(
        arch="small_cnn", model_options={"width": 8}, data=str(lesions), image_size=16, epochs=1,
        batch_size=8, workers=0,
    )  # fmt: skip
    repeat(config, tmp_path, seeds=[0, 1], progress=False)
    summary = evaluate_repeats(tmp_path, sweep_step=180, device="cpu", progress=False, tsne=False)
    assert summary["runs"] == ["seed-0", "seed-1"]
    assert summary["metrics"]["classification.accuracy"]["n"] == 2
    assert "mean ± SD" in (tmp_path / "report/summary.md").read_text()
    assert (tmp_path / "seed-1/report/report.json").is_file()
