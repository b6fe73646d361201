"""Images held in memory (data path "memory"): decoded once as build_transform's first steps decode
them, then batches in the DataLoader's order (shuffled, in order, or a sampler's), labels attached."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import SubsetRandomSampler, TensorDataset

from rmnet.data import ImageDataset, build_transform, load_image_table, open_rgb
from rmnet.data.in_memory import MemoryBatches, pack_dataset, transform_recipe
from rmnet.data.transforms import decode_transform


@pytest.fixture
def lesions(lesion_root) -> ImageDataset:
    table = load_image_table(str(lesion_root))
    return ImageDataset(table, np.arange(0, 40, 3), build_transform(True, 16, resize=20))


def test_each_image_is_packed_as_build_transform_decodes_it(lesions):
    packed = pack_dataset(lesions, progress=False)
    assert len(packed) == len(lesions) and packed.labels.tolist() == lesions.labels.tolist()
    for n in (0, 5, len(lesions) - 1):
        path = lesions.table.paths[lesions.indices[n]]
        expected = decode_transform(20)(open_rgb(path)).permute(1, 2, 0)
        h, w = int(packed.heights[n]), int(packed.widths[n])
        image = packed.pixels[int(packed.offsets[n]) :][: h * w * 3].reshape(h, w, 3)
        assert torch.equal(image, expected)


def test_only_datasets_with_a_build_transform_pipeline_have_a_recipe(lesions):
    assert transform_recipe(lesions).image_size == 16 and transform_recipe(lesions).train
    assert transform_recipe(TensorDataset(torch.zeros(2, 3, 4, 4))) is None
    plain = ImageDataset(lesions.table, transform=None)
    assert transform_recipe(plain) is None
    with pytest.raises(ValueError, match="use data_path 'files'"):
        pack_dataset(plain, progress=False)


def test_batches_cover_the_data_once_per_pass_in_the_loaders_order(lesions):
    packed = pack_dataset(lesions, progress=False)
    recipe = transform_recipe(lesions)
    ordered = MemoryBatches(packed, recipe, batch_size=4)
    assert len(ordered) == 4  # 14 images: 4 + 4 + 4 + 2
    labels = torch.cat([labels for _, labels in ordered])
    assert labels.tolist() == packed.labels.tolist()
    images, _ = next(iter(ordered))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32

    torch.manual_seed(0)
    shuffled = torch.cat([labels for _, labels in MemoryBatches(packed, recipe, 4, shuffle=True)])
    assert sorted(shuffled.tolist()) == sorted(packed.labels.tolist())
    assert shuffled.tolist() != packed.labels.tolist()

    def sampler():
        return SubsetRandomSampler([1, 3, 5, 6, 9], generator=torch.Generator().manual_seed(0))

    sampled = MemoryBatches(packed, recipe, 2, sampler=sampler())
    assert len(sampled) == 3
    order = list(sampler())  # the order a DataLoader with this sampler would read
    assert torch.cat([labels for _, labels in sampled]).tolist() == packed.labels[order].tolist()
    assert order != [1, 3, 5, 6, 9]
