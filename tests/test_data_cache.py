"""prepare_cache: resized upright RGB copies, the same table rows, resumable after an interruption."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rmnet.data import ImageDataset, UnreadableImageError, load_image_table, prepare_cache, read_skipped
from rmnet.data.images import SkippedImageWarning


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(process.stdout)


def test_cached_images_have_the_short_edge_asked_for_and_keep_their_aspect(isic_root, tmp_path):
    table = load_image_table(isic_root)
    cached = prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    for original, path in zip(table.paths, cached.paths, strict=True):
        assert path.parent == tmp_path / "cache" and path.suffix == ".jpg"
        with Image.open(path) as small, Image.open(original) as big:
            assert small.mode == "RGB" and min(small.size) == 16
            w, h = big.size
            if big.getexif().get(0x0112, 1) in (6, 8):
                w, h = h, w
            assert abs(small.width / small.height - w / h) < 0.1


def test_cached_table_keeps_ids_labels_groups_and_metadata(isic_root, tmp_path):
    table = load_image_table(isic_root)
    cached = prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    assert cached.ids == table.ids and cached.groups == table.groups
    np.testing.assert_array_equal(cached.labels, table.labels)
    assert cached.metadata.equals(table.metadata) and cached.class_names == table.class_names
    assert [p.stem for p in cached.paths] == table.ids


def test_exif_rotation_is_applied_once_in_the_cache(isic_root, isic_quirks, tmp_path):
    table = load_image_table(isic_root)
    cached = prepare_cache(table, tmp_path / "cache", short_edge=12, workers=1)
    with Image.open(cached.paths[table.ids.index(isic_quirks["exif_rotated"])]) as image:
        assert image.size == (12, 16)  # upright 24×32, no orientation tag left to apply again
        assert image.getexif().get(0x0112, 1) == 1


def test_images_smaller_than_the_short_edge_are_not_enlarged(lesion_root, tmp_path):
    cached = prepare_cache(load_image_table(lesion_root), tmp_path / "cache", short_edge=256, workers=1)
    with Image.open(cached.paths[0]) as image:
        assert image.size == (24, 24)
    assert cached.paths[0] == tmp_path / "cache" / "globules" / "globules_0000.jpg"


def test_ids_with_parent_or_absolute_paths_stay_inside_the_cache(lesion_root, tmp_path):
    table = load_image_table(lesion_root).subset([0, 1])
    table.ids = ["../../outside", "/abs/olute"]
    cached = prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    assert cached.paths == [
        tmp_path / "cache" / "__" / "__" / "outside.jpg",
        tmp_path / "cache" / "abs" / "olute.jpg",
    ]
    assert all(p.is_file() for p in cached.paths)


def test_parallel_workers_give_the_same_files(isic_root, tmp_path):
    table = load_image_table(isic_root).subset(range(12))
    serial = prepare_cache(table, tmp_path / "one", short_edge=16, workers=1)
    parallel = prepare_cache(table, tmp_path / "two", short_edge=16, workers=2)
    for a, b in zip(serial.paths, parallel.paths, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_an_interrupted_cache_is_completed_without_redoing_finished_files(isic_root, tmp_path):
    table = load_image_table(isic_root)
    out = tmp_path / "cache"
    prepare_cache(table.subset(range(10)), out, short_edge=16, workers=1)  # the run that was cut short
    done = {p: p.stat().st_mtime_ns for p in out.glob("*.jpg")}
    os.utime(next(iter(done)), ns=(1, 1))  # a marker: a redone file would get a new time
    marked = {p: p.stat().st_mtime_ns for p in done}
    cached = prepare_cache(table, out, short_edge=16, workers=1)
    assert all(p.is_file() for p in cached.paths) and len(list(out.glob("*.jpg"))) == len(table)
    assert {p: p.stat().st_mtime_ns for p in done} == marked


def test_a_leftover_temporary_file_is_not_taken_as_done(isic_root, tmp_path):
    table = load_image_table(isic_root).subset(range(4))
    out = tmp_path / "cache"
    cached = prepare_cache(table, out, short_edge=16, workers=1)
    victim = cached.paths[2]
    victim.unlink()
    leftover = victim.with_name(f".{victim.name}.{_dead_pid()}.tmp")
    leftover.write_bytes(b"\xff\xd8half a jpeg")  # what a killed run leaves behind
    prepare_cache(table, out, short_edge=16, workers=1)
    assert not leftover.exists()
    with Image.open(victim) as image:
        image.load()
        assert min(image.size) == 16


def test_a_temporary_file_of_a_running_writer_is_left_alone(isic_root, tmp_path):
    table = load_image_table(isic_root).subset(range(2))
    prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    in_progress = tmp_path / "cache" / f".ISIC_0000001.jpg.{os.getpid()}.tmp"
    in_progress.write_bytes(b"being written")
    prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    assert in_progress.exists()


def test_processes_caching_the_same_folder_at_once_all_succeed(isic_root, tmp_path):
    table = load_image_table(isic_root)
    # Not "fork": forking a process that runs PyTorch or OpenMP threads can deadlock the child.
    context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if os.name == "posix":
        context.set_forkserver_preload(["rmnet.data.cache"])  # imported once, not once per child
    with context.Pool(3) as pool:  # like torchrun ranks, each preparing the cache it needs
        results = pool.starmap(prepare_cache, [(table, tmp_path / "cache", 16, 1)] * 3)
    assert all(r.paths == results[0].paths for r in results)
    for path in results[0].paths:
        with Image.open(path) as image:
            image.load()
    assert not list((tmp_path / "cache").glob(".*"))


def test_a_cache_made_with_another_short_edge_is_refused(isic_root, tmp_path):
    table = load_image_table(isic_root).subset(range(2))
    prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    with pytest.raises(ValueError, match="short_edge"):
        prepare_cache(table, tmp_path / "cache", short_edge=20, workers=1)


def test_a_non_empty_folder_that_is_not_a_cache_is_refused(isic_root, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        prepare_cache(load_image_table(isic_root), tmp_path, short_edge=16, workers=1)


def test_unreadable_source_is_named_after_the_others_are_cached(isic_root, tmp_path):
    root = Path(shutil.copytree(isic_root, tmp_path / "isic"))
    (root / "ISIC_2019_Training_Input" / "ISIC_0000007.jpg").write_bytes(b"garbage")
    table = load_image_table(root)
    with pytest.raises(
        UnreadableImageError, match=r"could not cache 1 of 32 images: .*ISIC_0000007.jpg"
    ) as error:
        prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1)
    # The advice leads somewhere that works, in the command line's words.
    assert "pass --on-error skip to leave them out" in str(error.value) and "remove" not in str(error.value)
    assert len(list((tmp_path / "cache").glob("*.jpg"))) == 31
    with pytest.warns(SkippedImageWarning, match="ISIC_0000007.jpg"):
        cached = prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1, on_error="skip")
    assert cached.paths[7] == table.paths[7] and cached.paths[6].parent == tmp_path / "cache"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_skip_names_each_image_once_and_records_the_list_in_the_cache(isic_root, tmp_path):
    root = Path(shutil.copytree(isic_root, tmp_path / "isic"))
    _truncate(root / "ISIC_2019_Training_Input" / "ISIC_0000011.jpg")  # a truncated JPEG
    (root / "ISIC_2019_Training_Input" / "ISIC_0000020.jpg").write_bytes(b"not a jpeg")
    table = load_image_table(root)
    with pytest.warns(SkippedImageWarning) as warned:
        cached = prepare_cache(table, tmp_path / "cache", short_edge=16, workers=2, on_error="skip")
    lines = sorted(str(w.message) for w in warned)
    assert [line.split(" (")[0] for line in lines] == [
        "skipped image ISIC_0000011",
        "skipped image ISIC_0000020",
    ]
    assert "truncated" in lines[0].lower() and all("\n" not in line for line in lines)

    # The cache records what it left out; the table knows, so training leaves them out quietly.
    assert json.loads((tmp_path / "cache" / "skipped.json").read_text())["skipped"][0]["id"] == "ISIC_0000011"
    assert [(s.id, s.path) for s in read_skipped(tmp_path / "cache")] == [
        ("ISIC_0000011", table.paths[11]),
        ("ISIC_0000020", table.paths[20]),
    ]
    assert set(cached.unreadable) == {"ISIC_0000011", "ISIC_0000020"} and cached.ids == table.ids
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning about the same images
        dataset = ImageDataset(cached, on_error="skip")
    assert len(dataset) == 30 and {s.id for s in dataset.skipped} == {"ISIC_0000011", "ISIC_0000020"}

    # Fixed files are cached by the next run, and the record follows.
    shutil.copy(isic_root / "ISIC_2019_Training_Input" / "ISIC_0000011.jpg", table.paths[11])
    with pytest.warns(SkippedImageWarning, match="ISIC_0000020"):
        again = prepare_cache(table, tmp_path / "cache", short_edge=16, workers=1, on_error="skip")
    assert [s.id for s in read_skipped(tmp_path / "cache")] == ["ISIC_0000020"]
    assert again.paths[11].parent == tmp_path / "cache" and list(again.unreadable) == ["ISIC_0000020"]


def test_a_complete_cache_records_that_nothing_was_skipped(isic_root, tmp_path):
    prepare_cache(load_image_table(isic_root).subset(range(3)), tmp_path / "cache", short_edge=16, workers=1)
    assert read_skipped(tmp_path / "cache") == []
    assert read_skipped(tmp_path / "nowhere") == []


def test_the_worker_pool_does_not_fork_this_process(isic_root, tmp_path, monkeypatch):
    methods = []
    original = ProcessPoolExecutor.__init__

    def spy(self, *args, mp_context=None, **kwargs):
        methods.append(mp_context.get_start_method() if mp_context else multiprocessing.get_start_method())
        original(self, *args, mp_context=mp_context, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "__init__", spy)
    prepare_cache(load_image_table(isic_root).subset(range(4)), tmp_path / "cache", short_edge=16, workers=2)
    assert methods and methods[0] in ("forkserver", "spawn")
