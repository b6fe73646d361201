"""Search through the Python API: image files of any kind → codes → nearest indexed cases → gallery."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import rmnet
from rmnet.data import build_transform
from rmnet.retrieval.gallery import save_gallery
from rmnet.retrieval.index import CodeIndex, IndexMismatchError
from rmnet.retrieval.search import ImageEncoder, add_images, image_files, search_images

CLASSES = ["regular", "lobed", "globules"]


def encoder(seed=0):
    torch.manual_seed(seed)
    model = rmnet.create_model("small_cnn", num_classes=3, hash_bits=8, width=8)
    return ImageEncoder(model, build_transform(False, 16), CLASSES, description="tiny")


@pytest.fixture
def images(tmp_path):
    """Six RGB images of different content and sizes, in two folders."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        folder = tmp_path / "images" / ("a" if i < 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        size = (20 + 4 * i, 24)
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"case{i}.png")
        paths.append(folder / f"case{i}.png")
    return paths


def new_index(tmp_path, enc):
    return CodeIndex.create(tmp_path / "index", model=enc.identity, class_names=CLASSES)


def test_images_of_any_size_and_mode_are_converted_and_encoded(tmp_path):
    odd = {"L": (30, 17), "RGBA": (64, 64), "P": (16, 40), "CMYK": (25, 25), "I;16": (18, 18)}
    paths = []
    for mode, size in odd.items():
        path = tmp_path / f"{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, size).save(path)
        paths.append(path)
    readable, codes, probabilities, failed = encoder().encode(paths)
    assert failed == [] and readable == paths
    assert codes.shape == (5, 8) and codes.dtype == np.float32
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(5), abs=1e-5)


def test_an_unreadable_image_is_reported_by_name_and_the_others_still_encoded(tmp_path, images):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    missing = tmp_path / "missing.png"
    readable, codes, _, failed = encoder().encode([images[0], broken, missing])
    assert readable == [images[0]] and codes.shape == (1, 8)
    assert [path for path, _ in failed] == [broken, missing]
    assert all("cannot read image" in why and str(path) in why for path, why in failed)


def test_an_indexed_image_finds_itself_first_with_its_stored_details(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    added, failed = add_images(enc, index, images, label=1)
    assert failed == [] and added.added == [f"case{i}" for i in range(6)]
    results, _ = search_images(enc, index, [images[2]], k=3)
    (result,) = results
    first = result.hits[0]
    assert (first.image_id, first.class_name, first.path) == ("case2", "lobed", str(images[2].resolve()))
    assert first.distance == pytest.approx(0.0, abs=1e-5)
    assert [hit.rank for hit in result.hits] == [1, 2, 3]
    assert result.predicted_class in CLASSES and 0 < result.probability <= 1


def test_k_larger_than_the_index_returns_every_indexed_image(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images[:2], label=0)
    results, _ = search_images(enc, index, [images[3]], k=10, metric="hamming")
    assert sorted(hit.image_id for hit in results[0].hits) == ["case0", "case1"]


def test_adding_the_same_file_again_or_a_copy_under_another_name_is_skipped(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images[:1], label=0)
    copy = tmp_path / "renamed.png"
    shutil.copy(images[0], copy)
    added, _ = add_images(enc, index, [images[0], copy, images[1]], label=0)
    assert added.added == ["case1"]
    assert added.skipped == [
        ("case0", "already in the index (same image id)"),
        ("renamed", "same file content as case0"),
    ]


def test_another_model_cannot_search_or_extend_the_index(tmp_path, images):
    enc, other = encoder(seed=0), encoder(seed=1)
    index = new_index(tmp_path, enc)
    add_images(enc, index, images[:2], label=0)
    with pytest.raises(IndexMismatchError, match="codes of different models cannot be compared"):
        search_images(other, index, images[2:3])
    with pytest.raises(IndexMismatchError):
        add_images(other, index, images[2:3], label=0)


def test_folders_are_expanded_to_the_image_files_they_contain(tmp_path, images):
    (tmp_path / "images" / "a" / "notes.txt").write_text("not an image")
    assert image_files([tmp_path / "images" / "a", images[4]]) == [*images[:3], images[4]]


def test_the_gallery_shows_the_query_and_every_result(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images, label=2)
    images[5].unlink()  # a result whose file has gone is drawn as a grey square, not an error
    (result,) = search_images(enc, index, images[:1], k=6)[0]
    path = save_gallery(result, tmp_path / "out" / "gallery.png", columns=3)
    with Image.open(path) as picture:
        width, height = picture.size
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    assert width > 3 * 150 and height > 3 * 150  # a query row and two rows of three results
