"""The README and the code agree: every code block runs. Each `rmnet …` command as written (plus tiny
sizes) on the generated ISIC-layout folder (issue 8.4), each `make` line names a real target whose
commands exist, and the Python blocks run in the same folder afterwards (issue 22)."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from rmnet.cli import main
from rmnet.models import PRESETS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
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


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced code block of the README."""
    return re.findall(r"```(\w*)\n(.*?)```", README.read_text(), flags=re.S)


def python_blocks() -> list[str]:
    return [text for language, text in readme_blocks() if language == "python"]


def make_targets() -> dict[str, list[str]]:
    """Each Makefile target and its recipe lines."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith("\t") and current is not None:
            targets[current].append(line.strip())
        elif re.match(r"^[a-z][\w-]*:", line) and ":=" not in line:
            current = line.split(":")[0]
            targets[current] = []
        elif not line.startswith("\t"):
            current = None
    return targets


def test_every_readme_block_is_one_this_file_runs():
    languages = {language for language, _ in readme_blocks()}
    assert languages <= {"bash", "python"}, languages
    targets = make_targets()
    for language, text in readme_blocks():
        if language != "bash":
            continue
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            words = shlex.split(line, comments=True)
            assert words[:1] in (["rmnet"], ["make"]), line  # rmnet: run below; make: checked here
            if words[0] == "make":
                assert words[1] in targets and targets[words[1]], f"`make {words[1]}` does nothing"
    assert len(python_blocks()) >= 2


def test_make_lint_and_bench_run_real_commands():
    targets = make_targets()
    assert targets["lint"] == [
        "$(VENV)/bin/ruff check src tests benchmarks",
        "$(VENV)/bin/ruff format --check src tests benchmarks",
    ]
    (bench,) = targets["bench"]
    module = bench.split("-m ")[1].split()[0]
    assert bench.startswith("$(VENV)/bin/python -m benchmarks.")
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    assert "def main(" in source and 'if __name__ == "__main__"' in source
    assert module in README.read_text() or f"python -m {module}" in (ROOT / "docs/benchmarks.md").read_text()
    assert "lint" in MAKEFILE.read_text().split("test:")[1].splitlines()[0]  # make test lints the same way


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

    # The Python blocks, in order, in the same folder: the building blocks (with the ImageNet file
    # in the hub cache, as the README says), then the trained run of the commands above.
    namespace: dict = {}
    for text in python_blocks():
        exec(compile(text, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["codes"].shape == (2, 16) and namespace["logits"].shape == (2, 8)
    assert namespace["features"].shape == (2, 64, 14, 14)
    prediction = namespace["predictions"][0]
    assert prediction.label in namespace["model"].class_names and len(namespace["hits"]) == 10
    assert namespace["heatmap"].shape == (32, 32)  # the run's --image-size
    out = capsys.readouterr().out
    assert prediction.label in out and namespace["hits"][0].image_id in out


def test_the_missing_imagenet_file_error_names_the_path_for_python_and_the_command_line(
    tmp_path, monkeypatch
):
    from rmnet import create_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = PRESETS["resnet18"].weights.cache_path()
    with pytest.raises(FileNotFoundError) as missing:
        create_model("resnet18", pretrained="imagenet")
    message = str(missing.value)
    assert str(path) in message and "pretrained=PATH in Python" in message and "--pretrained PATH" in message
    assert "$TORCH_HOME/hub/checkpoints/" in README.read_text() and path.name in README.read_text()


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "index", "search", "serve", "demo"])
def test_each_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage: rmnet " + command in capsys.readouterr().out
