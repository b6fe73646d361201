"""CodeIndex: FAISS + SQLite in one folder, consistent on disk whatever happens during a save."""

import fcntl
import json
import os
import sqlite3

import faiss
import numpy as np
import pytest

from rmnet.metrics.retrieval import rank_database
from rmnet.retrieval.index import (
    MANIFEST,
    CodeIndex,
    IndexBusyError,
    IndexCorruptError,
    IndexItem,
    IndexMismatchError,
    ModelIdentity,
)

BITS = 6
MODEL = ModelIdentity("model-a", BITS, "tiny test model")
CLASSES = ["MEL", "NV", "BCC"]


def items(n, start=0, label=None):
    return [IndexItem(f"img{start + i}", (start + i) % 3 if label is None else label) for i in range(n)]


def new_index(tmp_path, n=0, seed=0):
    index = CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    codes = np.random.default_rng(seed).normal(size=(n, BITS)).astype(np.float32)
    if n:
        index.add(codes, items(n), model_fingerprint="model-a")
    return index, codes


def search_rows(index, queries, k, metric):
    return [
        [hit.row for hit in hits]
        for hits in index.search(queries, k, model_fingerprint="model-a", metric=metric)
    ]


def test_an_empty_index_refuses_to_search_with_a_clear_message(tmp_path):
    index, _ = new_index(tmp_path)
    assert len(index) == 0
    with pytest.raises(ValueError, match="is empty: add images first"):
        index.search(np.ones(BITS), model_fingerprint="model-a")


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_search_returns_the_same_ranking_as_the_metrics_including_ties(tmp_path, metric):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, BITS)).astype(np.float32)
    codes = np.concatenate([base, base[:15], 2 * base[:10]])  # exact duplicates: cosine ties too
    index = CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    index.add(codes, items(len(codes)), model_fingerprint="model-a")
    queries = np.concatenate([base[:5], rng.normal(size=(15, BITS))]).astype(np.float32)
    expected, _ = rank_database(queries, codes, metric, k=10)
    assert search_rows(index, queries, 10, metric) == expected.tolist()


def test_hits_carry_what_was_stored_about_each_image(tmp_path):
    index = CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    item = IndexItem("ISIC_1", 2, "/data/ISIC_1.jpg", "abc", {"age": 55, "site": "back"})
    index.add(np.ones((1, BITS)), [item], model_fingerprint="model-a")
    (hit,) = index.search(np.ones(BITS), k=5, model_fingerprint="model-a")[0]
    assert (hit.rank, hit.row, hit.image_id, hit.path) == (1, 0, "ISIC_1", "/data/ISIC_1.jpg")
    assert (hit.label, hit.class_name, hit.metadata) == (2, "BCC", {"age": 55, "site": "back"})
    assert hit.distance == pytest.approx(0.0, abs=1e-6)


def test_a_reopened_index_holds_the_same_codes_and_answers_the_same(tmp_path):
    index, codes = new_index(tmp_path, n=30)
    before = search_rows(index, codes[:5], 7, "hamming")
    index.close()
    reopened = CodeIndex.open(tmp_path / "index")
    assert len(reopened) == 30 and reopened.class_names == CLASSES and reopened.model == MODEL
    assert reopened.labels().tolist() == [i % 3 for i in range(30)]
    assert search_rows(reopened, codes[:5], 7, "hamming") == before


def test_adding_appends_and_keeps_row_numbers(tmp_path):
    index, codes = new_index(tmp_path, n=5)
    more = np.random.default_rng(9).normal(size=(3, BITS))
    result = index.add(more, items(3, start=5), model_fingerprint="model-a")
    assert result.added == ["img5", "img6", "img7"] and result.skipped == []
    assert len(CodeIndex.open(tmp_path / "index")) == 8
    assert search_rows(index, more[1:2], 1, "cosine") == [[6]]


def test_an_image_already_present_by_id_or_by_content_is_skipped_with_the_reason(tmp_path):
    index = CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    index.add(np.ones((1, BITS)), [IndexItem("a", 0, content_hash="h1")], model_fingerprint="model-a")
    batch = [
        IndexItem("a", 0, content_hash="h9"),  # same id as stored
        IndexItem("b", 0, content_hash="h1"),  # same file content as "a"
        IndexItem("c", 1, content_hash="h2"),  # new
        IndexItem("c", 1, content_hash="h3"),  # listed twice
        IndexItem("d", 1, content_hash="h2"),  # same content as "c", added in this call
    ]
    result = index.add(np.ones((5, BITS)), batch, model_fingerprint="model-a")
    assert result.added == ["c"]
    assert result.skipped == [
        ("a", "already in the index (same image id)"),
        ("b", "same file content as a"),
        ("c", "listed twice"),
        ("d", "same file content as c"),
    ]
    assert len(index) == 2


def test_codes_of_another_model_or_length_are_refused(tmp_path):
    index, codes = new_index(tmp_path, n=3)
    with pytest.raises(
        IndexMismatchError, match="built with model model-a .*not with this model \\(model-b\\)"
    ):
        index.search(codes[:1], model_fingerprint="model-b")
    with pytest.raises(
        IndexMismatchError, match="the codes have 8 dimensions, but index .* holds 6-bit codes"
    ):
        index.search(np.ones((1, 8)), model_fingerprint="model-a")
    with pytest.raises(IndexMismatchError):
        index.add(codes[:1], items(1, start=10), model_fingerprint="model-b")
    assert len(CodeIndex.open(tmp_path / "index")) == 3


def test_a_label_outside_the_index_classes_is_refused(tmp_path):
    index, _ = new_index(tmp_path)
    with pytest.raises(ValueError, match="label 7, but the index knows 3 classes"):
        index.add(np.ones((1, BITS)), [IndexItem("x", 7)], model_fingerprint="model-a")


@pytest.mark.parametrize("failing_step", ["manifest", "vectors", "items"])
def test_a_save_interrupted_at_any_step_leaves_the_old_index_readable(tmp_path, monkeypatch, failing_step):
    index, codes = new_index(tmp_path, n=10)
    expected = search_rows(index, codes[:3], 4, "cosine")
    real_replace = os.replace

    def crash(src, dst):
        if failing_step in os.path.basename(dst):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr("rmnet.retrieval.index.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        index.add(np.ones((4, BITS)), items(4, start=10), model_fingerprint="model-a")
    monkeypatch.setattr("rmnet.retrieval.index.os.replace", real_replace)

    # On disk and in memory: still the old 10 codes, answering as before.
    reopened = CodeIndex.open(tmp_path / "index")
    assert len(reopened) == 10 and len(index) == 10
    assert (
        search_rows(reopened, codes[:3], 4, "cosine")
        == expected
        == search_rows(index, codes[:3], 4, "cosine")
    )
    # The next save succeeds and clears what the crash left behind.
    index.add(np.ones((4, BITS)), items(4, start=10), model_fingerprint="model-a")
    files = sorted(p.name for p in (tmp_path / "index").iterdir() if not p.name.startswith("."))
    assert files == ["items-000003.sqlite", MANIFEST, "vectors-000003.faiss"]
    assert len(CodeIndex.open(tmp_path / "index")) == 14


def test_a_failure_while_writing_the_vectors_leaves_the_old_index(tmp_path, monkeypatch):
    index, _ = new_index(tmp_path, n=4)

    def broken_write(*_):
        raise RuntimeError("disk full")

    monkeypatch.setattr("rmnet.retrieval.index.faiss.write_index", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        index.add(np.ones((1, BITS)), items(1, start=4), model_fingerprint="model-a")
    assert len(CodeIndex.open(tmp_path / "index")) == 4


def test_an_index_whose_files_disagree_is_refused_on_open(tmp_path):
    index, _ = new_index(tmp_path, n=5)
    items_file = tmp_path / "index" / json.loads((tmp_path / "index" / MANIFEST).read_text())["items"]
    index.close()
    with sqlite3.connect(items_file) as db:
        db.execute("DELETE FROM items WHERE row = 4")
    with pytest.raises(IndexCorruptError, match="counts 5 items, .* holds 5 vectors and .* 4 rows"):
        CodeIndex.open(tmp_path / "index")


def test_an_index_missing_a_file_is_refused_on_open(tmp_path):
    new_index(tmp_path, n=2)
    manifest = json.loads((tmp_path / "index" / MANIFEST).read_text())
    (tmp_path / "index" / manifest["vectors"]).unlink()
    with pytest.raises(IndexCorruptError, match="missing vectors-"):
        CodeIndex.open(tmp_path / "index")


def test_an_index_with_a_garbled_file_is_refused_on_open(tmp_path):
    new_index(tmp_path, n=2)
    manifest = json.loads((tmp_path / "index" / MANIFEST).read_text())
    (tmp_path / "index" / manifest["vectors"]).write_bytes(b"not a faiss index")
    with pytest.raises(IndexCorruptError, match="cannot be read"):
        CodeIndex.open(tmp_path / "index")


def test_an_index_folder_name_may_hold_characters_special_in_uris(tmp_path):
    root = tmp_path / "my index #1?"
    CodeIndex.create(root, model=MODEL, class_names=CLASSES).add(
        np.ones((1, BITS)), items(1), model_fingerprint="model-a"
    )
    assert len(CodeIndex.open(root)) == 1


def test_a_folder_without_an_index_is_not_opened(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an rmnet index"):
        CodeIndex.open(tmp_path)


def test_creating_over_an_index_needs_overwrite_and_replaces_it_only_when_images_are_added(tmp_path):
    new_index(tmp_path, n=3)
    with pytest.raises(FileExistsError, match="already holds an index"):
        CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    other = ModelIdentity("model-b", 4, "another model")
    replacement = CodeIndex.create(tmp_path / "index", model=other, class_names=["x"], overwrite=True)
    assert len(CodeIndex.open(tmp_path / "index")) == 3  # untouched until something is added
    replacement.add(np.ones((2, 4)), [IndexItem("p", 0), IndexItem("q", 0)], model_fingerprint="model-b")
    reopened = CodeIndex.open(tmp_path / "index")
    assert (len(reopened), reopened.model, reopened.class_names) == (2, other, ["x"])


def test_a_writer_that_opened_an_older_generation_is_refused(tmp_path):
    first, _ = new_index(tmp_path, n=2)
    second = CodeIndex.open(tmp_path / "index")
    first.add(np.ones((1, BITS)), items(1, start=2), model_fingerprint="model-a")
    with pytest.raises(IndexBusyError, match="changed by another process since it was opened"):
        second.add(np.ones((1, BITS)), items(1, start=3), model_fingerprint="model-a")


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    index, _ = new_index(tmp_path, n=1)
    with open(tmp_path / "index" / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(IndexBusyError, match="another process is writing"):
            index.add(np.ones((1, BITS)), items(1, start=1), model_fingerprint="model-a")
    assert len(CodeIndex.open(tmp_path / "index")) == 1


def test_search_runs_faiss_on_one_thread_and_restores_the_callers_setting(tmp_path, monkeypatch):
    index, codes = new_index(tmp_path, n=20)
    seen = []
    real_search = index._nearest
    monkeypatch.setattr(
        index, "_nearest", lambda *a: seen.append(faiss.omp_get_max_threads()) or real_search(*a)
    )
    faiss.omp_set_num_threads(2)
    index.search(codes[:3], 5, model_fingerprint="model-a")
    assert seen == [1, 1, 1] and faiss.omp_get_max_threads() == 2
