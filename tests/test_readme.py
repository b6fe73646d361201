"""The README and the command line agree: every `rmnet …` command in its code blocks runs as written
(plus tiny sizes) on the generated ISIC-layout folder (issue 8.4)."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from rmnet.cli import main
from rmnet.models import PRESETS

README = Path(__file__).resolve().parents[1] / "README.md"
# Tiny sizes appended to each command, so that it runs in seconds on a CPU.
TINY = {
    "prepare": ["--resize", "37", "--workers", "1"],
    "train": ["--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--quiet"],
    "evaluate": ["--sweep-step", "90", "--no-tsne", "--device", "cpu", "--workers", "0", "--quiet"],
    "index": ["--device", "cpu"],
    "search": ["--device", "cpu"],
}
LONG_RUNNING = {"serve", "demo"}  # a server and the demo: tested in test_service.py and test_demo.py


def readme_commands() -> list[list[str]]:
    """Every `rmnet …` line of the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["rmnet"]:
                commands.append(words[1:])
    return commands


def test_the_readme_shows_the_whole_isic_workflow():
    used = {words[0] for words in readme_commands()}
    assert {"prepare", "train", "evaluate", "index", "search", "serve"} <= used


def test_every_readme_command_runs_as_written_on_the_isic_fixture(isic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(isic_root, tmp_path, dirs_exist_ok=True)  # ISIC_2019_Training_Input/ + the CSVs
    first = sorted((tmp_path / "ISIC_2019_Training_Input").glob("*.jpg"))[3]
    shutil.copy(first, tmp_path / "lesion.jpg")
    # --recipe paper reads ImageNet weights from the torch hub cache: a torchvision-layout file.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = PRESETS["resnet18"].weights.cache_path()
    weights.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)

    ran = []
    for words in readme_commands():
        if words[0] in LONG_RUNNING:
            continue
        argv = words + TINY.get(words[0], [])
        assert main(argv) == 0, f"README command failed: rmnet {shlex.join(words)}\n{capsys.readouterr().err}"
        ran.append(words[0])
    assert {"prepare", "train", "evaluate", "index", "search"} <= set(ran)
    assert (tmp_path / "runs/r18-rm/report/summary.md").is_file()
    assert list(tmp_path.glob("similar*.png"))


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "index", "search", "serve", "demo"])
def test_each_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage: rmnet " + command in capsys.readouterr().out
