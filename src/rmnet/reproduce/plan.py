"""Every run of the paper's Tables 3–11 as data: an ``rmnet train`` argument list per experiment,
and the table rows that read them.

An experiment is one configuration (trained once per seed); rows of several tables share it
(ResNet18 with RM 5–8 is a row of Tables 3–9). A row with several candidates (a compared
method at each position it allows) reports the candidate with the best validation score, as
the paper "select[s] the best classification results"; every candidate is in runs.csv.
No torch at import: ``--dry-run`` plans without loading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rmnet.reproduce.paper import TITLES

TABLES = tuple(TITLES)  # 3 … 11
SEEDS = (0, 1, 2)  # our choice: the paper's results "are averaged multiple times"
HASH_BITS = "16"

# The paper's four CNNs of Tables 6, 7 and 10 (its names), and the blocks it tried RM at.
CNN_NAMES = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "inception_v3": "GoogleNet-Inception-V3",
    "efficientnet_b0": "EfficientNet-b0",
}
TABLE_6_POSITIONS = {
    "resnet18": ("1-8", "3-8", "5-8", "7-8"),
    "resnet34": ("1-16", "4-16", "8-16", "12-16", "14-16"),
    "inception_v3": ("A-E", "B-E", "C-E", "D-E"),
    "efficientnet_b0": ("2-9", "4-9", "5-9", "6-9", "8-9"),
}
# RegNetY-800MF: the fifth CNN of the paper (Table 9 only). Rows marked "not in the paper" give
# it the same treatment as the other four in Tables 6, 7 and 10.
REGNET, REGNET_POSITIONS = "regnet_y_800mf", ("2-5", "3-5", "4-5", "5")
# Relaxed RM-GAP (Table 7): the paper's Figure 2(b) wraps Res5 only; the others by analogy, RM
# around the first block (type) of the paper's strict position.
RELAXED = {
    "resnet18": "relaxed:5",
    "resnet34": "relaxed:8",
    "inception_v3": "relaxed:C",
    "efficientnet_b0": "relaxed:5",
    REGNET: "relaxed:4",
}
PAPER_RM = {
    "resnet18": "5-8",
    "resnet34": "8-16",
    "inception_v3": "C-E",
    "efficientnet_b0": "5-9",
    REGNET: "4-5",
}
# Table 8's methods inserted into ResNet18 at every position they allow (rmnet.models.allowed_positions).
INSERTED = {
    "GCNN": ("gcnn",),
    "ORN": ("orn",),
    "STN": ("stn_affine", "stn"),
    "CyCNN": ("cycnn",),
    "E4-Net": ("e4net",),
}


@dataclass(frozen=True)
class Experiment:
    """One configuration: ``rmnet train`` options (without --data, --out, --seed)."""

    key: str  # its folder under OUT/runs
    args: tuple[str, ...]
    arch: str
    task: str = "classification"  # or "retrieval"
    cost: str = (
        "rm"  # which measured rate times it: plain, rm, all, k6, k8, input4 (rmnet.reproduce.estimate)
    )
    position: str = ""  # where the method sits, for the row label when chosen among several


@dataclass(frozen=True)
class Row:
    """A row of a paper table, read from one experiment or the best of several."""

    table: int
    group: str
    label: str  # as printed in the paper
    candidates: tuple[str, ...]  # experiment keys
    note: str = ""  # e.g. "not in the paper"


@dataclass
class Plan:
    experiments: dict[str, Experiment] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    seeds: tuple[int, ...] = SEEDS
    tables: tuple[int, ...] = TABLES

    def add(self, experiment: Experiment) -> str:
        known = self.experiments.setdefault(experiment.key, experiment)
        if known.args != experiment.args:
            raise AssertionError(
                f"two experiments named {experiment.key}: {known.args} and {experiment.args}"
            )
        return experiment.key

    def row(self, table: int, group: str, label: str, *experiments: Experiment, note: str = "") -> None:
        self.rows.append(Row(table, group, label, tuple(self.add(e) for e in experiments), note))

    def runs(self) -> list[tuple[Experiment, int]]:
        """Every (experiment, seed) the chosen tables need, in table order, each once."""
        keys = dict.fromkeys(key for row in self.rows for key in row.candidates)
        return [(self.experiments[key], seed) for key in keys for seed in self.seeds]


def experiment(arch: str, *options: str, task: str = "classification", cost: str | None = None,
               position: str = "", recipe: str = "paper") -> Experiment:  # fmt: skip
    """An experiment of the paper's recipe for ``arch`` with ``options``; the key says what it is."""
    args = ("--recipe", recipe, "--arch", arch, *options)
    if task == "retrieval":
        args += ("--hash-bits", HASH_BITS)
    parts, rest = [], list(options)
    while rest:  # "--rm 5-8 --no-rotate" -> rm-5-8, no-rotate
        flag = rest.pop(0).removeprefix("--")
        value = rest.pop(0) if rest and not rest[0].startswith("--") else None
        parts.append(flag if value is None else f"{flag}-{value.replace(':', '').replace('/', '-')}")
    tags = ([recipe] if recipe != "paper" else []) + parts + (["hash"] if task == "retrieval" else [])
    key = "_".join([arch, *tags])
    if cost is None:
        cost = "rm" if options else "plain"
    return Experiment(key, args, arch, task, cost, position)


def baseline(arch: str, task: str = "classification") -> Experiment:
    return experiment(arch, task=task)


def rm(arch: str, position: str, *options: str, task: str = "classification", cost: str = "rm") -> Experiment:
    return experiment(arch, "--rm", position, *options, task=task, cost=cost, position=position)


def inserted(method: str, position: str, arch: str = "resnet18") -> Experiment:
    cost = "all" if position == "all" else "rm"  # "all" changes the stem too
    return experiment(arch, "--method", method, "--at", position, position=position, cost=cost)


def build_plan(tables: Sequence[int] = TABLES, seeds: Sequence[int] = SEEDS) -> Plan:
    """The runs and rows of ``tables``."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"--tables: the paper's result tables are 3 … 11, not {unknown}")
    plan = Plan(seeds=tuple(seeds), tables=tuple(sorted(set(tables))))
    r18, r18_rm = baseline("resnet18"), rm("resnet18", "5-8")
    for table in plan.tables:
        if table == 3:
            plan.row(3, "", "baseline", r18)
            plan.row(3, "", "RM-WR", rm("resnet18", "5-8", "--no-rotate"))
            plan.row(3, "", "RM-NWS", rm("resnet18", "5-8", "--no-share-weights"))
            plan.row(3, "", "RM", r18_rm)
        elif table == 4:
            plan.row(4, "", "Baseline", r18)
            plan.row(4, "", "Embedding", rm("resnet18", "5-8", "--fusion", "embedding"))
            plan.row(4, "", "Maxout", rm("resnet18", "5-8", "--fusion", "max"))
            plan.row(4, "", "Meanout", r18_rm)
        elif table == 5:
            plan.row(5, "", "Baseline", r18)
            plan.row(5, "", "90", r18_rm)
            plan.row(5, "", "60", rm("resnet18", "5-8", "--k", "6", cost="k6"))
            plan.row(5, "", "45", rm("resnet18", "5-8", "--k", "8", cost="k8"))
        elif table == 6:
            for arch, name in CNN_NAMES.items():
                plan.row(6, name, "Baseline", baseline(arch))
                for position in TABLE_6_POSITIONS[arch]:
                    plan.row(6, name, position.replace("-", "–"), rm(arch, position))
            plan.row(6, "RegNetY-800MF", "Baseline", baseline(REGNET), note="not in the paper")
            for position in REGNET_POSITIONS:
                plan.row(
                    6,
                    "RegNetY-800MF",
                    position.replace("-", "–"),
                    rm(REGNET, position),
                    note="not in the paper",
                )
        elif table == 7:
            for arch, name in [*CNN_NAMES.items(), (REGNET, "RegNetY-800MF")]:
                note = "not in the paper" if arch == REGNET else ""
                plan.row(7, name, "Baseline", baseline(arch), note=note)
                plan.row(7, name, "Relax", rm(arch, RELAXED[arch]), note=note)
                plan.row(7, name, "Strict", rm(arch, PAPER_RM[arch]), note=note)
        elif table == 8:
            _table_8(plan, r18, r18_rm)
        elif table == 9:
            plan.row(9, "", "ARLNet18", baseline("arlnet18"))
            plan.row(9, "", "ResNet18 RM", r18_rm)
            plan.row(9, "", "ARLNet34", baseline("arlnet34"))
            plan.row(9, "", "ResNet34 RM", rm("resnet34", "8-16"))
            plan.row(9, "", "RegNetY800M", baseline(REGNET))
            plan.row(9, "", "RegNetY800M RM", rm(REGNET, PAPER_RM[REGNET]))
            plan.row(9, "", "RegNetY800M MWNL", experiment(REGNET, recipe="mwnl", cost="plain"))
            mwnl_rm = experiment(REGNET, "--rm", PAPER_RM[REGNET], recipe="mwnl")
            plan.row(9, "", "RegNetY800M MWNL RM", mwnl_rm)
        elif table == 10:
            names = {"resnet18": "ResNet18", "resnet34": "ResNet34", "inception_v3": "Inception-V3",
                     "efficientnet_b0": "EfficientNet-b0", REGNET: "RegNetY-800MF"}  # fmt: skip
            for arch, name in names.items():
                note = "not in the paper" if arch == REGNET else ""
                plan.row(10, "", name, baseline(arch, "retrieval"), note=note)
                plan.row(10, "", f"{name} RM", rm(arch, PAPER_RM[arch], task="retrieval"), note=note)
        elif table == 11:
            for loss, label in (("dch", "DCH"), ("dpn", "DPN"), ("csq", "CSQ")):
                plan.row(
                    11, "", label, experiment("resnet18", "--loss", loss, task="retrieval", cost="plain")
                )
            plan.row(11, "", "CRI", experiment("resnet18", "--loss", "cri", task="retrieval", cost="input4"))
            plan.row(11, "", "RM", rm("resnet18", "5-8", task="retrieval"))
    return plan


def _table_8(plan: Plan, r18: Experiment, r18_rm: Experiment) -> None:
    from rmnet.models import allowed_positions  # the model registry: loads torch

    plan.row(8, "", "Baseline", r18)
    ra = experiment("resnet18", "--rotation-augmentation-mode", "quarter", cost="plain")
    plan.row(8, "", "RA", ra)
    plan.row(8, "", "TI-pooling", experiment("ti_pooling_resnet18", cost="input4"))
    for label, methods in INSERTED.items():
        candidates = [inserted(m, p) for m in methods for p in allowed_positions(m, "resnet18")]
        plan.row(8, "", label, *candidates)
    plan.row(8, "", "RiDe", experiment("resnet18", "--loss", "ride", cost="input4"))
    plan.row(8, "", "RIR", experiment("resnet18", "--loss", "rir", cost="input4"))
    plan.row(8, "", "RM", r18_rm)


def smoke_subset(plan: Plan) -> set[str]:
    """What ``--smoke`` trains: one representative per row group (the group's experiment that the
    most rows of the plan share, the later row on a tie), plus one run of each kind the
    representatives leave out (an inserted method, MWNL's recipe, a hashing loss)."""
    shares: dict[str, int] = {}
    for row in plan.rows:
        for key in row.candidates:
            shares[key] = shares.get(key, 0) + 1
    best: dict[tuple[int, str], tuple[int, int, str]] = {}
    for order, row in enumerate(plan.rows):
        key = row.candidates[0]
        best[(row.table, row.group)] = max(
            best.get((row.table, row.group), (-1, -1, "")), (shares[key], order, key)
        )
    chosen = {key for _, _, key in best.values()}
    extras = {(8, "GCNN"), (9, "RegNetY800M MWNL RM"), (11, "DCH")}
    return chosen | {r.candidates[0] for r in plan.rows if (r.table, r.label) in extras}
