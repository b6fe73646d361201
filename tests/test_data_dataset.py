"""ImageDataset and TensorImageDataset: (tensor, label) items; unreadable files named or skipped."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rmnet.data import (
    ImageDataset,
    TensorImageDataset,
    UnreadableImageError,
    build_transform,
    load_image_table,
)
from rmnet.data.images import SkippedImageWarning


@pytest.fixture
def damaged_root(lesion_root, tmp_path) -> Path:
    """A copy of the lesion set with one truncated PNG, one non-image, one JPEG cut short."""
    root = Path(shutil.copytree(lesion_root, tmp_path / "damaged"))
    truncated = root / "lobed" / "lobed_0003.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (root / "regular" / "regular_0001.png").write_bytes(b"this is not a png")
    return root


def test_items_are_transformed_tensors_with_their_labels(lesion_root):
    table = load_image_table(lesion_root)
    dataset = ImageDataset(table, [0, 15, 39], build_transform(False, 16, resize=20))
    image, label = dataset[1]
    assert tuple(image.shape) == (3, 16, 16) and image.dtype == torch.float32
    assert label == table.labels[15] == 1
    assert dataset.labels.tolist() == table.labels[[0, 15, 39]].tolist()
    assert len(dataset) == 3 and dataset.class_names == table.class_names


def test_without_transform_items_are_uint8_rgb(isic_root):
    dataset = ImageDataset(load_image_table(isic_root))
    image, _ = dataset[0]
    assert image.dtype == torch.uint8 and image.shape[0] == 3


def test_batches_through_a_dataloader_with_workers(lesion_root):
    dataset = ImageDataset(load_image_table(lesion_root), transform=build_transform(True, 16, resize=20))
    images, labels = next(iter(DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2)))
    assert tuple(images.shape) == (8, 3, 16, 16) and labels.dtype == torch.int64


def test_corrupt_image_raises_an_error_naming_the_file(damaged_root):
    table = load_image_table(damaged_root)
    dataset = ImageDataset(table)
    bad = table.ids.index("lobed/lobed_0003")
    with pytest.raises(UnreadableImageError, match=r"lobed_0003\.png.*image id lobed/lobed_0003"):
        dataset[bad]
    with pytest.raises(UnreadableImageError, match=r"regular_0001\.png"):
        dataset[table.ids.index("regular/regular_0001")]


def test_truncated_jpeg_raises_on_read(isic_root, tmp_path):
    root = Path(shutil.copytree(isic_root, tmp_path / "isic"))
    path = root / "ISIC_2019_Training_Input" / "ISIC_0000011.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    table = load_image_table(root)
    with pytest.raises(UnreadableImageError, match="ISIC_0000011.jpg"):
        ImageDataset(table)[table.ids.index("ISIC_0000011")]


def test_skip_leaves_unreadable_images_out_and_lists_them(damaged_root, isic_root, tmp_path):
    table = load_image_table(damaged_root)
    with pytest.warns(SkippedImageWarning) as warned:
        dataset = ImageDataset(table, on_error="skip")
    # One warning per image, naming it on one line.
    lines = sorted(str(w.message) for w in warned)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert lines[0].startswith("skipped image lobed/lobed_0003 (") and "truncated" in lines[0]
    assert lines[1].startswith("skipped image regular/regular_0001 (")
    assert len(dataset) == len(table) - 2
    assert sorted(image_id for image_id, _, _ in dataset.skipped) == [
        "lobed/lobed_0003",
        "regular/regular_0001",
    ]
    kept = {table.ids[i] for i in dataset.indices}
    assert "lobed/lobed_0003" not in kept
    for item in range(len(dataset)):  # every remaining label belongs to its own image
        _, label = dataset[item]
        assert table.class_names[label] in table.ids[dataset.indices[item]]


def test_skip_catches_a_jpeg_cut_short(isic_root, tmp_path):
    root = Path(shutil.copytree(isic_root, tmp_path / "isic"))
    path = root / "ISIC_2019_Training_Input" / "ISIC_0000011.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.warns(UserWarning, match="ISIC_0000011.jpg"):
        dataset = ImageDataset(load_image_table(root), on_error="skip")
    assert [image_id for image_id, _, _ in dataset.skipped] == ["ISIC_0000011"]


def test_images_the_table_knows_to_be_unreadable_are_left_out_without_a_second_warning(damaged_root):
    table = load_image_table(damaged_root)
    known = replace(table, unreadable={"lobed/lobed_0003": "OSError: found by the cache"})
    with pytest.warns(SkippedImageWarning) as warned:
        dataset = ImageDataset(known, on_error="skip")
    assert [str(w.message).split(" (")[0] for w in warned] == ["skipped image regular/regular_0001"]
    assert sorted(s.id for s in dataset.skipped) == ["lobed/lobed_0003", "regular/regular_0001"]
    reasons = {s.id: s.reason for s in dataset.skipped}
    assert reasons["lobed/lobed_0003"] == "OSError: found by the cache"  # not decoded again
    assert len(dataset) == len(table) - 2
    assert known.subset([table.ids.index("lobed/lobed_0003"), 0]).unreadable == known.unreadable
    assert known.subset([0]).unreadable == {}


def test_an_unreadable_image_error_says_how_to_go_on(damaged_root):
    table = load_image_table(damaged_root)
    with pytest.raises(UnreadableImageError, match="replace the file, or pass --on-error skip"):
        ImageDataset(table)[table.ids.index("lobed/lobed_0003")]


def test_unknown_on_error_policy_is_rejected(lesion_root):
    with pytest.raises(ValueError, match="on_error"):
        ImageDataset(load_image_table(lesion_root), on_error="ignore")


def test_tensor_dataset_applies_the_transform_and_gives_int_labels():
    images = torch.rand(5, 3, 29, 29)
    dataset = TensorImageDataset(images, np.array([0, 1, 2, 1, 0]), build_transform(False, 25, resize=29))
    image, label = dataset[3]
    assert tuple(image.shape) == (3, 25, 25) and label == 1 and isinstance(label, int)
    assert dataset.labels.tolist() == [0, 1, 2, 1, 0] and dataset.class_names == ["0", "1", "2"]
    assert torch.equal(TensorImageDataset(images, [0] * 5)[2][0], images[2])


def test_tensor_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        TensorImageDataset(torch.rand(5, 3, 8, 8), [0, 1, 2, 3])
