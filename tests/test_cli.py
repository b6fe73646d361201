"""The command line end to end on tiny images: train, evaluate, resume, and one clear line for bad input."""

import dataclasses
import json
import subprocess
import sys

import pytest

from rmnet.cli import build_parser, main
from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset

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
        assert "--" + field.name.replace("_", "-") in text, field.name
    assert "(default: 0.01)" in text and "--no-rotate" in text


def test_every_config_field_has_a_command_line_option_that_sets_it():
    args = build_parser().parse_args(
        ["train", "--out", "x", "--lr", "0.5", "--no-rotate", "--hash-bits", "none"]
    )
    assert (args.lr, args.rotate, args.hash_bits) == (0.5, False, None)
    assert not hasattr(args, "epochs")  # options not given keep the config's value


def test_train_evaluate_and_resume_through_the_command_line(lesions, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(lesions), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert (run / "checkpoints/best.pt").is_file()
    assert "next: rmnet evaluate" in capsys.readouterr().out

    assert main(["evaluate", str(run), "--sweep-step", "90", "--no-tsne", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy, 90°" in out and f"report: {run / 'report' / 'report.md'}" in out
    rotation = json.loads((run / "report/report.json").read_text())["rotation"]
    assert [row["angle"] for row in rotation["angles"]] == [0, 90, 180, 270, "random"]

    # A checkpoint file on a folder of images: every image is evaluated.
    checkpoint = str(run / "checkpoints/best.pt")
    argv = ["evaluate", checkpoint, "--data", str(lesions), "--out", str(tmp_path / "file-report")]
    assert main([*argv, "--sweep-step", "180", "--no-tsne", "--quiet"]) == 0
    assert json.loads((tmp_path / "file-report/report.json").read_text())["data"]["images"] == 24

    # An interrupted (or finished) run continues from last.pt, with the run's own config.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert (run / "metrics.csv").read_text().count("\n") == 1 + 2
    assert TrainConfig.from_json(run / "config.json").epochs == 2


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
    assert_one_line_error(capsys, "cannot read image", broken.name)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "s"), "--epochs", "1", "--on-error", "skip"]
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        assert main([*argv, *TINY]) == 0  # or leave it out


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
    assert main(["prepare", "--data", str(lesions), "--out", str(cache), "--resize", "18", "--workers", "1"]) == 0
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
