"""benchmarks/gpu_check.py: it stops at once without CUDA, and its CPU dry run (tiny sizes) runs every
part of the check, so the script is in working order on the day a GPU is lent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

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


def test_generated_folder_is_in_the_isic_2019_layout_with_sizes_in_turn(tmp_path):
    root = gpu_check.make_isic_fixture(tmp_path / "isic", count=32, sizes=((20, 15), (16, 16)))
    table = load_image_table(str(root))
    assert len(table) == 32
    assert list(table.class_names) == list(gpu_check.ISIC_CLASSES)
    assert np.bincount(table.labels).tolist() == [4] * 8  # every class alike
    with Image.open(table.paths[0]) as first, Image.open(table.paths[8]) as ninth:
        assert (first.size, ninth.size) == ((20, 15), (16, 16))
    truth = pd.read_csv(root / "ISIC_2019_Training_GroundTruth.csv")
    assert list(truth.columns) == ["image", *gpu_check.ISIC_COLUMNS]
    assert (truth[list(gpu_check.ISIC_CLASSES)].sum(axis=1) == 1).all()


def test_dry_run_measures_every_part_and_trains_end_to_end_on_both_data_paths(tmp_path):
    threads = torch.get_num_threads()
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # restored for the rest of the session
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(gpu_check.FILES)  # few and flat

    steps = pd.read_csv(tmp_path / "steps.csv")
    assert len(steps) == len(gpu_check.MODELS) * len(gpu_check.AMP_TYPES)
    assert set(steps["AMP"]) == {"float16", "bfloat16"} and steps["loss finite"].all()
    assert (steps.loc[steps["model"] == "plain", "training × plain"] == 1).all()

    decode = pd.read_csv(tmp_path / "decode.csv")
    assert len(decode) == 3 and (decode["images/s"] > 0).all()

    end_to_end = pd.read_csv(tmp_path / "end_to_end.csv")
    assert end_to_end["ok"].all() and set(end_to_end["data path"]) == {"files", "memory"}
    assert (end_to_end["train pass images/s"] > 0).all() and (end_to_end["× synthetic"] > 0).all()
    memory = end_to_end[end_to_end["data path"] == "memory"]
    assert (memory["decode into memory s"] > 0).all()

    packed = pd.read_csv(tmp_path / "packed_runs.csv")
    assert packed["ok"].all() and (packed["aggregate train pass images/s"] > 0).all()

    report = (tmp_path / "gpu_check.md").read_text()
    assert "dry run" in report and "max |difference| 0.00e+00" in report  # eval: both paths identical
    for heading in ("1. Synthetic steps", "2. Decoding", "3. End to end", "4. Packed runs"):
        assert heading in report
