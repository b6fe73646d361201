"""The generated lesion data set: structure classes, any orientation, reproducible and resumable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from rmnet.data import LESION_KINDS, load_image_table, make_lesion_dataset, render_lesion, save_contact_sheet


def test_writes_one_folder_per_class_of_png_images_of_the_size_asked(lesion_root):
    table = load_image_table(lesion_root)
    assert sorted(table.class_names) == sorted(LESION_KINDS[:4])
    assert table.class_counts().tolist() == [10] * 4
    with Image.open(table.paths[0]) as image:
        assert image.format == "PNG" and image.size == (24, 24) and image.mode == "RGB"


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    a = make_lesion_dataset(tmp_path / "a", n_per_class=2, size=16, seed=5, num_classes=2)
    b = make_lesion_dataset(tmp_path / "b", n_per_class=2, size=16, seed=5, num_classes=2)
    c = make_lesion_dataset(tmp_path / "c", n_per_class=2, size=16, seed=6, num_classes=2)
    name = "regular/regular_0001.png"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()


def test_a_second_call_only_writes_what_is_missing(tmp_path):
    root = make_lesion_dataset(tmp_path / "l", n_per_class=3, size=16, num_classes=2)
    kept, removed = root / "lobed" / "lobed_0000.png", root / "lobed" / "lobed_0002.png"
    original = removed.read_bytes()
    removed.unlink()
    kept_time = kept.stat().st_mtime_ns
    make_lesion_dataset(root, n_per_class=3, size=16, num_classes=2)
    assert removed.read_bytes() == original and kept.stat().st_mtime_ns == kept_time
    assert not list(root.rglob("*.tmp"))


def test_a_folder_made_with_other_settings_is_refused(tmp_path):
    make_lesion_dataset(tmp_path / "l", n_per_class=2, size=16, num_classes=2)
    with pytest.raises(ValueError, match="use another folder"):
        make_lesion_dataset(tmp_path / "l", n_per_class=2, size=20, num_classes=2)


def test_mean_colour_alone_barely_tells_the_classes_apart():
    rng = np.random.default_rng(0)
    features, labels = [], []
    for label, kind in enumerate(LESION_KINDS):
        for _ in range(25):
            pixels = render_lesion(kind, 24, rng).reshape(-1, 3) / 255
            features.append(pixels.mean(axis=0))
            labels.append(label)
    accuracy = cross_val_score(LogisticRegression(max_iter=1000), np.array(features), labels, cv=5).mean()
    assert accuracy < 0.4  # chance is 1/6; the classes differ in structure


def test_structures_appear_at_every_orientation():
    rng = np.random.default_rng(1)
    quadrants = set()
    for _ in range(24):
        image = render_lesion("two_tone", 48, rng).astype(float).mean(axis=2)
        darkness = np.clip(np.median(image) - image, 0, None)  # lesion pixels, darker side heavier
        ys, xs = np.nonzero(darkness > 20)
        weights = darkness[ys, xs]
        dy = np.average(ys, weights=weights) - ys.mean()
        dx = np.average(xs, weights=weights) - xs.mean()
        quadrants.add((dx > 0, dy > 0))
    assert len(quadrants) == 4


def test_unknown_kind_and_too_many_classes_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown lesion kind"):
        render_lesion("melanoma", 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_classes"):
        make_lesion_dataset(tmp_path, num_classes=len(LESION_KINDS) + 1)


def test_contact_sheet_shows_every_class(lesion_root, tmp_path):
    path = save_contact_sheet(load_image_table(lesion_root), tmp_path / "sheet.png", per_class=3)
    with Image.open(path) as sheet:
        assert sheet.height > sheet.width / 3 * 2  # four rows of three


def _dark_side_directions(orientation_range, count=12, size=48):
    """(dx, dy) of the darker half of two-tone lesions: where their dark side points."""
    rng = np.random.default_rng(1)
    directions = []
    for _ in range(count):
        image = render_lesion("two_tone", size, rng, orientation_range).astype(float).mean(axis=2)
        darkness = np.clip(np.median(image) - image, 0, None)
        ys, xs = np.nonzero(darkness > 20)
        weights = darkness[ys, xs]
        directions.append(
            (np.average(xs, weights=weights) - xs.mean(), np.average(ys, weights=weights) - ys.mean())
        )
    return np.array(directions)


def test_an_upright_bias_points_every_lesion_the_same_way():
    upright = _dark_side_directions(orientation_range=0)
    assert (upright[:, 0] > 0).all()  # the darker side is on the right in every image
    assert np.abs(upright[:, 1]).mean() < np.abs(upright[:, 0]).mean()
    anywhere = _dark_side_directions(orientation_range=360)
    assert (anywhere[:, 0] < 0).any()


def test_the_default_orientation_range_keeps_the_images_and_the_folder_recipe(tmp_path):
    a = render_lesion("network", 16, np.random.default_rng(4))
    assert np.array_equal(a, render_lesion("network", 16, np.random.default_rng(4), 360.0))
    root = make_lesion_dataset(tmp_path / "l", n_per_class=1, size=16, num_classes=1)
    assert "orientation_range" not in (root / "lesions.json").read_text()
    biased = make_lesion_dataset(tmp_path / "b", n_per_class=1, size=16, num_classes=1, orientation_range=30)
    assert '"orientation_range": 30' in (biased / "lesions.json").read_text()
    with pytest.raises(ValueError, match="use another folder"):
        make_lesion_dataset(tmp_path / "l", n_per_class=1, size=16, num_classes=1, orientation_range=30)
    with pytest.raises(ValueError, match="orientation_range"):
        make_lesion_dataset(tmp_path / "c", n_per_class=1, size=16, num_classes=1, orientation_range=400)
