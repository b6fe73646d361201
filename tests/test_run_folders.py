"""Run folders that outlive their working directory, and refused commands that write nothing (issue 8.2)."""

import json
import shutil

import pytest

from rmnet.cli import main
from rmnet.runs import Run, read_checkpoint

TINY = ["--arch", "small_cnn", "--model-options", '{"width": 8}', "--image-size", "16", "--batch-size", "8"]
TINY += ["--workers", "0", "--quiet"]


def snapshot(folder):
    """Every file below ``folder`` with its bytes: to show that a refused command changed nothing."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lesion_root):
    """A one-epoch run trained from a relative --data path, in its own working directory."""
    work = tmp_path_factory.mktemp("work")
    data = work / "lesions"
    shutil.copytree(lesion_root, data)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert main(["train", "--data", "lesions", "--out", "runs/r", "--epochs", "1", *TINY]) == 0
    return work / "runs" / "r"


def test_a_run_stores_absolute_data_paths_and_evaluates_from_any_folder(trained, tmp_path, monkeypatch):
    config = json.loads((trained / "config.json").read_text())
    assert config["data"] == str((trained.parent.parent / "lesions").resolve())
    monkeypatch.chdir(tmp_path)
    assert (
        main(["evaluate", str(trained), "--sweep-step", "180", "--no-tsne", "--device", "cpu", "--quiet"])
        == 0
    )
    report = json.loads((trained / "report/report.json").read_text())  # says which checkpoint, and why
    assert report["model"]["checkpoint"].startswith("best.pt (epoch 1, the best validation balanced_accuracy")


def test_evaluate_data_points_a_run_at_moved_data_and_is_checked_against_the_split(trained, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(trained.parent.parent / "lesions", moved)
    trained = shutil.copytree(trained, tmp_path / "run")
    run = Run(trained, data=moved)
    assert run.config.data == str(moved.resolve()) and len(run.dataset("test")) > 0
    argv = ["evaluate", str(trained), "--data", str(moved), "--sweep-step", "180", "--no-tsne", "--quiet"]
    assert main(argv) == 0
    report = json.loads((trained / "report/report.json").read_text())
    assert report["model"]["run"] == str(trained)
    (moved / sorted(p.name for p in moved.iterdir())[0]).rename(tmp_path / "gone")  # a class folder gone
    capsys.readouterr()
    assert main(argv) == 1
    assert "rmnet: error:" in capsys.readouterr().err


def test_a_refused_resume_writes_nothing_and_the_plain_resume_still_works(trained, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(trained.parent.parent / "lesions", other)
    trained = shutil.copytree(trained, tmp_path / "run")
    before = snapshot(trained)
    assert main(["train", "--out", str(trained), "--resume", "--lr", "0.5"]) == 1
    assert "different config" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--resume", "--epochs", "0"]) == 1
    assert snapshot(trained) == before
    # Moved data on --resume is not a change of config: it is checked against the split instead.
    assert main(["train", "--out", str(trained), "--resume", "--data", str(other), "--epochs", "1"]) == 0


def test_an_invalid_option_is_refused_before_a_run_folder_exists(tmp_path, lesion_root, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(lesion_root), "--out", str(out), "--lr", "-1", *TINY]) == 1
    assert "lr must be a positive number" in capsys.readouterr().err and not out.exists()
    small = [a if a != "16" else "7" for a in TINY]  # --image-size 7
    assert (
        main(["train", "--data", str(lesion_root), "--out", str(out), "--arch", "resnet18", *small[2:]]) == 1
    )
    assert "too small for resnet18" in capsys.readouterr().err and not out.exists()


def test_demo_rejects_k_0_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["demo", "--k", "0", "--out", str(tmp_path / "demo")])
    assert done.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_evaluate_last_reads_only_last_pt_and_broken_checkpoints_say_what_is_wrong(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints/best.pt").write_bytes(b"")
    argv = ["evaluate", str(run), "--checkpoint", "last", "--sweep-step", "180", "--no-tsne", "--quiet"]
    assert main(argv) == 0
    assert "last.pt" in json.loads((run / "report/report.json").read_text())["model"]["checkpoint"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-tsne", "--quiet"]) == 1
    assert "is empty (0 bytes)" in capsys.readouterr().err
    last = run / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_checkpoint(last)
