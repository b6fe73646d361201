"""Search through the Python API: image files of any kind → codes → nearest indexed cases → gallery."""

import dataclasses
import shutil
import threading

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import rmnet
from rmnet.data import build_transform
from rmnet.data.images import UnreadableImageError
from rmnet.retrieval.gallery import LEGEND, UNREADABLE_NOTE, gallery_figure, save_gallery
from rmnet.retrieval.index import CodeIndex, IndexMismatchError, describe_codes
from rmnet.retrieval.search import (
    ImageEncoder,
    add_bytes,
    add_images,
    image_files,
    search_bytes,
    search_images,
)

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


def test_the_predicted_diagnosis_is_the_models_arg_max_and_its_probability(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images, label=1)
    results, _ = search_images(enc, index, images, k=2)
    with torch.no_grad():
        batch = torch.stack([enc.transform(Image.open(path).convert("RGB")) for path in images])
        probabilities = torch.softmax(enc.model(batch), dim=1)
    expected = probabilities.argmax(dim=1).tolist()
    assert [r.predicted_label for r in results] == expected
    assert [r.predicted_class for r in results] == [CLASSES[i] for i in expected]
    assert [r.probability for r in results] == pytest.approx(
        probabilities.max(dim=1).values.tolist(), abs=1e-6
    )


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


def test_images_given_as_bytes_are_searched_like_files_and_bad_bytes_are_named(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images, label=0)
    blobs = [path.read_bytes() for path in images[:2]]
    by_bytes = search_bytes(enc, index, blobs, names=["first", "second"], k=3)
    by_files, _ = search_images(enc, index, images[:2], k=3)
    assert [r.query for r in by_bytes] == ["first", "second"]
    for a, b in zip(by_bytes, by_files, strict=True):
        assert a.hits == b.hits and a.predicted_label == b.predicted_label
    codes, _ = enc.encode_images([Image.open(images[0]).convert("L")])  # a decoded image, any mode
    assert codes.shape == (1, 8)
    with pytest.raises(UnreadableImageError, match="2 of 3 images could not be read: cannot read image bad"):
        enc.encode_bytes([blobs[0], b"not an image", b""], names=["ok", "bad", "empty"])
    with pytest.raises(UnreadableImageError, match="cannot read image empty: it is empty"):
        search_bytes(enc, index, [b""], names=["empty"])


def test_images_given_as_bytes_are_added_once_whatever_their_name(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images[:1], label=0)
    result = add_bytes(
        enc, index, [images[0].read_bytes(), images[1].read_bytes()], ids=["up-0", "up-1"], label=2
    )
    assert result.added == ["up-1"] and result.skipped == [("up-0", "same file content as case0")]


def test_the_encoder_refuses_a_model_that_is_not_an_rmnet_model():
    with pytest.raises(TypeError, match="is not an rmnet model"):
        ImageEncoder(nn.Linear(3, 3), build_transform(False, 16), CLASSES)


def test_an_encoder_says_whether_its_codes_are_hash_codes_or_float_features():
    torch.manual_seed(0)
    plain = rmnet.create_model("small_cnn", num_classes=3, width=8)
    identity = ImageEncoder(plain, build_transform(False, 16), CLASSES).identity
    assert identity.code_kind == "features"
    assert describe_codes(identity) == f"{plain.num_features}-D float features"
    assert describe_codes(encoder().identity) == "8-bit codes"


def test_threads_may_search_one_encoder_and_index_at_once(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images, label=0)
    expected, _ = search_images(enc, index, images, k=3)
    answers = [None] * 4

    def work(i):
        answers[i] = search_bytes(enc, index, [p.read_bytes() for p in images], k=3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answer in answers:
        assert [r.hits for r in answer] == [r.hits for r in expected]


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


def test_the_gallery_has_a_legend_and_prefers_the_original_over_the_cached_copy(tmp_path, images):
    enc = encoder()
    index = new_index(tmp_path, enc)
    add_images(enc, index, images[:3], label=0)
    (result,) = search_images(enc, index, images[:1], k=3)[0]
    small = tmp_path / "small.png"
    Image.new("RGB", (4, 4), "blue").save(small)
    hits = [
        dataclasses.replace(result.hits[0], cached_path=str(small)),  # original readable: it is shown
        dataclasses.replace(result.hits[1], path=str(tmp_path / "gone.png"), cached_path=str(small)),
        dataclasses.replace(result.hits[2], path=str(tmp_path / "gone.png"), cached_path=None),
    ]
    fig = gallery_figure(dataclasses.replace(result, hits=hits), columns=3)
    try:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == list(LEGEND)
        tiles = fig.axes[3:6]
        assert [tile.images[0].get_array().shape[:2] for tile in tiles[:2]] == [(24, 20), (4, 4)]
        notes = [[t.get_text() for t in tile.texts] for tile in tiles]
        assert notes == [[], [], [UNREADABLE_NOTE]]
    finally:
        plt.close(fig)
