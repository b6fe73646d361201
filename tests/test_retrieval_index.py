"""CodeIndex: FAISS + SQLite in one folder, consistent on disk whatever happens during a save."""

import fcntl
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

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
    return search_rows_of(index, queries, k, metric, "model-a")


def search_rows_of(index, queries, k, metric, fingerprint):
    return [
        [hit.row for hit in hits]
        for hits in index.search(queries, k, model_fingerprint=fingerprint, metric=metric)
    ]


def test_an_empty_index_refuses_to_search_with_a_clear_message(tmp_path):
    index, _ = new_index(tmp_path)
    assert len(index) == 0
    with pytest.raises(ValueError, match="is empty: add images first"):
        index.search(np.ones(BITS), model_fingerprint="model-a")


@pytest.mark.parametrize("bits", [BITS, 24])  # 24 bits: Hamming through FAISS, not code buckets
@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_search_returns_the_same_ranking_as_the_metrics_including_ties(tmp_path, metric, bits):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, bits)).astype(np.float32)
    codes = np.concatenate([base, base[:15], 2 * base[:10], 3 * base[:5]])  # identical and collinear
    model = ModelIdentity("model-a", bits)
    index = CodeIndex.create(tmp_path / "index", model=model, class_names=CLASSES)
    index.add(codes, items(len(codes)), model_fingerprint="model-a")
    queries = np.concatenate([base[:5], rng.normal(size=(15, bits))]).astype(np.float32)
    for k in (1, 3, 10, 70):
        expected, distances = rank_database(queries, codes, metric, k=k)
        hits = index.search(queries, k, model_fingerprint="model-a", metric=metric)
        assert [[hit.row for hit in row] for row in hits] == expected.tolist()
        assert [[hit.distance for hit in row] for row in hits] == distances.tolist()


def test_identical_codes_tie_exactly_wherever_they_sit_in_a_batch(tmp_path):
    """Copies of one code at rows that fall in different BLAS blocks rank as one tie, in row order,
    in the metrics (the whole query batch at once) and in the index (one query at a time)."""
    rng = np.random.default_rng(3)
    codes = rng.normal(size=(4200, 16)).astype(np.float32)
    copies = [7, 64, 65, 1000, 2049, 4095, 4199]
    codes[copies] = codes[7]
    codes[[300, 301]] = 4 * codes[7]  # collinear by a power of two: the same unit vector, bit for bit
    queries = np.concatenate([codes[[7, 7, 2049]], rng.normal(size=(29, 16)), codes[7:8]]).astype(np.float32)
    order, distances = rank_database(queries, codes, "cosine", k=9)
    for i in (0, 1, 2, 32):  # the same query at different positions of the batch
        assert order[i].tolist() == sorted([*copies, 300, 301])
        assert len(set(distances[i].tolist())) == 1
        assert rank_database(queries[i : i + 1], codes, "cosine", k=9)[0].tolist() == [order[i].tolist()]
    single = rank_database(queries, codes[::-1].copy(), "cosine", k=9)[1]
    assert single.tolist() == distances.tolist()  # the distance of a pair does not depend on positions
    index = CodeIndex.create(tmp_path / "index", model=ModelIdentity("m", 16), class_names=CLASSES)
    index.add(codes, items(len(codes)), model_fingerprint="m")
    for metric in ("cosine", "hamming"):
        expected, _ = rank_database(queries, codes, metric, k=12)
        assert search_rows_of(index, queries, 12, metric, "m") == expected.tolist()


class _AdversarialFlat:
    """A FAISS float index as another machine's BLAS might answer: similarities off by up to 1e-7,
    and ties won by the HIGHER rows. What CodeIndex returns must not change."""

    def __init__(self, index, rng):
        self.index, self.rng, self.ntotal, self.d = index, rng, index.ntotal, index.d

    def _all(self, query):
        similarity = self.index.reconstruct_n(0, self.ntotal) @ query[0]
        similarity = (similarity + self.rng.uniform(-1e-7, 1e-7, self.ntotal)).astype(np.float32)
        rows = np.arange(self.ntotal)
        order = np.lexsort((-rows, -np.round(similarity, 5)))  # high rows first among near-ties
        return similarity[order], rows[order]

    def search(self, query, k):
        similarity, rows = self._all(query)
        return similarity[None, :k], rows[None, :k]

    def range_search(self, query, radius):
        similarity, rows = self._all(query)
        keep = similarity > radius
        return np.array([0, keep.sum()]), similarity[keep], rows[keep]

    def reconstruct_batch(self, rows):
        return self.index.reconstruct_batch(rows)


class _AdversarialBinary:
    """faiss.IndexBinaryFlat answering ties with the HIGHER rows first."""

    def __init__(self, index):
        self.index, self.ntotal = index, index.ntotal

    def _all(self, query):
        distances, rows = self.index.search(query, self.ntotal)
        order = np.lexsort((-rows[0], distances[0]))
        return distances[0][order], rows[0][order]

    def search(self, query, k):
        distances, rows = self._all(query)
        return distances[None, :k], rows[None, :k]

    def range_search(self, query, radius):
        distances, rows = self._all(query)
        keep = distances < radius
        return np.array([0, keep.sum()]), distances[keep], rows[keep]


@pytest.mark.parametrize("metric", ["cosine", "hamming"])
def test_ties_at_the_kth_place_are_resolved_whatever_order_faiss_returns_them_in(tmp_path, metric):
    """Fails if _nearest drops the probe beyond the k-th result or the final tie-break by row."""
    rng = np.random.default_rng(5)
    bits = 24  # Hamming through faiss.IndexBinaryFlat
    base = rng.normal(size=(6, bits)).astype(np.float32)
    codes = base[rng.integers(0, 6, 300)]  # 300 codes, 6 distinct: every query meets big ties
    index = CodeIndex.create(tmp_path / "index", model=ModelIdentity("m", bits), class_names=CLASSES)
    index.add(codes, items(len(codes)), model_fingerprint="m")
    current = index._current
    if metric == "hamming":
        current.hamming().index = _AdversarialBinary(current.hamming().index)
    current.vectors = _AdversarialFlat(current.vectors, rng)
    queries = np.concatenate([base, rng.normal(size=(6, bits))]).astype(np.float32)
    for k in (3, 10, 60):
        expected, _ = rank_database(queries, codes, metric, k=k)
        assert search_rows_of(index, queries, k, metric, "m") == expected.tolist()


def test_hamming_buckets_give_the_flat_scan_ranking_of_16_bit_codes(tmp_path):
    """Clustered 16-bit codes: most queries meet thousands of ties spread over many buckets."""
    rng = np.random.default_rng(6)
    centres = rng.choice([-1.0, 1.0], size=(4, 16))
    codes = (centres[rng.integers(0, 4, 3000)] + 0.6 * rng.normal(size=(3000, 16))).astype(np.float32)
    index = CodeIndex.create(tmp_path / "index", model=ModelIdentity("m", 16), class_names=CLASSES)
    index.add(codes, items(len(codes)), model_fingerprint="m")
    queries = np.concatenate([codes[:6], -centres, rng.normal(size=(6, 16))]).astype(np.float32)
    ranking, all_distances = rank_database(queries, codes, "hamming")
    for k in (1, 10, 100, 700):
        expected, distances = ranking[:, :k], all_distances[:, :k]
        hits = index.search(queries, k, model_fingerprint="m", metric="hamming")
        assert [[hit.row for hit in row] for row in hits] == expected.tolist()
        assert [[hit.distance for hit in row] for row in hits] == distances.tolist()


def test_hits_carry_what_was_stored_about_each_image(tmp_path):
    index = CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    item = IndexItem("ISIC_1", 2, "/data/ISIC_1.jpg", "abc", {"age": 55, "site": "back"})
    index.add(np.ones((1, BITS)), [item], model_fingerprint="model-a")
    (hit,) = index.search(np.ones(BITS), k=5, model_fingerprint="model-a")[0]
    assert (hit.rank, hit.row, hit.image_id, hit.path) == (1, 0, "ISIC_1", "/data/ISIC_1.jpg")
    assert (hit.label, hit.class_name, hit.metadata) == (2, "BCC", {"age": 55, "site": "back"})
    assert hit.distance == pytest.approx(0.0, abs=1e-6)


def test_items_are_listed_in_row_order_and_found_by_id(tmp_path):
    index = CodeIndex.create(tmp_path / "index", model=MODEL, class_names=CLASSES)
    stored = [IndexItem(f"id{i}", i % 3, f"/data/{i}.jpg", f"h{i}", {"i": i}) for i in range(700)]
    index.add(np.ones((700, BITS)), stored, model_fingerprint="model-a")
    listed = index.items()
    assert [(s.row, s.image_id, s.label, s.class_name) for s in listed[:2]] == [
        (0, "id0", 0, "MEL"),
        (1, "id1", 1, "NV"),
    ]
    assert len(listed) == 700 and [s.row for s in index.items(600, 603)] == [600, 601, 602]
    found = index.find("id650")
    assert (found.row, found.path, found.content_hash, found.metadata) == (
        650,
        "/data/650.jpg",
        "h650",
        {"i": 650},
    )
    assert index.find("nope") is None
    assert (
        len(index.search(np.ones(BITS), 700, model_fingerprint="model-a")[0]) == 700
    )  # beyond one SQL chunk


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

    monkeypatch.setattr(faiss, "write_index", broken_write)
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


def test_creating_with_overwrite_where_there_is_no_index_writes_an_empty_one(tmp_path):
    CodeIndex.create(tmp_path / "new", model=MODEL, class_names=CLASSES, overwrite=True)
    assert len(CodeIndex.open(tmp_path / "new")) == 0


def test_a_writer_that_opened_an_older_generation_adds_to_the_latest_one(tmp_path):
    first, _ = new_index(tmp_path, n=2)
    second = CodeIndex.open(tmp_path / "index")
    first.add(np.ones((1, BITS)), items(1, start=2), model_fingerprint="model-a")
    result = second.add(np.ones((2, BITS)), items(2, start=2), model_fingerprint="model-a")
    assert result.added == ["img3"] and result.skipped == [("img2", "already in the index (same image id)")]
    reopened = CodeIndex.open(tmp_path / "index")
    assert len(reopened) == len(second) == 4 and reopened.generation == second.generation
    assert first.refresh() and len(first) == 4 and not first.refresh()


def test_refresh_reads_nothing_until_another_process_commits(tmp_path, monkeypatch):
    import rmnet.retrieval.index as index_module

    first, _ = new_index(tmp_path, n=2)
    assert not first.refresh()  # looks at the manifest once

    def must_not_read(root):
        raise AssertionError("refresh() read the manifest although nothing was committed")

    with monkeypatch.context() as patched:
        patched.setattr(index_module, "_generation_on_disk", must_not_read)
        assert not first.refresh() and not first.refresh()  # a stat of the manifest, nothing more
    CodeIndex.open(tmp_path / "index").add(np.ones((1, BITS)), items(1, start=2), model_fingerprint="model-a")
    assert first.refresh() and len(first) == 3


def test_a_writer_waits_for_the_lock_then_applies_its_change_or_gives_up_after_the_timeout(tmp_path):
    index, _ = new_index(tmp_path, n=1)
    with open(tmp_path / "index" / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(IndexBusyError, match="for more than 0.2 s.*--lock-timeout"):
            index.add(np.ones((1, BITS)), items(1, start=1), model_fingerprint="model-a", lock_timeout=0.2)
        assert time.monotonic() - start >= 0.2
        threading.Timer(0.3, fcntl.flock, (handle, fcntl.LOCK_UN)).start()
        index.add(np.ones((1, BITS)), items(1, start=1), model_fingerprint="model-a", lock_timeout=10)
    assert len(CodeIndex.open(tmp_path / "index")) == 2


@pytest.fixture
def faiss_threads():
    """The caller's FAISS OpenMP setting, restored after the test."""
    threads = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(threads)


def test_searches_run_faiss_on_one_thread_set_once_per_thread(tmp_path, monkeypatch, faiss_threads):
    index, codes = new_index(tmp_path, n=20)
    seen, setting = [], []
    real_nearest, real_set = CodeIndex._nearest, faiss.omp_set_num_threads
    monkeypatch.setattr(
        CodeIndex,
        "_nearest",
        staticmethod(lambda *a: seen.append(faiss.omp_get_max_threads()) or real_nearest(*a)),
    )
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: setting.append(n) or real_set(n))
    faiss.omp_set_num_threads(2)
    setting.clear()

    def searches():
        for _ in range(3):
            index.search(codes[:2], 5, model_fingerprint="model-a")

    worker = threading.Thread(target=searches)
    worker.start()
    worker.join()
    assert seen == [1] * 6 and setting == [1]  # set once in the searching thread, not per call
    assert faiss.omp_get_max_threads() == 2  # OpenMP keeps it per thread: this one is untouched


def test_searches_in_several_threads_stay_consistent_while_another_thread_adds(tmp_path):
    rng = np.random.default_rng(8)
    index, codes = new_index(tmp_path, n=30)
    batches = [rng.normal(size=(5, BITS)).astype(np.float32) for _ in range(6)]
    queries = rng.normal(size=(4, BITS)).astype(np.float32)
    database, expected = codes, {}  # what every generation must answer, by its size
    for batch in [None, *batches]:
        database = database if batch is None else np.concatenate([database, batch])
        expected[len(database)] = {
            m: rank_database(queries, database, m, k=8)[0].tolist() for m in ("cosine", "hamming")
        }
    failures, seen_sizes, done = [], set(), threading.Event()

    def searcher(metric):
        last = 0
        while not done.is_set() or last < len(database):
            size = len(index)
            hits = index.search(queries, 8, model_fingerprint="model-a", metric=metric)
            rows = [[hit.row for hit in row] for row in hits]
            ids = {hit.image_id for row in hits for hit in row}
            answers = [sizes for sizes, by_metric in expected.items() if by_metric[metric] == rows]
            if not answers or ids != {f"img{r}" for row in rows for r in row} or max(answers) < last:
                failures.append((metric, size, rows))
                return
            seen_sizes.add(max(answers, default=0))
            last = max(answers, default=last)

    threads = [threading.Thread(target=searcher, args=(m,)) for m in ("cosine", "hamming") * 2]
    for thread in threads:
        thread.start()
    start = 30
    for batch in batches:
        index.add(batch, items(5, start=start), model_fingerprint="model-a")
        start += 5
    done.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures and len(index) == len(database) == 60
    assert len(seen_sizes) > 1  # the searchers did see the index grow


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from rmnet.retrieval.index import CodeIndex, IndexItem

    root, name, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    index = CodeIndex.open(root)  # before the other writer commits: its generation will be stale
    open(ready, "w").close()
    codes = np.random.default_rng(len(name)).normal(size=(3, 6)).astype(np.float32)
    items = [IndexItem(f"{name}-{i}", i % 3) for i in range(3)]
    result = index.add(codes, items, model_fingerprint="model-a", lock_timeout=60)
    print(len(result.added), len(index))
    """
)


def test_two_processes_writing_one_index_wait_for_each_other_and_keep_both_changes(tmp_path):
    new_index(tmp_path, n=4)
    root = tmp_path / "index"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # both writers open the index, then wait for this lock
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(root), name, str(tmp_path / f"{name}.ready")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for name in ("first", "second")
        ]
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{n}.ready").exists() for n in ("first", "second")):
            assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
            time.sleep(0.02)
        time.sleep(0.1)
        fcntl.flock(lock, fcntl.LOCK_UN)
    outputs = [writer.communicate(timeout=60) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    assert sorted(out.split()[1] for out, _ in outputs) == ["10", "7"]  # each added 3, in turn
    index = CodeIndex.open(root)
    assert len(index) == 10 and index.labels().tolist() == [0, 1, 2, 0] + [0, 1, 2] * 2
