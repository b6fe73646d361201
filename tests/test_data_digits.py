"""scikit-learn's handwritten digits as CNN-sized tensors, with room to rotate."""

from __future__ import annotations

import pytest
import torch

from rmnet.data import TensorImageDataset, load_digits_tensors


def test_all_1797_digits_as_three_channel_float_images_in_unit_range():
    images, labels = load_digits_tensors(size=29)
    assert tuple(images.shape) == (1797, 3, 29, 29) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert labels.dtype == torch.int64 and sorted(labels.unique().tolist()) == list(range(10))
    torch.testing.assert_close(images[:, 0], images[:, 2])


def test_digit_sits_inside_an_empty_margin_so_rotation_keeps_it():
    images, _ = load_digits_tensors(size=29, channels=1)
    assert images.shape[1] == 1
    assert images[..., :4, :].abs().max() == 0 and images[..., -4:, :].abs().max() == 0
    assert images[..., :, :4].abs().max() == 0 and images[..., :, -4:].abs().max() == 0


def test_other_sizes_and_too_small_sizes():
    assert tuple(load_digits_tensors(size=15)[0].shape[-2:]) == (15, 15)
    with pytest.raises(ValueError, match="at least 8"):
        load_digits_tensors(size=5)


def test_digits_plug_into_a_tensor_dataset():
    images, labels = load_digits_tensors(size=17)
    dataset = TensorImageDataset(images, labels)
    image, label = dataset[10]
    assert tuple(image.shape) == (3, 17, 17) and label == 0 and len(dataset) == 1797
