"""The paper's transforms: sizes, normalisation, flips only (never a rotation) unless RA is asked for;
rotation augmentation up to a maximum angle, and flips that can be turned off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from rmnet.data import IMAGENET_MEAN, IMAGENET_STD, build_transform
from rmnet.data.transforms import max_rotation_angle, random_rotation


def _asymmetric_image(width: int = 20, height: int = 20) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [(40, 30), (30, 40), (24, 24)])
def test_output_is_a_float_image_of_image_size(train, size):
    out = build_transform(train, 16)(_asymmetric_image(*size))
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 16, 16)


def test_tensors_are_transformed_like_pil_images():
    image = _asymmetric_image(24, 24)
    as_tensor = F.pil_to_tensor(image)
    transform = build_transform(False, 16, resize=20)
    torch.testing.assert_close(transform(as_tensor), transform(image), atol=0.05, rtol=0)
    floats = torch.rand(3, 29, 29)
    assert tuple(build_transform(True, 29, resize=29)(floats).shape) == (3, 29, 29)


def test_values_are_scaled_to_unit_range_then_imagenet_normalised():
    grey = Image.new("RGB", (20, 20), (128, 64, 255))
    out = build_transform(False, 16)(grey)
    expected = (torch.tensor([128, 64, 255]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_eval_is_resize_short_edge_then_centre_crop_with_default_resize_256_for_224():
    image = _asymmetric_image(60, 40)
    out = build_transform(False, 224)(image)
    manual = F.center_crop(F.resize(F.pil_to_tensor(image), 256, antialias=True), 224)
    torch.testing.assert_close(out, _normalise(manual))


def test_train_gives_the_image_or_one_flip_never_a_rotation():
    image = _asymmetric_image(16, 16)
    base = _normalise(F.pil_to_tensor(image))
    allowed = {"identity": base, "hflip": base.flip(-1), "vflip": base.flip(-2)}
    transform = build_transform(True, 16, resize=16)  # crop = whole image: only the flips vary
    seen = set()
    torch.manual_seed(0)
    for _ in range(60):
        out = transform(image)
        match = [name for name, x in allowed.items() if torch.allclose(out, x, atol=1e-5)]
        assert len(match) == 1, "output is not the image or a single flip of it"
        seen.add(match[0])
    assert seen == set(allowed)


def test_train_crop_is_random_eval_crop_is_fixed():
    image = _asymmetric_image(40, 40)
    torch.manual_seed(0)
    train = build_transform(True, 16, resize=32)
    assert not all(torch.equal(train(image), train(image)) for _ in range(5))
    evaluate = build_transform(False, 16, resize=32)
    assert torch.equal(evaluate(image), evaluate(image))


def test_rotation_augmentation_rotates_by_arbitrary_angles():
    image = _asymmetric_image(16, 16)
    base = _normalise(F.pil_to_tensor(image))
    flips = [base, base.flip(-1), base.flip(-2), base.flip(-1).flip(-2)]
    transform = build_transform(True, 16, resize=16, rotation_augmentation=True)
    torch.manual_seed(0)
    outputs = [transform(image) for _ in range(10)]
    assert sum(not any(torch.allclose(out, f, atol=1e-5) for f in flips) for out in outputs) >= 8


@pytest.mark.parametrize(
    ("value", "degrees"),
    [
        (False, 0.0),
        (None, 0.0),
        (0, 0.0),
        (True, 360.0),
        (360, 360.0),
        (45, 45.0),
        (22.5, 22.5),
        ("22.5", 22.5),
        ("true", 360.0),
        ("Off", 0.0),
    ],
)
def test_max_rotation_angle_reads_degrees_and_the_old_booleans(value, degrees):
    assert max_rotation_angle(value) == degrees


@pytest.mark.parametrize("value", [-1, 360.5, float("nan"), "sideways"])
def test_max_rotation_angle_outside_0_to_360_is_rejected_naming_the_range(value):
    with pytest.raises(ValueError, match="between 0 .* and 360|0–360"):
        max_rotation_angle(value)
    with pytest.raises(ValueError, match="rotation_augmentation"):
        build_transform(True, 16, rotation_augmentation=value)


def test_random_rotation_draws_from_plus_minus_the_angle_and_the_whole_circle_from_180():
    assert random_rotation(0) is None and random_rotation(False) is None
    assert list(random_rotation(45).degrees) == [-45.0, 45.0]
    for whole in (True, 180, 360):
        assert list(random_rotation(whole).degrees) == [0.0, 360.0]  # as the boolean option always drew


def _bright_spot_angle(image: torch.Tensor) -> float:
    """Angle in degrees (counterclockwise) of the brightness centroid about the image centre."""
    h, w = image.shape[-2:]
    weights = image[0] - image[0].min()
    ys, xs = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    return float(torch.rad2deg(torch.atan2(-(weights * ys).sum(), (weights * xs).sum())))


def test_rotation_augmentation_stays_within_the_maximum_angle():
    spot = torch.zeros(3, 33, 33)
    spot[:, 15:18, 26:29] = 1.0  # a bright square right of the centre: at angle 0°
    transform = build_transform(True, 33, resize=33, rotation_augmentation=30, flips=False)
    torch.manual_seed(0)
    angles = [_bright_spot_angle(transform(spot)) for _ in range(40)]
    assert max(abs(a) for a in angles) <= 31.0
    assert min(angles) < -15 and max(angles) > 15  # and it does rotate, both ways


def test_flips_false_leaves_the_flips_out():
    image = _asymmetric_image(16, 16)
    base = _normalise(F.pil_to_tensor(image))
    transform = build_transform(True, 16, resize=16, flips=False)  # crop = whole image, no flips
    torch.manual_seed(0)
    assert all(torch.allclose(transform(image), base, atol=1e-5) for _ in range(20))


def test_boolean_rotation_augmentation_is_the_full_circle_as_before():
    image = _asymmetric_image(16, 16)
    outputs = []
    for value in (True, 360.0):
        torch.manual_seed(3)
        outputs.append(build_transform(True, 16, resize=16, rotation_augmentation=value)(image))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_resize_smaller_than_crop_is_rejected():
    with pytest.raises(ValueError, match="resize"):
        build_transform(True, 32, resize=24)


def test_quarter_mode_turns_by_a_random_quarter_turn_exactly():
    """The paper's RA uses a 90° interval: each output is the image turned 0, 90, 180 or 270°,
    exactly (no interpolation), and every turn comes up."""
    image = _asymmetric_image(16, 16)
    base = _normalise(F.pil_to_tensor(image))
    turns = {k: torch.rot90(base, k, dims=(-2, -1)) for k in range(4)}
    transform = build_transform(True, 16, resize=16, flips=False, rotation_mode="quarter")
    seen = []
    torch.manual_seed(0)
    for _ in range(40):
        out = transform(image)
        seen += [k for k, x in turns.items() if torch.allclose(out, x, atol=1e-5)]
    assert len(seen) == 40 and set(seen) == {0, 1, 2, 3}
    assert 5 <= seen.count(0) <= 15  # about a quarter of the time each
    with pytest.raises(ValueError, match="rotation mode must be one of continuous, quarter"):
        build_transform(True, 16, rotation_mode="eighth")


def test_quarter_mode_keeps_a_non_square_image_whole():
    out = build_transform(True, 16, resize=16, rotation_mode="quarter")(_asymmetric_image(30, 16))
    assert tuple(out.shape) == (3, 16, 16)


def test_randaugment_is_torchvisions_with_mwnls_settings_in_training_only():
    from torchvision.transforms import v2

    def randaugments(transform):
        return [t for t in transform.transforms if isinstance(t, v2.RandAugment)]

    (augment,) = randaugments(build_transform(True, 16, randaugment=True))
    assert (augment.num_ops, augment.magnitude) == (2, 10)
    assert not randaugments(build_transform(True, 16)) and not randaugments(
        build_transform(False, 16, randaugment=True)
    )
    assert build_transform(True, 16, randaugment=True)(_asymmetric_image(30, 20)).shape == (3, 16, 16)


def test_grid_crops_spread_an_n_by_n_grid_corner_to_corner():
    """MWNL's 16-crop test: 4 × 4 crops, the first and last flush with the image's edges."""
    from rmnet.data.transforms import GridCrops

    crops = GridCrops(224, 16)
    assert crops.offsets(450) == [0, 75, 150, 226] and crops.offsets(600) == [0, 125, 250, 376]
    image = torch.arange(450 * 600, dtype=torch.float32).view(1, 450, 600)
    stack = crops(image)
    assert stack.shape == (16, 1, 224, 224)
    assert stack[0, 0, 0, 0] == 0 and stack[5, 0, 0, 0] == 75 * 600 + 125  # row 1, column 1
    assert stack[15, 0, -1, -1] == image[0, -1, -1]
    with pytest.raises(ValueError, match="square number"):
        GridCrops(224, 15)


def test_eval_with_test_crops_gives_a_stack_of_normalised_crops():
    image = _asymmetric_image(40, 30)
    stack = build_transform(False, 16, resize=20, crops=4)(image)
    assert stack.shape == (4, 3, 16, 16) and stack.dtype == torch.float32
    resized = _normalise(F.pil_to_tensor(F.resize(image, 20, antialias=True)))  # 26 × 20
    torch.testing.assert_close(stack[0], resized[:, :16, :16], atol=2e-2, rtol=0)
    torch.testing.assert_close(stack[3], resized[:, -16:, -16:], atol=2e-2, rtol=0)


def test_the_config_and_the_transforms_name_the_same_rotation_modes():
    from rmnet.config import ROTATION_AUGMENTATION_MODES
    from rmnet.data.transforms import ROTATION_MODES

    assert ROTATION_AUGMENTATION_MODES == ROTATION_MODES  # config.py cannot import torch to read them


def test_the_recipe_the_memory_path_reads_names_quarter_turns_and_is_absent_for_steps_it_lacks():
    quarter = build_transform(True, 16, rotation_augmentation=30, rotation_mode="quarter").recipe
    assert (quarter.quarter_turns, quarter.max_angle) == (True, 0.0)
    continuous = build_transform(True, 16, rotation_augmentation=30).recipe
    assert (continuous.quarter_turns, continuous.max_angle) == (False, 30.0)
    assert not hasattr(build_transform(True, 16, randaugment=True), "recipe")  # read as files
    assert not hasattr(build_transform(False, 16, crops=4), "recipe")
    assert build_transform(False, 16).recipe.train is False
