"""GPU time and memory of a planned run, from the rates measured on an NVIDIA H200 on 2026-12-04.

Source: shared/measurements/gpu-2026-12-04/ (``backbone_sweep.md``: bf16 autocast, channels-last,
batch 64, training and inference images/s and peak training MiB of each preset plain and with RM
at the paper's position, RM over the whole ResNet18; ``steps.csv``: ResNet18 RM 5–8 with k = 4
and k = 8; ``loader.md``: the data loader, 2,502 images/s with 15 workers). A run's time is
epochs × (training images / training rate + validation images / inference rate) + its test
evaluation. What was not measured is estimated, and said so in ``ASSUMPTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rmnet.reproduce.plan import Experiment

ISIC_IMAGES = 25_331
SPLIT = {"train": 20_265, "val": 2_533, "test": 2_533}  # 8:1:1
LOADER_IMAGES_PER_S = 2_502  # loader.md: 15 workers, 224 px training transform, to the GPU
TEST_VIEWS = 29  # rmnet evaluate: upright, 90°, 180°, 270°, random and a 15° sweep (0–360°)

# (training images/s, inference images/s, peak training MiB at batch 64): backbone_sweep.md.
MEASURED = {
    ("resnet18", "plain"): (7298, 32437, 983),
    ("resnet18", "rm"): (5733, 21055, 1345),
    ("resnet18", "all"): (3223, 9309, 3424),
    ("resnet34", "plain"): (3397, 10927, 1428),
    ("resnet34", "rm"): (3253, 12986, 2118),
    ("efficientnet_b0", "plain"): (1463, 6528, 2885),
    ("efficientnet_b0", "rm"): (1387, 4319, 5605),
    ("regnet_y_800mf", "plain"): (1971, 7956, 1617),
    ("regnet_y_800mf", "rm"): (1537, 7720, 3489),
    ("inception_v3", "plain"): (1302, 5066, 3668),
    ("inception_v3", "rm"): (1025, 3160, 6841),
}
K8_TIME = 4456 / 2514  # steps.csv, channels-last: RM 5–8 with k = 8 takes 1.77× the k = 4 step
ASSUMPTIONS = (
    "RM at any position, and GCNN, ORN, STN, CyCNN, E4-Net inserted into a block range, train at "
    "the measured rate of RM at the paper's position of the same backbone",
    "a method over the whole ResNet18 (position all) trains at the rate of RM over the whole ResNet18",
    "k = 6 takes the mean of the measured k = 4 and k = 8 times",
    "TI-pooling, RiDe, RIR and CRI (four rotated copies of the input through the whole network) "
    "take 4× the plain network's time",
    "ARLNet18/34 train at the plain ResNet18/34 rate; ti_pooling_resnet18 at 4× plain ResNet18",
    "no run trains faster than the measured loader (2,502 images/s on 15 CPU workers)",
    "MWNL's recipe: 70 epochs at 224 px, its 16-crop test averaging as 16 test views",
)
CUDA_CONTEXT_MIB = 1_500  # per process, beside the measured peak


@dataclass(frozen=True)
class RunCost:
    gpu_seconds: float
    memory_mib: int


def _rates(experiment: Experiment) -> tuple[float, float, float]:
    arch = {"arlnet18": "resnet18", "arlnet34": "resnet34", "ti_pooling_resnet18": "resnet18"}.get(
        experiment.arch, experiment.arch
    )
    if arch not in {a for a, _ in MEASURED}:
        arch = "resnet18"
    plain = MEASURED[(arch, "plain")]
    kind = experiment.cost
    if kind == "plain":
        return plain
    if kind == "input4":
        return plain[0] / 4, plain[1] / 4, plain[2] * 4
    train, infer, memory = MEASURED.get((arch, kind), MEASURED[(arch, "rm")])
    if kind in ("k6", "k8"):
        slow = K8_TIME if kind == "k8" else (1 + K8_TIME) / 2
        return train / slow, infer / slow, memory * slow
    return train, infer, memory


def epochs_of(experiment: Experiment) -> int:
    """The recipe's epochs: 60 (80 with a hash layer), 70 for MWNL's recipe."""
    if "mwnl" in experiment.args[:2]:
        return 70
    return 80 if experiment.task == "retrieval" else 60


def estimate(experiment: Experiment, batch_size: int = 32) -> RunCost:
    """GPU seconds and peak GPU memory of one run (one seed) on the whole ISIC 2019 training set."""
    train_rate, infer_rate, memory = _rates(experiment)
    train_rate = min(train_rate, LOADER_IMAGES_PER_S)
    views = 16 if "mwnl" in experiment.args[:2] else TEST_VIEWS
    seconds = epochs_of(experiment) * (SPLIT["train"] / train_rate + SPLIT["val"] / infer_rate)
    seconds += views * SPLIT["test"] / infer_rate
    if experiment.task == "retrieval":  # embed the database once, the queries at four angles
        seconds += (SPLIT["train"] + 4 * SPLIT["test"]) / infer_rate
    return RunCost(seconds, int(memory * batch_size / 64 + CUDA_CONTEXT_MIB))


def training_memory_mib(arch: str, batch_size: int = 32, kind: str = "rm") -> int:
    """Estimated peak GPU memory of training ``arch`` (measured with RM at the paper's position, the
    larger of plain and RM; ResNet18's where ``arch`` was not measured)."""
    arch = arch if (arch, kind) in MEASURED else "resnet18"
    return int(MEASURED[(arch, kind)][2] * batch_size / 64 + CUDA_CONTEXT_MIB)
