"""Run folders: train() writes a complete one, Run opens it again, and a broken one says what is missing."""

import json

import pytest
import torch

from rmnet.config import TrainConfig
from rmnet.data import make_lesion_dataset
from rmnet.runs import Run, load_checkpoint, read_checkpoint
from rmnet.train import repeat, train


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    return make_lesion_dataset(
        tmp_path_factory.mktemp("data") / "lesions", n_per_class=10, size=20, num_classes=3
    )


def tiny_config(data, **changes) -> TrainConfig:
    values = dict(
        arch="small_cnn", model_options={"width": 8}, image_size=16, epochs=1, batch_size=8, workers=0
    )
    return TrainConfig(data=str(data), **(values | changes))


@pytest.fixture(scope="module")
def run_dir(lesions, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(lesions, epochs=2), out, progress=False)
    return out


def test_train_writes_a_complete_run_folder(run_dir):
    for name in ("config.json", "split.json", "metrics.csv", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["arch"] == "small_cnn"
    assert not list(run_dir.rglob("*.tmp"))  # every file was renamed into place


def test_run_exposes_config_split_table_metrics_and_checkpoints(run_dir, lesions):
    run = Run(run_dir)
    assert run.config == tiny_config(lesions, epochs=2)
    assert sorted(run.split.train + run.split.val + run.split.test) == list(range(30))
    assert run.table.class_names == ["globules", "lobed", "regular"] == run.class_names
    assert list(run.metrics["epoch"]) == [1, 2]
    assert run.best_checkpoint == run_dir / "checkpoints/best.pt"


def test_run_datasets_follow_the_split_and_load_model_gives_the_trained_weights(run_dir):
    run = Run(run_dir)
    test_set = run.dataset("test")
    assert (
        len(test_set) == len(run.split.test)
        and test_set.labels.tolist() == run.table.labels[run.split.test].tolist()
    )
    image, _ = test_set[0]
    assert image.shape == (3, 16, 16)
    model = run.load_model("last")
    reference, _, _ = load_checkpoint(run_dir / "checkpoints/last.pt")
    torch.testing.assert_close(model(image[None]), reference(image[None]))
    assert not model.training
    with pytest.raises(ValueError, match="unknown split part 'tests'"):
        run.dataset("tests")


def test_a_missing_or_incomplete_run_folder_is_a_clear_error(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        Run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not an rmnet run folder: it has no config.json"):
        Run(tmp_path)
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="incomplete: checkpoints/best.pt is missing"):
        _ = Run(tmp_path).best_checkpoint


def test_load_checkpoint_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_checkpoint(tmp_path / "weights.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks config, class_names"):
        read_checkpoint(tmp_path / "partial.pt")


def test_train_refuses_to_overwrite_a_run_unless_resuming(run_dir, lesions):
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        train(tiny_config(lesions, epochs=2), run_dir, progress=False)


def test_repeat_trains_one_run_per_seed_on_the_same_split(lesions, tmp_path):
    run_dirs = repeat(tiny_config(lesions), tmp_path, seeds=[0, 1], progress=False)
    assert [p.name for p in run_dirs] == ["seed-0", "seed-1"]
    first, second = (Run(p) for p in run_dirs)
    assert (first.config.seed, second.config.seed) == (0, 1)
    assert first.split.test == second.split.test
    weights = [read_checkpoint(p / "checkpoints/last.pt")["model"]["fc.weight"] for p in run_dirs]
    assert not torch.equal(*weights)


def test_training_from_a_cache_reads_the_resized_copies(lesions, tmp_path):
    config = tiny_config(lesions, cache=str(tmp_path / "cache"))
    train(config, tmp_path / "run", progress=False)
    table = Run(tmp_path / "run").table
    assert all(path.is_relative_to(tmp_path / "cache") for path in table.paths)
