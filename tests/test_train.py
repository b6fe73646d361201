"""The training loop: it learns, checkpoints, resumes exactly, and keeps DDP ranks in sync."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from rmnet.config import TrainConfig, build_model
from rmnet.runs import load_checkpoint, read_checkpoint
from rmnet.train import dataset_labels, fit, needs_loss_scaling, resolve_amp_dtype, train


def tiny_dataset(n: int = 48, size: int = 16, seed: int = 0) -> TensorDataset:
    """Two classes: noise, or noise with a bright square in the middle."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.arange(n) % 2
    images[labels == 1, :, size // 4 : -size // 4, size // 4 : -size // 4] += 2.0
    return TensorDataset(images, labels)


def tiny_config(**changes) -> TrainConfig:
    values = dict(
        arch="small_cnn",
        model_options={"width": 8},
        image_size=16,
        epochs=3,
        batch_size=16,
        lr=0.05,
        lr_step=2,
        workers=0,
    )
    return TrainConfig(**(values | changes))


def test_fit_lowers_the_training_loss_and_learns_a_separable_problem():
    data = tiny_dataset()
    result = fit(tiny_config(epochs=4, lr_step=10), data, data, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["val_accuracy"] > 0.9
    assert result.best_path is None and result.last_path is None  # nothing written without out_dir


def test_checkpoints_hold_weights_config_class_names_and_training_state(tmp_path):
    data = tiny_dataset()
    config = tiny_config(epochs=2)
    result = fit(config, data, data, tmp_path, class_names=["plain", "square"], progress=False)

    last = read_checkpoint(result.last_path)
    assert last["epoch"] == 2 and last["config"] == config.to_dict()
    assert last["class_names"] == ["plain", "square"]
    assert {"optimizer", "scheduler", "scaler", "history", "best_score", "best_epoch"} <= set(last)
    best = read_checkpoint(result.best_path)
    assert best["epoch"] == last["best_epoch"] and "optimizer" not in best

    model, loaded_config, class_names = load_checkpoint(result.last_path)
    assert loaded_config == config and class_names == ["plain", "square"]
    result.model.eval()
    images = data.tensors[0][:8]
    torch.testing.assert_close(model(images), result.model(images))

    metrics = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2 and metrics[0].startswith("epoch,lr,train_loss")


class InterruptAfter(Dataset):
    """A dataset that raises KeyboardInterrupt at its n-th item, like Ctrl-C in the middle of an epoch."""

    def __init__(self, data: TensorDataset, n: int) -> None:
        self.data, self.n, self.calls = data, n, 0
        self.labels = data.tensors[1]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return self.data[i]


def test_resuming_an_interrupted_run_gives_the_same_result_as_an_uninterrupted_one(tmp_path):
    data, config = tiny_dataset(), tiny_config(epochs=3)
    uninterrupted = fit(config, data, data, tmp_path / "straight", progress=False)

    with pytest.raises(KeyboardInterrupt):  # stops in the middle of epoch 2 (48 images per epoch)
        fit(config, InterruptAfter(data, n=48 + 20), data, tmp_path / "resumed", progress=False)
    assert read_checkpoint(tmp_path / "resumed/checkpoints/last.pt")["epoch"] == 1
    resumed = fit(config, data, data, tmp_path / "resumed", resume=True, progress=False)

    for key, value in uninterrupted.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history]
    assert drop_time == [{k: v for k, v in row.items() if k != "seconds"} for row in uninterrupted.history]
    assert [row["lr"] for row in resumed.history] == pytest.approx([0.05, 0.05, 0.005])  # the schedule too


def test_resume_refuses_a_checkpoint_trained_with_other_options(tmp_path):
    data = tiny_dataset()
    fit(tiny_config(epochs=1), data, data, tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr=0.05 there, 0.1 now"):
        fit(tiny_config(epochs=2, lr=0.1), data, data, tmp_path, resume=True, progress=False)
    longer = fit(tiny_config(epochs=2), data, data, tmp_path, resume=True, progress=False)  # epochs may grow
    assert [row["epoch"] for row in longer.history] == [1, 2]


def test_a_run_from_before_a_config_field_existed_resumes_with_that_fields_default(tmp_path):
    data = tiny_dataset()
    fit(tiny_config(epochs=1), data, data, tmp_path, progress=False)
    last = tmp_path / "checkpoints/last.pt"
    checkpoint = torch.load(last, weights_only=False)
    for added_later in ("optimizer", "rm_padding"):
        del checkpoint["config"][added_later]
    torch.save(checkpoint, last)
    longer = fit(tiny_config(epochs=2), data, data, tmp_path, resume=True, progress=False)
    assert [row["epoch"] for row in longer.history] == [1, 2]
    with pytest.raises(ValueError, match="optimizer='sgd' there, 'adam' now"):
        fit(tiny_config(epochs=3, optimizer="adam"), data, data, tmp_path, resume=True, progress=False)


def test_adam_trains_and_resumes_with_its_own_state(tmp_path):
    """--optimizer adam (MWNL's authors trained with Adam): it learns, and its moments are checkpointed."""
    data, config = tiny_dataset(), tiny_config(epochs=2, optimizer="adam", lr=0.01)
    result = fit(config, data, data, tmp_path, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    state = read_checkpoint(tmp_path / "checkpoints/last.pt")["optimizer"]["state"]
    assert state and all("exp_avg_sq" in moments for moments in state.values())  # Adam's, not SGD's
    longer = fit(config.replace(epochs=3), data, data, tmp_path, resume=True, progress=False)
    assert [row["epoch"] for row in longer.history] == [1, 2, 3]
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam"):
        TrainConfig(optimizer="rmsprop")


def test_best_checkpoint_follows_the_validation_metric(tmp_path):
    data = tiny_dataset()
    result = fit(tiny_config(epochs=3, val_metric="loss"), data, data, tmp_path, progress=False)
    losses = [row["val_loss"] for row in result.history]
    assert read_checkpoint(result.best_path)["epoch"] == 1 + losses.index(min(losses))


def _conv_output_dtypes(config: TrainConfig) -> set[torch.dtype]:
    """The dtypes of every convolution's output while ``config`` trains one epoch."""
    seen: set[torch.dtype] = set()

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        data = tiny_dataset(n=16)
        result = fit(config, data, data, progress=False)
    finally:
        handle.remove()
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
    return seen


def test_amp_on_the_cpu_runs_the_forward_pass_in_bfloat16():
    assert _conv_output_dtypes(tiny_config(epochs=1, amp=True, channels_last=True)) == {torch.bfloat16}
    assert _conv_output_dtypes(tiny_config(epochs=1, amp=False)) == {torch.float32}  # and off is off


class WithBrokenImage(Dataset):
    """A dataset whose image ``bad`` is all NaN, like a broken file decoded into garbage."""

    def __init__(self, data: TensorDataset, bad: int) -> None:
        self.data, self.bad, self.labels = data, bad, data.tensors[1]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        image, label = self.data[i]
        return (torch.full_like(image, float("nan")) if i == self.bad else image), label


def test_a_non_finite_loss_stops_training_with_advice_and_writes_no_checkpoint(tmp_path):
    data = tiny_dataset(n=16)
    with pytest.raises(FloatingPointError, match=r"the loss became nan .*lower --lr or check the data"):
        fit(tiny_config(epochs=2), WithBrokenImage(data, bad=5), data, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints/last.pt").exists()
    with pytest.raises(FloatingPointError, match=r"the loss became (nan|inf)"):  # a far too high lr
        fit(tiny_config(epochs=3, lr=1e12), data, data, progress=False)


def test_dataset_labels_reads_labels_without_loading_images_and_explains_when_it_cannot():
    assert dataset_labels(tiny_dataset(n=6)).tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(TypeError, match=r"has no \.labels"):
        dataset_labels([(torch.zeros(3, 4, 4), 0)])


DDP_SCRIPT = """
import os
import sys
import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset
from rmnet.config import TrainConfig
from rmnet.train import fit

out = sys.argv[1]
g = torch.Generator().manual_seed(0)
images, labels = torch.randn(32, 3, 16, 16, generator=g), torch.arange(32) % 2
images[labels == 1, :, 4:12, 4:12] += 2.0
data = TensorDataset(images, labels)
config = TrainConfig(arch="small_cnn", model_options={"width": 8}, image_size=16, epochs=1,
                     batch_size=8, lr=0.05, workers=0, device="cpu")
result = fit(config, data, data, out + "/run", progress=False)
rank = int(os.environ["RANK"])
torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")
with open(f"{out}/rank{rank}.txt", "w") as f:  # one file per rank: their stdout would interleave
    f.write(f"world {dist.is_initialized()} best {result.best_path}")
"""


def test_two_processes_under_torchrun_with_gloo_end_with_identical_parameters(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*command, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    torch.manual_seed(0)
    untrained = build_model(tiny_config(), 2).state_dict()
    assert not torch.equal(untrained["fc.weight"], rank0["fc.weight"])  # they trained, together
    assert (tmp_path / "run/checkpoints/last.pt").is_file()  # written once, by rank 0
    # Rank 1 wrote no checkpoint, and both tore the process group down.
    assert (tmp_path / "rank1.txt").read_text() == "world False best None"
    assert (tmp_path / "rank0.txt").read_text().endswith("checkpoints/best.pt")


# train()'s own setup (the tests above call fit() directly): the seed it applies, the split it makes.


def _train_isic(isic_root, out, **changes):
    from rmnet.train import train

    config = tiny_config(data=str(isic_root), epochs=1, batch_size=8, **changes)
    train(config, out, progress=False)
    return read_checkpoint(out / "checkpoints" / "last.pt")["model"]


def test_train_applies_its_seed_same_seed_same_weights_other_seed_other_weights(isic_root, tmp_path):
    first = _train_isic(isic_root, tmp_path / "a", seed=3)
    torch.manual_seed(12345)  # whatever the global generator holds, train() seeds its own start
    again = _train_isic(isic_root, tmp_path / "b", seed=3)
    other = _train_isic(isic_root, tmp_path / "c", seed=4)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_train_groups_the_split_by_lesion_when_asked(isic_root, tmp_path):
    from rmnet.data import load_image_table, load_split

    table = load_image_table(isic_root)

    def lesions(out):  # part name -> the lesion ids of its images
        split = load_split(out / "split.json", table)
        return {
            part: {table.groups[i] for i in split.part(part) if table.groups[i] is not None}
            for part in ("train", "val", "test")
        }

    _train_isic(isic_root, tmp_path / "grouped", group_by_lesion=True)
    _train_isic(isic_root, tmp_path / "plain")
    grouped, plain = lesions(tmp_path / "grouped"), lesions(tmp_path / "plain")
    assert grouped["val"] | grouped["test"]  # lesions held out, none of them seen in training
    assert not grouped["train"] & grouped["val"]
    assert not grouped["train"] & grouped["test"]
    assert not grouped["val"] & grouped["test"]
    assert plain["train"] & (plain["val"] | plain["test"])  # the control: ungrouped, this split leaks


@pytest.mark.parametrize(
    ("choice", "device_type", "bf16_supported", "expected"),
    [
        ("auto", "cuda", True, torch.bfloat16),  # Ampere and later: no loss scaling needed
        ("auto", "cuda", False, torch.float16),  # older GPUs: float16 with a GradScaler
        ("auto", "cpu", False, torch.bfloat16),
        ("float16", "cuda", True, torch.float16),  # --amp-dtype overrides
        ("bfloat16", "cuda", False, torch.bfloat16),
        ("float16", "cpu", False, torch.float16),
    ],
)
def test_amp_picks_bfloat16_where_the_gpu_has_it_else_float16(choice, device_type, bf16_supported, expected):
    assert resolve_amp_dtype(choice, device_type, bf16_supported=bf16_supported) == expected


def test_only_float16_on_cuda_gets_a_grad_scaler():
    assert needs_loss_scaling(True, torch.float16, "cuda")
    assert not needs_loss_scaling(True, torch.bfloat16, "cuda")
    assert not needs_loss_scaling(False, torch.float16, "cuda")
    assert not needs_loss_scaling(True, torch.float16, "cpu")


def test_amp_dtype_and_data_path_options_are_checked():
    with pytest.raises(ValueError, match="amp_dtype must be one of auto, bfloat16, float16, got 'fp8'"):
        TrainConfig(amp_dtype="fp8")
    with pytest.raises(ValueError, match="data_path must be one of auto, files, memory, got 'gpu'"):
        TrainConfig(data_path="gpu")
    with pytest.raises(ValueError, match="amp_dtype must be auto, bfloat16 or float16"):
        resolve_amp_dtype("half", "cuda", bf16_supported=True)


def test_amp_dtype_float16_runs_the_forward_pass_in_float16():
    config = tiny_config(epochs=1, amp=True, amp_dtype="float16")
    assert _conv_output_dtypes(config) == {torch.float16}


def _count_decodes(monkeypatch) -> list[int]:
    """Counts the images that ImageDataset decodes (the real decoder runs)."""
    import rmnet.data.dataset as dataset_module

    count, decode = [0], dataset_module.open_rgb

    def counting(path, *args, **kwargs):
        count[0] += 1
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "open_rgb", counting)
    return count


def _folder_config(lesion_root, **changes) -> TrainConfig:
    return tiny_config(**({"data": str(lesion_root), "epochs": 2, "batch_size": 8} | changes))


def test_data_path_memory_decodes_each_image_once_and_trains_from_memory(lesion_root, tmp_path, monkeypatch):
    # Every run decodes its images once more when it starts (the check of every part) and ends
    # (calibration); the training loop itself decodes per epoch on files, once in all from memory.
    decodes = _count_decodes(monkeypatch)
    result = train(_folder_config(lesion_root, data_path="memory", rotation_augmentation=45), tmp_path / "m")
    from_memory = decodes[0]
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert read_checkpoint(tmp_path / "m/checkpoints/last.pt")["config"]["data_path"] == "memory"

    decodes[0] = 0
    train(_folder_config(lesion_root, data_path="auto"), tmp_path / "auto")  # auto on the CPU: files
    images = 40 - 4  # train and validation parts of 40 images (the test part, 4, is not trained on)
    assert decodes[0] - from_memory == images  # two epochs from files, against one decode into memory

    decodes[0] = 0
    train(_folder_config(lesion_root, data_path="auto", epochs=3), tmp_path / "auto3")
    assert decodes[0] - from_memory == 2 * images  # files: once more per epoch; memory: never


def test_data_path_memory_resumes_exactly(lesion_root, tmp_path):
    config = _folder_config(lesion_root, data_path="memory", epochs=2)
    straight = train(config, tmp_path / "straight")
    train(config.replace(epochs=1), tmp_path / "resumed")
    resumed = train(config, tmp_path / "resumed", resume=True)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_data_path_memory_needs_image_files(tmp_path):
    data = tiny_dataset()
    with pytest.raises(ValueError, match="--data-path memory needs image files .* not a TensorDataset"):
        fit(tiny_config(data_path="memory"), data, data, progress=False)


def test_the_command_line_takes_data_path_and_amp_dtype(lesion_root, tmp_path):
    from rmnet.cli import main

    argv = ["train", "--data", str(lesion_root), "--out", str(tmp_path / "run"), "--epochs", "1"]
    argv += ["--arch", "small_cnn", "--model-options", '{"width": 8}', "--image-size", "16"]
    argv += ["--workers", "0", "--quiet", "--data-path", "memory", "--amp", "--amp-dtype", "bfloat16"]
    assert main(argv) == 0
    saved = TrainConfig.from_json(tmp_path / "run/config.json")
    assert (saved.data_path, saved.amp_dtype, saved.amp) == ("memory", "bfloat16", True)
