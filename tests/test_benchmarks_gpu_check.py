"""benchmarks/gpu_check.py: it stops at once without CUDA, and its CPU dry run (tiny sizes) runs every
part of the check, so the script is in working order on the day a GPU is lent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from rmnet.data import load_image_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds benchmarks/
from benchmarks import gpu_check  # noqa: E402


def test_without_cuda_it_stops_at_once_and_says_what_to_do(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "measure_steps", lambda *a: pytest.fail("it measured without a GPU"))
    assert gpu_check.main(["--out", str(tmp_path / "gpu")]) == 2
    message = capsys.readouterr().err
    assert "no CUDA device" in message and "--dry-run" in message
    assert not (tmp_path / "gpu").exists()


def test_generated_folder_is_in_the_isic_2019_layout(tmp_path):
    root = gpu_check.make_isic_fixture(tmp_path / "isic", per_class=2, size=(20, 15))
    table = load_image_table(str(root))
    assert len(table) == 16
    assert list(table.class_names) == list(gpu_check.ISIC_CLASSES)
    assert sorted(set(table.labels.tolist())) == list(range(8))  # two images of every class
    truth = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    assert list(truth.columns) == ["image", *gpu_check.ISIC_COLUMNS]
    assert (truth[list(gpu_check.ISIC_CLASSES)].sum(axis=1) == 1).all()


def test_dry_run_measures_every_variant_and_trains_end_to_end(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # restored for the rest of the session

    steps = pd.read_csv(tmp_path / "steps.csv")
    assert len(steps) == 2 * len(gpu_check.MODELS)  # every model, channels-last off and on
    assert set(steps["model"]) == set(gpu_check.MODELS)
    assert steps["loss finite"].all()
    for kind in ("training", "inference"):
        assert (steps[f"{kind} images/s"] > 0).all()
        assert (steps.loc[steps["model"] == "plain", f"{kind} × plain"] == 1).all()

    train = json.loads((tmp_path / "train_run.json").read_text())
    assert train["ok"] and train["exit status"] == 0 and train["epochs"] == 1
    assert "--amp" in train["command"] and train["checkpoints"] == ["best.pt", "last.pt"]
    assert {"config.json", "split.json", "metrics.csv"} <= set(train["run folder"])
    assert len(pd.read_csv(tmp_path / "train_metrics.csv")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # few and flat: all come back from a lent GPU
        "gpu_check.md",
        "steps.csv",
        "train_metrics.csv",
        "train_run.json",
    ]

    report = (tmp_path / "gpu_check.md").read_text()
    assert "dry run" in report and "RM 5-8 (k=8)" in report and '"ok": true' in report
