"""`rmnet index build|add|info` and `rmnet search`, end to end on a tiny trained run."""

import argparse
import json
import shutil

import pytest
import torch

from rmnet.config import TrainConfig
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
    assert main(["index", "build", "--run", str(run_dir), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_build_indexes_the_training_split_of_the_run(run_dir, index_dir, capsys):
    run = Run(run_dir)
    with CodeIndex.open(index_dir) as index:
        assert len(index) == len(run.split.train)
        assert sorted(index.labels()) == sorted(run.table.labels[run.split.train])
        assert index.model.run == str(run_dir.resolve()) and index.model.code_length == 8
    assert main(["index", "info", str(index_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{len(run.split.train)} images, 8-dimensional codes" in out
    assert "small_cnn" in out and "images per class: globules 8, lobed 8, regular 8, streaks 8" in out


def test_search_prints_the_diagnosis_and_the_k_nearest_cases_and_draws_a_gallery(
    run_dir, index_dir, tmp_path, capsys
):
    run = Run(run_dir)
    query = run.table.paths[run.split.train[0]]  # an indexed image: it must find itself first
    gallery = tmp_path / "gallery.png"
    assert main(["search", str(query), "--index", str(index_dir), "--k", "5", "--gallery", str(gallery)]) == 0
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
        main(["search", *queries, "--index", str(index_dir), "--k", "3", "--metric", "hamming", "--json"])
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
    assert main(["search", str(good), str(broken), "--index", str(index_dir), "--k", "2"]) == 1
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
    assert main(["index", "add", str(copy), *map(str, new), str(present), "--label", "lobed"]) == 0
    captured = capsys.readouterr()
    assert f"added 2 images to {copy} (now {before + 2})" in captured.out
    # The build stored it as "<class>/<name>"; `add` names files by their stem: the content matches.
    stored_id = run.table.ids[run.split.train[0]]
    assert f"skipped {present.stem}: same file content as {stored_id}" in captured.err
    index = CodeIndex.open(copy)
    assert index.labels()[-2:].tolist() == [index.class_names.index("lobed")] * 2


def test_add_refuses_an_unknown_class(index_dir, run_dir, capsys):
    image = Run(run_dir).table.paths[0]
    assert main(["index", "add", str(index_dir), str(image), "--label", "melanoma"]) == 1
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
    assert main(["index", "build", "--run", str(run_dir), "--out", str(out)]) == 1
    assert "already holds an index" in capsys.readouterr().err
    args = ["index", "build", "--run", str(run_dir), "--out", str(out), "--part", "test", "--overwrite"]
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
