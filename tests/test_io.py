"""rmnet.io: one atomic write, one device rule, one percent format, for every part."""

import pytest
import torch

from rmnet.io import atomic_write, atomic_write_text, format_percent, resolve_device, save_figure


def test_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "new")
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_save_figure_writes_a_png_and_closes_the_figure_even_when_saving_fails(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    path = save_figure(figure, tmp_path / "plot.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.number not in plt.get_fignums()
    broken = plt.figure()
    with pytest.raises(ValueError):
        save_figure(broken, tmp_path / "broken.png", dpi=-1)
    assert broken.number not in plt.get_fignums() and sorted(p.name for p in tmp_path.iterdir()) == [
        "plot.png"
    ]


def test_device_auto_is_the_cpu_without_cuda_and_names_pass_through(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "text"), [(0.5, "50.00"), (1 / 3, "33.33"), (None, "–"), (float("nan"), "–")]
)
def test_format_percent(value, text):
    assert format_percent(value) == text
