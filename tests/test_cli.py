"""The command line end to end on tiny images: train, evaluate, resume, and one clear line for bad input."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rmnet.cli import build_parser, main
from rmnet.config import TrainConfig
from rmnet.data import (
    ImageDataset,
    load_image_table,
    make_lesion_dataset,
    make_split,
    read_skipped,
    save_split,
)
from rmnet.evaluate import predict
from rmnet.runs import Run

TINY = ["--arch", "small_cnn", "--model-options", '{"width": 8}', "--image-size", "16", "--batch-size", "8"]
TINY += ["--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    return make_lesion_dataset(
        tmp_path_factory.mktemp("data") / "lesions", n_per_class=8, size=20, num_classes=3
    )


def test_help_explains_every_command_and_every_training_option(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    assert all(command in listing for command in ("demo", "prepare", "train", "evaluate"))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        flag = "--split" if field.name == "split_ratios" else "--" + field.name.replace("_", "-")
        assert flag in text, field.name
    assert "(default: 0.01)" in text and "--no-rotate" in text
    assert "random initialisation" in text and "every default below" not in text


def test_every_config_field_has_a_command_line_option_that_sets_it():
    args = build_parser().parse_args(
        ["train", "--out", "x", "--lr", "0.5", "--no-rotate", "--hash-bits", "none"]
    )
    assert (args.lr, args.rotate, args.hash_bits) == (0.5, False, None)
    assert not hasattr(args, "epochs")  # options not given keep the config's value


def test_train_and_evaluate_through_the_command_line(lesions, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(lesions), "--out", str(run), "--epochs", "1", "--rm", "all", *TINY]
    assert main(argv) == 0
    assert (run / "checkpoints/best.pt").is_file()
    assert "next: rmnet evaluate" in capsys.readouterr().out

    assert main(["evaluate", str(run), "--sweep-step", "90", "--no-tsne", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy, 90°" in out and f"report: {run / 'report' / 'report.md'}" in out
    report = json.loads((run / "report/report.json").read_text())
    rows = {row["angle"]: row for row in report["rotation"]["angles"]}
    assert list(rows) == [0, 90, 180, 270, "random"]
    # RM over the whole trunk is invariant to quarter turns: not one prediction changes.
    for angle in (90, 180, 270):
        assert rows[angle]["changed"] == 0.0 and rows[angle]["accuracy"] == rows[0]["accuracy"]
    assert report["rotation"]["sweep"]["changed"] == [0.0] * 5
    assert 0.0 <= rows["random"]["changed"] <= 1.0 and rows[0]["changed"] == 0.0

    # A checkpoint file on a folder of images: every image is evaluated.
    checkpoint = str(run / "checkpoints/best.pt")
    argv = ["evaluate", checkpoint, "--data", str(lesions), "--out", str(tmp_path / "file-report")]
    assert main([*argv, "--sweep-step", "180", "--no-tsne", "--quiet"]) == 0
    assert json.loads((tmp_path / "file-report/report.json").read_text())["data"]["images"] == 24

    # --checkpoint last evaluates last.pt. Make best.pt a different model first: one that always
    # predicts a class that the last model does not always predict, so the two cannot agree by chance.
    last = predict(Run(run).load_model("last"), Run(run).dataset("test"), device="cpu")
    forced = next(c for c in range(3) if (last.y_pred != c).any())
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    best["model"]["fc.bias"] = torch.zeros(3).index_fill_(0, torch.tensor(forced), 1e4)
    torch.save(best, run / "checkpoints/best.pt")
    argv = ["evaluate", str(run), "--checkpoint", "last", "--sweep-step", "180", "--no-tsne", "--quiet"]
    assert main(argv) == 0
    per_class = json.loads((run / "report/report.json").read_text())["classification"]["per_class"]
    assert [row["predicted"] for row in per_class.values()] == np.bincount(last.y_pred, minlength=3).tolist()

    # A finished run is extended by --resume with more epochs, from its own config.json.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert (run / "metrics.csv").read_text().count("\n") == 1 + 2
    assert TrainConfig.from_json(run / "config.json").epochs == 2


class SigintAt:
    """Replaces ImageDataset.__getitem__: sends this process SIGINT (Ctrl-C) when item ``at`` is
    fetched (counting from 1), and counts every item fetched."""

    def __init__(self, monkeypatch, at: int | None = None) -> None:
        self.at, self.fetched = at, 0
        original = ImageDataset.__getitem__

        def getitem(dataset, item):
            self.fetched += 1
            if self.fetched == self.at:
                signal.raise_signal(signal.SIGINT)
            return original(dataset, item)

        monkeypatch.setattr(ImageDataset, "__getitem__", getitem)


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, whatever ran before it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _rows(run) -> list[dict]:
    """metrics.csv without the timing column."""
    return pd.read_csv(run / "metrics.csv").drop(columns="seconds").to_dict("records")


def test_ctrl_c_exits_130_and_resume_mid_epoch_equals_an_uninterrupted_run(
    lesions, tmp_path, capsys, monkeypatch, default_sigint
):
    argv = ["train", "--data", str(lesions), "--epochs", "2", "--lr", "0.05", *TINY]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    sizes = json.loads((tmp_path / "straight/split.json").read_text())["sizes"]
    per_epoch = sizes["train"] + sizes["val"]  # items fetched per epoch (18 + 3)
    capsys.readouterr()

    SigintAt(monkeypatch, at=per_epoch + sizes["train"] // 2)  # Ctrl-C halfway through epoch 2
    assert main([*argv, "--out", str(tmp_path / "resumed")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("rmnet: interrupted") and "--resume" in err and err.count("\n") == 1
    assert torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["epoch"] == 1

    counter = SigintAt(monkeypatch)
    assert main(["train", "--out", str(tmp_path / "resumed"), "--resume", "--quiet"]) == 0
    assert counter.fetched == per_epoch  # epoch 2 only, redone from its start: epoch 1 was not retrained
    straight, resumed = (
        torch.load(tmp_path / name / "checkpoints/last.pt", weights_only=True)
        for name in ("straight", "resumed")
    )
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "straight")


def test_seeds_train_one_run_each_on_one_split_and_resume_only_what_is_unfinished(
    lesions, tmp_path, capsys, monkeypatch, default_sigint
):
    out = tmp_path / "seeds"
    argv = ["train", "--data", str(lesions), "--out", str(out), "--epochs", "1", *TINY, "--seeds", "0", "1"]
    SigintAt(monkeypatch, at=21 + 5)  # seed-0 done (18 + 3 items), seed-1 in its first epoch
    assert main(argv) == 130
    assert (out / "seed-0/checkpoints/last.pt").is_file() and not (
        out / "seed-1/checkpoints/last.pt"
    ).exists()
    finished = (out / "seed-0/checkpoints/last.pt").read_bytes()
    capsys.readouterr()

    assert main(argv) == 1  # without --resume, nothing is overwritten
    assert_one_line_error(capsys, "already holds a run", "--resume")

    counter = SigintAt(monkeypatch)  # --resume needs only --out and --seeds: the runs hold their config
    assert main(["train", "--out", str(out), "--seeds", "0", "1", "--resume", "--quiet"]) == 0
    assert counter.fetched == 21  # seed-1's one epoch; seed-0 is not trained again
    assert (out / "seed-0/checkpoints/last.pt").read_bytes() == finished
    configs = [TrainConfig.from_json(out / f"seed-{s}/config.json") for s in (0, 1)]
    assert [c.seed for c in configs] == [0, 1] and configs[0].replace(seed=1) == configs[1]
    splits = [json.loads((out / f"seed-{s}/split.json").read_text()) for s in (0, 1)]
    assert splits[0] == splits[1]  # the same split: the runs differ in initialisation and order only
    weights = [torch.load(out / f"seed-{s}/checkpoints/last.pt", weights_only=True)["model"] for s in (0, 1)]
    assert not torch.equal(weights[0]["fc.weight"], weights[1]["fc.weight"])
    assert f"next: rmnet evaluate {out}" in capsys.readouterr().out


def test_split_file_fixes_the_parts_and_one_for_other_data_is_refused(lesions, tmp_path, capsys):
    table = load_image_table(lesions)
    split = make_split(table, seed=3, ratios=(0.5, 0.25, 0.25))
    save_split(split, tmp_path / "split.json")
    run = tmp_path / "run"
    argv = ["train", "--data", str(lesions), "--epochs", "1", *TINY]
    assert main([*argv, "--split", str(tmp_path / "split.json"), "--out", str(run)]) == 0
    used = Run(run).split
    assert (used.train, used.val, used.test) == (split.train, split.val, split.test)
    assert len(used.train) == 12  # half of the 24 images, not the default 8:1:1

    other = make_split(table.subset(range(20)))
    other.ids = [f"elsewhere/{i}" for i in range(20)]
    save_split(other, tmp_path / "other.json")
    assert main([*argv, "--split", str(tmp_path / "other.json"), "--out", str(tmp_path / "r2")]) == 1
    assert_one_line_error(capsys, "made for a different table")
    assert not (tmp_path / "r2").exists()


def test_a_non_finite_loss_is_one_clear_line(lesions, tmp_path, capsys):
    argv = ["train", "--data", str(lesions), "--out", str(tmp_path / "r"), "--epochs", "2", *TINY]
    assert main([*argv, "--lr", "1e12"]) == 1
    assert_one_line_error(capsys, "the loss became", "lower --lr")


def test_a_config_file_is_the_starting_point_and_options_override_it(lesions, tmp_path):
    config = TrainConfig(arch="small_cnn", model_options={"width": 8}, image_size=16, epochs=1, workers=0)
    config.replace(data=str(lesions), lr=0.2).to_json(tmp_path / "base.json")
    argv = ["train", "--config", str(tmp_path / "base.json"), "--lr", "0.03", "--out", str(tmp_path / "r")]
    assert main([*argv, "--quiet"]) == 0
    saved = TrainConfig.from_json(tmp_path / "r/config.json")
    assert (saved.lr, saved.data, saved.image_size) == (0.03, str(lesions), 16)


def assert_one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("rmnet: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_an_unknown_backbone_is_one_clear_line_and_exit_status_1(lesions, tmp_path, capsys):
    argv = ["train", "--data", str(lesions), "--out", str(tmp_path / "r"), *TINY, "--arch", "resnet9000"]
    assert main(argv) == 1
    assert_one_line_error(capsys, "unknown model 'resnet9000'")


def test_a_missing_csv_column_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "list.csv").write_text("path,diagnosis\na.png,MEL\n")
    assert main(["train", "--data", str(tmp_path / "list.csv"), "--out", str(tmp_path / "r"), *TINY]) == 1
    assert_one_line_error(capsys, "missing column 'label'")


def test_a_corrupt_image_is_one_clear_line_naming_the_file(lesions, tmp_path, capsys):
    data = tmp_path / "data"
    for folder in lesions.iterdir():
        if folder.is_dir():
            (data / folder.name).mkdir(parents=True)
            for image in folder.iterdir():
                (data / folder.name / image.name).write_bytes(image.read_bytes())
    broken = sorted((data / "lobed").iterdir())[0]
    broken.write_bytes(b"\x89PNG broken")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", *TINY]) == 1
    assert_one_line_error(capsys, "cannot read image", broken.name, "--on-error skip")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "s"), "--epochs", "1", "--on-error", "skip"]
    assert main([*argv, *TINY]) == 0  # or leave it out, as the error says
    assert_skipped_lines(capsys.readouterr().err, ["lobed/lobed_0000"])
    assert [(s.id, s.path) for s in read_skipped(tmp_path / "s")] == [("lobed/lobed_0000", broken)]


def assert_skipped_lines(err: str, ids: list[str]) -> None:
    """stderr names each skipped image once, in one "rmnet: warning:" line, and nothing else warns."""
    warnings = [line for line in err.splitlines() if "rmnet: warning:" in line]
    assert [line.split("rmnet: warning: skipped image ")[1].split(" (")[0] for line in warnings] == ids, err
    assert "UserWarning" not in err and "warnings.warn" not in err and "Traceback" not in err


def test_a_missing_run_folder_is_one_clear_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 1
    assert_one_line_error(capsys, "run folder not found", "nowhere")
    (tmp_path / "model.pt").write_bytes(b"")
    assert main(["evaluate", str(tmp_path / "model.pt")]) == 1
    assert_one_line_error(capsys, "needs --data")


def test_an_unknown_key_in_a_config_file_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "c.json").write_text('{"arch": "small_cnn", "learning_rate": 1}')
    assert main(["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]) == 1
    assert_one_line_error(capsys, "unknown field(s) learning_rate")


def test_python_dash_m_rmnet_runs_the_same_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "rmnet", "evaluate", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "rotation" in done.stdout


def test_prepare_writes_the_cache_that_train_reads(lesions, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert (
        main(["prepare", "--data", str(lesions), "--out", str(cache), "--resize", "18", "--workers", "1"])
        == 0
    )
    assert f"--cache {cache}" in capsys.readouterr().out
    assert len(list(cache.rglob("*.jpg"))) == 24
    argv = [
        "train",
        "--data",
        str(lesions),
        "--cache",
        str(cache),
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "1",
    ]
    assert main([*argv, *TINY]) == 0  # --image-size 16 resizes to 18 px: the cache's short edge


def test_prepare_and_cached_training_skip_a_truncated_jpeg_when_asked(isic_root, tmp_path, capsys):
    """Issue 8.3: one corrupt image must not block cached training."""
    root = Path(shutil.copytree(isic_root, tmp_path / "ISICb"))
    broken = root / "ISIC_2019_Training_Input" / "ISIC_0000011.jpg"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 2])  # a truncated JPEG
    cache = tmp_path / "cache"
    prepare = ["prepare", "--data", str(root), "--out", str(cache), "--resize", "18", "--workers", "1"]

    # Without --on-error skip: the others are cached, and the advice names the option that helps.
    assert main(prepare) == 1
    assert_one_line_error(capsys, "could not cache 1 of 32 images", "ISIC_0000011.jpg", "--on-error skip")
    assert "remove" not in capsys.readouterr().err

    assert main([*prepare, "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert_skipped_lines(captured.err, ["ISIC_0000011"])
    assert (
        f"31 images in 4 classes cached in {cache}; 1 skipped, listed in {cache / 'skipped.json'}"
        in captured.out
    )
    assert "--on-error skip" in captured.out.split("next: ")[1]  # the next command works as printed
    assert [s.id for s in read_skipped(cache)] == ["ISIC_0000011"]

    run = tmp_path / "run"
    train = ["train", "--data", str(root), "--cache", str(cache), "--out", str(run), "--epochs", "1", *TINY]
    assert main([*train, "--on-error", "skip"]) == 0
    assert_skipped_lines(capsys.readouterr().err, ["ISIC_0000011"])  # named once, not by cache and dataset
    recorded = json.loads((run / "skipped.json").read_text())["skipped"]
    split = json.loads((run / "split.json").read_text())
    index = split["ids"].index("ISIC_0000011")
    part = next(name for name in ("train", "val", "test") if index in split[name])
    assert [(r["id"], r["part"]) for r in recorded] == [("ISIC_0000011", part)]
    assert "truncated" in recorded[0]["reason"].lower()


def test_advice_after_removing_an_image_names_the_command_line_option_and_works(isic_root, tmp_path, capsys):
    root = Path(shutil.copytree(isic_root, tmp_path / "ISICb"))
    (root / "ISIC_2019_Training_Input" / "ISIC_0000011.jpg").unlink()
    cache = tmp_path / "cache"
    prepare = ["prepare", "--data", str(root), "--out", str(cache), "--resize", "18", "--workers", "1"]
    assert main(prepare) == 1
    assert_one_line_error(capsys, "ISIC_0000011", "--ground-truth")
    assert "ground_truth=" not in capsys.readouterr().err

    # Following it: a ground-truth CSV without that row, given with --ground-truth.
    truth = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    truth[truth["image"] != "ISIC_0000011"].to_csv(tmp_path / "truth.csv", index=False)
    assert main([*prepare, "--ground-truth", str(tmp_path / "truth.csv")]) == 0
    out = capsys.readouterr().out
    assert "31 images in 4 classes" in out and f"--ground-truth {tmp_path / 'truth.csv'}" in out


# -- a newcomer's second hour (issue 22) -------------------------------------------------------------


def copy_data(source: Path, to: Path) -> Path:
    shutil.copytree(source, to)
    return to


def test_train_refuses_a_folder_of_other_files_and_writes_nothing_there(lesions, tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\begin{document}")
    (mine / "config.json").write_text('{"title": "my thesis"}')
    argv = ["train", "--data", str(lesions), "--out", str(mine), "--epochs", "1", *TINY]
    assert main(argv) == 1
    assert_one_line_error(capsys, str(mine), "not an rmnet run", "empty or new folder")
    assert (mine / "config.json").read_text() == '{"title": "my thesis"}'
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "thesis.tex"]
    (mine / "config.json").unlink()
    assert main(argv) == 1  # any file but a run's: refused too
    assert_one_line_error(capsys, "is not empty and has no config.json", "empty or new folder")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    seeds = ["train", "--data", str(lesions), "--out", str(mine), "--seeds", "0", "--epochs", "1", *TINY]
    assert main(seeds) == 1  # OUT/seed-0 is new, but OUT is someone else's
    assert_one_line_error(capsys, "empty or new folder")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_a_broken_test_image_is_found_when_training_starts_and_evaluate_takes_on_error(
    lesions, tmp_path, capsys
):
    data = copy_data(lesions, tmp_path / "data")
    table = load_image_table(data)
    split = make_split(table)
    broken = table.paths[split.test[0]]
    broken.write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]
    assert main(argv) == 1
    assert_one_line_error(capsys, "1 of 24 images of the split", broken.name, "--on-error skip")
    assert not run.exists()  # nothing written
    assert main([*argv, "--on-error", "skip"]) == 0
    assert [(r["id"], r["part"]) for r in json.loads((run / "skipped.json").read_text())["skipped"]] == [
        (table.ids[split.test[0]], "test")
    ]
    capsys.readouterr()
    evaluate = ["evaluate", str(run), "--sweep-step", "90", "--no-tsne", "--device", "cpu", "--workers", "0"]
    assert main([*evaluate, "--quiet", "--on-error", "raise"]) == 1  # the run's choice, overridden
    assert_one_line_error(capsys, broken.name, "--on-error skip")
    assert main([*evaluate, "--quiet", "--on-error", "skip"]) == 0  # the option the message recommends
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["data"]["images"] == len(split.test) - 1


def test_on_error_and_other_choices_are_checked_by_the_command_line(capsys):
    for argv in (
        ["train", "--out", "x", "--on-error", "ignore"],
        ["evaluate", "run", "--on-error", "ignore"],
        ["prepare", "--data", "d", "--out", "c", "--on-error", "ignore"],
        ["train", "--out", "x", "--optimizer", "adagrad"],
    ):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args(argv)
        assert done.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_small_data_says_how_many_images_suffice_and_split_ratios_help(tmp_path, capsys):
    data = make_lesion_dataset(tmp_path / "six", n_per_class=6, size=20, num_classes=3)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]
    assert main(argv) == 1
    assert_one_line_error(
        capsys, "validation set is empty", "at least 8 images", "smallest class has 6", "--split 0.6 0.2 0.2"
    )
    assert not run.exists()  # no config.json, no split.json left behind
    assert main([*argv, "--split", "0.6", "0.2", "0.2"]) == 0
    saved = json.loads((run / "split.json").read_text())
    assert saved["ratios"] == [0.6, 0.2, 0.2] and saved["sizes"] == {"train": 12, "val": 3, "test": 3}
    assert TrainConfig.from_json(run / "config.json").split_ratios == (0.6, 0.2, 0.2)
    assert main([*argv, "--split", "0.5", "0.5"]) == 1
    assert_one_line_error(capsys, "--split takes a split JSON file or three fractions")


def test_resume_of_a_missing_folder_says_so(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "nowhere"), "--resume"]) == 1
    assert_one_line_error(capsys, "nothing to resume", "nowhere", "does not exist")
    assert "--data" not in capsys.readouterr().err


def test_a_cache_of_another_size_names_the_resize_option(lesions, tmp_path, capsys):
    cache = tmp_path / "cache"
    prepare = ["prepare", "--data", str(lesions), "--out", str(cache), "--resize", "18", "--workers", "1"]
    assert main(prepare) == 0
    capsys.readouterr()
    argv = [
        "train",
        "--data",
        str(lesions),
        "--cache",
        str(cache),
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "1",
    ]
    assert main([*argv, *TINY, "--resize", "20"]) == 1
    assert_one_line_error(capsys, "short edge of 18 px, not 20", "--resize 18")
    assert main([*prepare[:-4], "--resize", "20"]) == 1  # prepare into it at another size: the same
    assert_one_line_error(capsys, "--resize 18")


def test_workers_means_loader_processes_with_one_default_and_serve_names_its_threads(capsys):
    from rmnet.cliargs import DEFAULT_WORKERS

    parser = build_parser()
    assert parser.parse_args(["evaluate", "run"]).workers == DEFAULT_WORKERS
    assert parser.parse_args(["prepare", "--data", "d", "--out", "c"]).workers == DEFAULT_WORKERS
    assert parser.parse_args(["index", "build", "run", "--index", "i"]).workers == DEFAULT_WORKERS
    assert TrainConfig().workers == DEFAULT_WORKERS
    serve = parser.parse_args(["serve", "run", "--index", "i", "--inference-threads", "3"])
    assert serve.workers == 3 and "deprecated" not in capsys.readouterr().err
    old = parser.parse_args(["serve", "run", "--index", "i", "--workers", "2"])
    assert old.workers == 2
    assert capsys.readouterr().err == "rmnet: warning: --workers is deprecated; use --inference-threads\n"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--inference-threads" in text and "--workers" not in text


def test_progress_in_a_log_is_plain_lines_now_and_then_never_a_bar_stuck_at_zero(capsys):
    import re

    from rmnet.io import progress_bar

    bar = progress_bar(range(4), "epoch 1", log_interval=0)  # stderr is captured: not a terminal
    for _ in bar:
        bar.set_postfix(loss="0.5000")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and "\r" not in "".join(lines)
    assert re.fullmatch(r"epoch 1: 1/4 \(25%\), \d+ s, loss=0.5000", lines[0]), lines
    assert re.fullmatch(r"epoch 1: 4/4 \(100%\), \d+ s, loss=0.5000", lines[3]), lines
    assert list(progress_bar(range(3), "quick")) == [0, 1, 2]  # short work: no line at all
    assert list(progress_bar(iter("ab"), "no length", log_interval=0)) == ["a", "b"]
    no_length = capsys.readouterr().err.splitlines()
    assert [re.sub(r"\d+ s", "S s", line) for line in no_length] == ["no length: 1, S s", "no length: 2, S s"]


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.7, 0.2, 0.1), (0.9, 0.1, 0.0)])
def test_the_minimum_per_class_is_the_fewest_images_the_split_fills_every_part_with(ratios):
    from rmnet.data import ImageTable
    from rmnet.data.split import min_per_class

    def parts_filled(n: int) -> bool:
        table = ImageTable([f"i{i}" for i in range(n)], [Path(f"{i}.png") for i in range(n)],
                           np.zeros(n, np.int64), ["only"], [None] * n)  # fmt: skip
        split = make_split(table, ratios=ratios)
        return bool(split.val) and (bool(split.test) or ratios[2] == 0)

    needed = min_per_class(ratios)
    assert parts_filled(needed) and not parts_filled(needed - 1)


def test_a_runs_batches_do_not_depend_on_whether_stderr_is_a_terminal(monkeypatch):
    """tqdm calls iter() on a DataLoader when the bar is made, which draws a shuffling seed: logs go
    through a (disabled) tqdm too, so training in a log shuffles as on a terminal."""
    import io

    from torch.utils.data import DataLoader

    from rmnet.io import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    loader = DataLoader(list(range(40)), batch_size=4, shuffle=True)
    batches = {}
    for where, stream in (("terminal", Terminal()), ("log", io.StringIO())):
        monkeypatch.setattr(sys, "stderr", stream)
        torch.manual_seed(0)
        batches[where] = [batch.tolist() for batch in progress_bar(loader, "epoch 1")]
        torch.manual_seed(0)
        quiet = progress_bar(loader, "epoch 1", False)
        batches[where + ", no progress"] = [batch.tolist() for batch in quiet]
    assert len({str(value) for value in batches.values()}) == 1, batches
