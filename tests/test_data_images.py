"""rmnet.data.images: one reader for training, the cache, the index and the service."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rmnet.data.images import open_rgb


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_grey_image_is_read_by_its_range_not_clipped(tmp_path, fmt):
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = tmp_path / f"grey.{fmt.lower()}"
    Image.fromarray(values).save(path, fmt)
    read = np.asarray(open_rgb(path))
    assert read.shape == (2, 2, 3) and (read == read[..., :1]).all()  # grey on every channel
    assert read[..., 0].tolist() == [[0, 4], [128, 255]]  # v·255/65535, rounded: not 255 for v ≥ 255


def test_transparent_pixels_are_read_on_white_not_as_their_hidden_colour(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque red stays red
    rgba[1, 1] = (0, 0, 0, 0)  # fully transparent black: white
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    rgba[1, 0] = (255, 0, 0, 0)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    read = np.asarray(open_rgb(path)).astype(int)
    assert read[0, 0].tolist() == [200, 10, 10]
    assert read[1, 1].tolist() == [255, 255, 255] and read[1, 0].tolist() == [255, 255, 255]
    assert np.abs(read[0, 1] - 127).max() <= 1


def test_an_rgb_image_is_read_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    assert np.array_equal(np.asarray(open_rgb(path)), pixels)
