"""`rmnet index build|add|info` and `rmnet search`, end to end on a tiny trained run."""

import argparse
import fcntl
import json
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from rmnet.config import TrainConfig
from rmnet.data import prepare_cache
from rmnet.retrieval.cli import add_commands, main
from rmnet.retrieval.index import CodeIndex
from rmnet.runs import Run
from rmnet.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, lesion_root):
    """A run of a small CNN with an 8-bit hash layer, trained for one epoch on generated lesions."""
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        arch="small_cnn",
        model_options={"width": 8},
        hash_bits=8,
        image_size=16,
        epochs=1,
        batch_size=8,
        workers=0,
        device="cpu",
        data=str(lesion_root),
    )
    train(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def index_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("indexes") / "train"
    assert main(["index", "build", str(run_dir), "--index", str(out), "--device", "cpu"]) == 0
    return out


def test_build_indexes_the_training_split_of_the_run(run_dir, index_dir, capsys):
    run = Run(run_dir)
    with CodeIndex.open(index_dir) as index:
        assert len(index) == len(run.split.train)
        assert sorted(index.labels()) == sorted(run.table.labels[run.split.train])
        assert index.model.run == str(run_dir.resolve()) and index.model.code_length == 8
    assert main(["index", "info", "--index", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{len(run.split.train)} images, 8-bit codes" in out
    assert "small_cnn" in out and "images per class: globules 8, lobed 8, regular 8, streaks 8" in out


def test_search_prints_the_diagnosis_and_the_k_nearest_cases_and_draws_a_gallery(
    run_dir, index_dir, tmp_path, capsys
):
    run = Run(run_dir)
    query = run.table.paths[run.split.train[0]]  # an indexed image: it must find itself first
    gallery = tmp_path / "gallery.png"
    assert (
        main(["search", str(query), "--index", str(index_dir), "--top-k", "5", "--gallery", str(gallery)])
        == 0
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"query: {query}"
    assert lines[1].startswith("predicted diagnosis: ") and "(p = " in lines[1]
    assert lines[2] == "5 most similar cases (cosine distance):"
    rank, image_id, _, distance, _ = lines[4].split()
    assert (rank, image_id) == ("1", run.table.ids[run.split.train[0]])
    assert float(distance) == pytest.approx(0, abs=1e-4)
    assert [line.split()[0] for line in lines[4:9]] == ["1", "2", "3", "4", "5"]
    assert lines[-1] == f"gallery: {gallery}"
    assert gallery.is_file() and gallery.stat().st_size > 10_000


def test_search_as_json_with_hamming_distances(run_dir, index_dir, capsys):
    run = Run(run_dir)
    queries = [str(run.table.paths[i]) for i in run.split.test[:2]]
    assert (
        main(["search", *queries, "--index", str(index_dir), "--top-k", "3", "--metric", "hamming", "--json"])
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in results] == queries
    for result in results:
        assert result["metric"] == "hamming" and len(result["hits"]) == 3
        distances = [hit["distance"] for hit in result["hits"]]
        assert distances == sorted(distances) and all(d == int(d) for d in distances)


def test_an_unreadable_query_fails_the_command_after_the_readable_ones_are_answered(
    index_dir, run_dir, tmp_path, capsys
):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    good = Run(run_dir).table.paths[0]
    assert main(["search", str(good), str(broken), "--index", str(index_dir), "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    assert f"query: {good}" in captured.out
    assert "1 of 2 images could not be read" in captured.err and str(broken) in captured.err


def test_add_appends_new_images_and_skips_those_already_present_under_any_name(
    run_dir, index_dir, tmp_path, capsys
):
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy)
    run = Run(run_dir)
    new = [run.table.paths[i] for i in run.split.test[:2]]
    present = run.table.paths[run.split.train[0]]
    before = len(CodeIndex.open(copy))
    assert main(["index", "add", "--index", str(copy), *map(str, new), str(present), "--label", "lobed"]) == 0
    captured = capsys.readouterr()
    assert f"added 2 images to {copy} (now {before + 2})" in captured.out
    # The build stored it as "<class>/<name>"; `add` names files by their stem: the content matches.
    stored_id = run.table.ids[run.split.train[0]]
    assert f"skipped {present.stem}: same file content as {stored_id}" in captured.err
    index = CodeIndex.open(copy)
    assert index.labels()[-2:].tolist() == [index.class_names.index("lobed")] * 2


def test_add_refuses_an_unknown_class(index_dir, run_dir, capsys):
    image = Run(run_dir).table.paths[0]
    assert main(["index", "add", "--index", str(index_dir), str(image), "--label", "melanoma"]) == 1
    assert (
        "unknown class 'melanoma'; the index's classes are globules, lobed, regular, streaks"
        in capsys.readouterr().err
    )


def test_an_index_is_refused_by_a_run_whose_model_differs(run_dir, index_dir, tmp_path, capsys):
    other = tmp_path / "other-run"
    shutil.copytree(run_dir, other)
    checkpoint = torch.load(other / "checkpoints" / "best.pt", weights_only=True)
    checkpoint["model"]["hash.weight"] += 0.1
    torch.save(checkpoint, other / "checkpoints" / "best.pt")
    image = Run(run_dir).table.paths[0]
    assert main(["search", str(image), "--index", str(index_dir), "--run", str(other)]) == 1
    assert "codes of different models cannot be compared" in capsys.readouterr().err


def test_build_refuses_to_replace_an_index_unless_told_to(run_dir, index_dir, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(index_dir, out)
    assert main(["index", "build", str(run_dir), "--index", str(out)]) == 1
    assert "already holds an index" in capsys.readouterr().err
    args = ["index", "build", str(run_dir), "--index", str(out), "--part", "test", "--overwrite"]
    assert main(args) == 0
    assert len(CodeIndex.open(out)) == len(Run(run_dir).split.test)


def test_every_option_of_every_command_is_explained_in_its_help():
    parser = argparse.ArgumentParser(prog="rmnet")
    add_commands(parser.add_subparsers(dest="command"))
    commands = parser._subparsers._group_actions[0].choices
    index_commands = commands["index"]._subparsers._group_actions[0].choices
    for name, command in [
        ("search", commands["search"]),
        *(("index " + n, p) for n, p in index_commands.items()),
    ]:
        for action in command._actions:
            assert action.help, f"`rmnet {name}` option {action.option_strings or action.dest} has no help"
        assert callable(command.get_default("run")), name


def test_several_queries_get_one_gallery_each_even_with_the_same_file_name(
    run_dir, index_dir, tmp_path, capsys
):
    run = Run(run_dir)
    queries = []
    for folder, i in (("qa", 0), ("qb", 1)):
        (tmp_path / folder).mkdir()
        queries.append(tmp_path / folder / "q.png")
        shutil.copy(run.table.paths[run.split.test[i]], queries[-1])
    gallery = tmp_path / "coll.png"
    args = [
        "search",
        *map(str, queries),
        "--index",
        str(index_dir),
        "--top-k",
        "2",
        "--gallery",
        str(gallery),
    ]
    assert main(args) == 0
    written = [tmp_path / "coll-1-q.png", tmp_path / "coll-2-q.png"]
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("gallery:")] == [
        f"gallery: {path}" for path in written
    ]
    assert all(path.is_file() for path in written) and not gallery.exists()


def test_build_prints_a_next_command_that_the_shell_reads_back_and_finds_moved_data(
    run_dir, lesion_root, tmp_path, capsys
):
    moved = tmp_path / "moved data"
    shutil.copytree(lesion_root, moved)
    out = tmp_path / "my index"
    assert main(["index", "build", str(run_dir), "--index", str(out), "--data", str(moved)]) == 0
    next_line = capsys.readouterr().out.splitlines()[-1]
    assert shlex.split(next_line.removeprefix("next: ")) == ["rmnet", "search", "IMAGE", "--index", str(out)]
    with CodeIndex.open(out) as index:
        hit = index.search(index.codes()[:1], 1, model_fingerprint=index.model.fingerprint)[0][0]
        assert hit.path.startswith(str(moved.resolve())) and hit.cached_path is None


def test_build_refuses_data_that_lacks_the_images_of_the_runs_split(run_dir, lesion_root, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(lesion_root, other)
    for path in list((other / "lobed").iterdir())[:2]:
        path.unlink()
    assert main(["index", "build", str(run_dir), "--index", str(tmp_path / "i"), "--data", str(other)]) == 1
    assert "images are not in this one" in capsys.readouterr().err


def test_an_index_built_through_the_cache_knows_the_originals(run_dir, tmp_path, capsys):
    out, cache = tmp_path / "cached-index", tmp_path / "cache"
    run = Run(run_dir)
    prepare_cache(run.table, cache, short_edge=run.config.resize_short_edge(), workers=1)  # `rmnet prepare`
    assert main(["index", "build", str(run_dir), "--index", str(out), "--cache", str(cache)]) == 0
    original = run.table.paths[run.split.train[0]]
    with CodeIndex.open(out) as index:
        hits = index.search(index.codes()[:1], 1, model_fingerprint=index.model.fingerprint)[0]
        assert hits[0].path == str(original.resolve())  # the gallery shows the original
        assert hits[0].cached_path.startswith(str(cache.resolve()))  # the codes came from this copy
    copy = tmp_path / "renamed-copy.png"
    shutil.copy(original, copy)  # byte-identical to an indexed original
    capsys.readouterr()
    assert main(["index", "add", "--index", str(out), str(copy), "--label", "lobed"]) == 0
    captured = capsys.readouterr()
    assert "added 0 images" in captured.out
    assert f"skipped renamed-copy: same file content as {run.table.ids[run.split.train[0]]}" in captured.err


def test_add_gives_up_after_the_lock_timeout_while_another_process_writes(
    run_dir, index_dir, tmp_path, capsys
):
    copy = tmp_path / "copy"
    shutil.copytree(index_dir, copy)
    image = Run(run_dir).table.paths[Run(run_dir).split.test[0]]
    with open(copy / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        args = ["index", "add", "--index", str(copy), str(image), "--label", "0", "--lock-timeout", "0.2"]
        assert main(args) == 1
    assert "another process has been writing index" in capsys.readouterr().err


def test_the_retrieval_commands_import_neither_torch_nor_faiss():
    """`rmnet --help` must answer at once: the commands import heavy modules only when they run."""
    code = (
        "import sys, rmnet.retrieval, rmnet.retrieval.cli; "
        "print(sorted(m for m in ('torch', 'faiss', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_constants_match_the_library():
    from rmnet.metrics.retrieval import METRICS
    from rmnet.retrieval import cli, index

    assert cli.RANKINGS == METRICS and cli.DEFAULT_LOCK_TIMEOUT == index.DEFAULT_LOCK_TIMEOUT


def test_search_has_top_k_and_no_k_option(capsys):
    with pytest.raises(SystemExit):
        main(["search", "x.png", "--index", "i", "--k", "3"])
    assert "unrecognized arguments: --k" in capsys.readouterr().err


def test_build_reports_byte_identical_images_within_the_data_set(run_dir, lesion_root, tmp_path, capsys):
    run = Run(run_dir)
    copy = tmp_path / "data"
    shutil.copytree(lesion_root, copy)
    first, second = run.split.train[:2]
    original, duplicate = (copy / run.table.paths[i].relative_to(lesion_root) for i in (first, second))
    duplicate.write_bytes(original.read_bytes())  # one image stored twice under two ids
    out = tmp_path / "index"
    assert main(["index", "build", str(run_dir), "--index", str(out), "--data", str(copy)]) == 0
    captured = capsys.readouterr()
    ids = run.table.ids
    assert f"skipped {ids[second]}: same file content as {ids[first]}" in captured.err
    assert "1 image is a byte-identical copy of another in the train split" in captured.out
    assert len(CodeIndex.open(out)) == len(run.split.train) - 1


def test_build_takes_the_run_as_its_first_argument_and_the_old_spelling_still_works(
    run_dir, tmp_path, capsys
):
    old = tmp_path / "old"
    assert main(["index", "build", "--run", str(run_dir), "--out", str(old), "--part", "val"]) == 0
    err = capsys.readouterr().err
    assert "rmnet: warning: --run is deprecated; use RUN" in err
    assert "rmnet: warning: --out is deprecated; use --index INDEX" in err
    assert len(CodeIndex.open(old)) == len(Run(run_dir).split.val)
    new = tmp_path / "new"
    assert main(["index", "build", str(run_dir), "--index", str(new), "--part", "val"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["index", "build", str(run_dir)]) == 1
    assert "rmnet index build RUN --index INDEX" in capsys.readouterr().err
    assert main(["index", "build", str(run_dir), "--run", str(run_dir), "--index", str(tmp_path / "x")]) == 1
    assert "give the run once" in capsys.readouterr().err


def test_build_workers_default_is_the_one_of_every_data_command():
    from rmnet.cliargs import DEFAULT_WORKERS

    parser = argparse.ArgumentParser(prog="rmnet")
    add_commands(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["index", "build", "r", "--index", "i"]).workers == DEFAULT_WORKERS
