"""The batched transform (data path "memory") applies the paper's transform as build_transform does:
eval outputs identical, crops/flips/rotations identical for the same draws, and the same
distributions of crop offsets, flips and rotation angles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from rmnet.data import build_transform
from rmnet.data.batched import BatchParameters, PackedImages, apply_parameters, transform_batch
from rmnet.data.transforms import decode_transform

STD_MIN = 0.224  # the smallest ImageNet std: one uint8 level is at most 1 / 255 / 0.224 normalised


def _images(sizes=((45, 37), (37, 60), (32, 32), (28, 47)), seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _pack(images: list[Image.Image], resize: int) -> PackedImages:
    decode = decode_transform(resize)
    return PackedImages.from_arrays([decode(im).permute(1, 2, 0) for im in images], list(range(len(images))))


def test_packed_images_hold_each_image_at_its_own_size():
    images = [
        torch.arange(2 * 3 * 3, dtype=torch.uint8).reshape(2, 3, 3),
        torch.full((4, 1, 3), 7, dtype=torch.uint8),
    ]
    packed = PackedImages.from_arrays(images, [5, 6])
    assert (
        packed.offsets.tolist() == [0, 18]
        and packed.heights.tolist() == [2, 4]
        and packed.widths.tolist() == [3, 1]
    )
    assert packed.labels.tolist() == [5, 6] and len(packed) == 2 and packed.pixels.numel() == 30
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        PackedImages.from_arrays([torch.zeros(3, 4, 4)], [0])


@pytest.mark.parametrize("size", [16, 24])
def test_eval_outputs_equal_build_transform_per_image(size):
    images = _images()
    per_image = torch.stack([build_transform(False, size, resize=28)(im) for im in images])
    packed = _pack(images, 28)
    batched = transform_batch(packed, torch.arange(4), build_transform(False, size, resize=28).recipe)
    assert batched.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batched, per_image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("angle", [None, 30.0, -17.0, 200.0])
@pytest.mark.parametrize("flip", [0, 1, 2])
def test_the_same_draws_give_the_same_crop_flip_and_rotation_as_torchvision(angle, flip):
    image = _images(((53, 40),))[0]
    pixels = F.pil_to_tensor(image)
    expected = pixels if angle is None else F.rotate(pixels, angle, F.InterpolationMode.BILINEAR, fill=0)
    expected = F.crop(expected, 7, 11, 20, 20)
    expected = {0: expected, 1: F.horizontal_flip(expected), 2: F.vertical_flip(expected)}[flip]
    expected = F.normalize(F.to_dtype(expected, torch.float32, scale=True), *_mean_std())
    params = BatchParameters(
        None if angle is None else torch.tensor([angle]),
        torch.tensor([7]),
        torch.tensor([11]),
        torch.tensor([flip]),
    )
    out = apply_parameters(_pack([image], 40), torch.tensor([0]), 20, params)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1.01 / 255 / STD_MIN)  # at most one level apart


def _mean_std():
    from rmnet.data import IMAGENET_MEAN, IMAGENET_STD

    return IMAGENET_MEAN, IMAGENET_STD


def _both_paths(image: Image.Image, draws: int, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` train outputs of one image from build_transform (per image) and the batched path."""
    transform = build_transform(True, **options)
    torch.manual_seed(0)
    per_image = torch.stack([transform(image) for _ in range(draws)])
    packed = _pack([image], transform.recipe.resize)
    torch.manual_seed(1)
    batched = transform_batch(packed, torch.zeros(draws, dtype=torch.int64), transform.recipe)
    return per_image, batched


def test_crop_offsets_are_uniform_in_both_paths():
    columns = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (24, 1, 3))  # value = 6 × column
    image = Image.fromarray(columns)
    per_image, batched = _both_paths(image, 400, image_size=24, resize=24, flips=False)
    for outputs in (per_image, batched):
        level = outputs[:, 0, 0, 0] * 0.229 + 0.485  # back to [0, 1]
        left = torch.round(level * 255 / 6).long()
        assert left.min() == 0 and left.max() == 40 - 24  # every offset reachable, none beyond
        counts = torch.bincount(left, minlength=17).float()
        assert counts.min() > 400 / 17 * 0.4 and abs(left.float().mean() - 8.0) < 1.0


def test_identity_and_each_flip_come_equally_often_in_both_paths():
    quadrants = np.zeros((16, 16, 3), dtype=np.uint8)
    quadrants[:8, :8] = (255, 0, 0)  # top-left red, top-right green, bottom-left blue
    quadrants[:8, 8:] = (0, 255, 0)
    quadrants[8:, :8] = (0, 0, 255)
    per_image, batched = _both_paths(Image.fromarray(quadrants), 900, image_size=16, resize=16)
    fractions = []
    for outputs in (per_image, batched):
        corner = outputs[:, :, 0, 0].argmax(dim=1)  # the channel in the top-left corner: which flip
        assert set(corner.tolist()) == {0, 1, 2}  # never both flips (the black corner)
        fractions.append(torch.bincount(corner, minlength=3).float() / len(corner))
    for fraction in fractions:
        assert (abs(fraction - 1 / 3) < 0.06).all()
    assert (abs(fractions[0] - fractions[1]) < 0.08).all()


def _dot_angles(outputs: torch.Tensor, size: int) -> torch.Tensor:
    """Where a bright dot ended up, as an angle about the centre (degrees, counter-clockwise)."""
    weights = (outputs[:, 0] - outputs[:, 0].amin(dim=(1, 2), keepdim=True)).clamp(min=0) ** 2
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    total = weights.sum(dim=(1, 2))
    x = (weights * xs).sum(dim=(1, 2)) / total - size / 2
    y = (weights * ys).sum(dim=(1, 2)) / total - size / 2
    return torch.rad2deg(torch.atan2(-y, x))  # image rows grow downwards


@pytest.mark.parametrize("max_angle", [45.0, 360.0])
def test_rotation_angles_have_the_same_distribution_in_both_paths(max_angle):
    size = 33
    dot = np.zeros((size, size, 3), dtype=np.uint8)
    dot[15:18, 26:29] = 255  # right of the centre: angle 0
    per_image, batched = _both_paths(
        Image.fromarray(dot), 600, image_size=size, resize=size, rotation_augmentation=max_angle, flips=False
    )
    low, high = (-max_angle, max_angle) if max_angle < 180 else (-180.0, 180.0)
    histograms = []
    for outputs in (per_image, batched):
        angles = _dot_angles(outputs, size)
        assert angles.min() > low - 3 and angles.max() < high + 3
        histograms.append(torch.histc(angles, bins=6, min=low, max=high) / len(angles))
    for histogram in histograms:
        assert (abs(histogram - 1 / 6) < 0.06).all()  # uniform
    assert (abs(histograms[0] - histograms[1]) < 0.07).all()


def test_batched_rotation_turns_counter_clockwise_like_torchvision():
    size = 33
    dot = np.zeros((size, size, 3), dtype=np.uint8)
    dot[15:18, 26:29] = 255
    packed = _pack([Image.fromarray(dot)], size)
    params = BatchParameters(torch.tensor([90.0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    out = apply_parameters(packed, torch.tensor([0]), size, params)
    assert math.isclose(float(_dot_angles(out, size)[0]), 90.0, abs_tol=2.0)


def test_each_image_of_a_batch_draws_its_own_parameters():
    image = _images(((40, 40),))[0]
    recipe = build_transform(True, 16, resize=40).recipe
    torch.manual_seed(0)
    batch = transform_batch(_pack([image], 40), torch.zeros(8, dtype=torch.int64), recipe)
    assert len({tuple(x.flatten()[:50].tolist()) for x in batch}) > 4


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [0, 1, 2])
def test_quarter_turns_are_exact_like_rot90_then_crop_and_flip(turns, flip):
    image = _images(((30, 22),))[0]  # not square: a quarter turn swaps the sides
    turned = torch.rot90(F.pil_to_tensor(image), turns, dims=(-2, -1))
    expected = F.crop(turned, 3, 2, 16, 16)
    expected = {0: expected, 1: F.horizontal_flip(expected), 2: F.vertical_flip(expected)}[flip]
    expected = F.normalize(F.to_dtype(expected, torch.float32, scale=True), *_mean_std())
    params = BatchParameters(
        None, torch.tensor([3]), torch.tensor([2]), torch.tensor([flip]), torch.tensor([turns])
    )
    out = apply_parameters(_pack([image], 22), torch.tensor([0]), 16, params)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_quarter_turn_recipe_draws_every_turn_equally_often_and_crops_inside_the_turned_image():
    from rmnet.data.transforms import TransformRecipe

    wide = np.zeros((20, 30, 3), dtype=np.uint8)
    wide[:10, :15] = (255, 0, 0)  # top-left red, top-right green, bottom-left blue, bottom-right black
    wide[:10, 15:] = (0, 255, 0)
    wide[10:, :15] = (0, 0, 255)
    recipe = TransformRecipe(True, 20, 20, 0.0, flips=False, quarter_turns=True)
    torch.manual_seed(0)
    out = transform_batch(_pack([Image.fromarray(wide)], 20), torch.zeros(800, dtype=torch.int64), recipe)
    corner = out[:, :, 0, 0]  # the top-left pixel after the turn: red, green, black or blue
    colour = torch.where(corner.max(dim=1).values < 0, 3, corner.argmax(dim=1))
    fractions = torch.bincount(colour, minlength=4).float() / len(colour)
    assert (abs(fractions - 0.25) < 0.05).all()  # 0: none, 1 (green): 90°, 3 (black): 180°, 2 (blue): 270°
