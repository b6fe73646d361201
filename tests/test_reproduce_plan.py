"""rmnet reproduce's plan: every row of the paper's tables, runs shared between tables, each run a
valid rmnet train command, the paper's cells transcribed, and the dry run's GPU-time estimate."""

import argparse

import pytest

from rmnet.cli import add_train_command, config_from_args, main
from rmnet.models import allowed_positions
from rmnet.reproduce.estimate import LOADER_IMAGES_PER_S, SPLIT, estimate
from rmnet.reproduce.paper import COLUMNS, PAPER, paper_cell
from rmnet.reproduce.plan import INSERTED, TABLES, build_plan, smoke_subset


@pytest.fixture(scope="module")
def plan():
    return build_plan()


def test_the_paper_cells_are_transcribed_where_the_text_gives_them():
    assert PAPER[3][("", "RM", "AP (%)")] == "64.66±0.99"
    assert PAPER[6][("ResNet34", "8–16", "Ave Spec (%)")] == "97.08±0.02"
    assert PAPER[8][("RiDe", "precision", "Average")] == "53.17±0.77"  # below GCNN's 53.19
    assert PAPER[8][("GCNN", "precision", "Average")] == "53.19±0.53"
    assert PAPER[8][("RM", "kappa", "Average")] == "73.91±0.57"
    assert PAPER[8][("Baseline", "sensitivity", "SCC")] == "63.24±2.20"
    assert PAPER[9][("", "RegNetY800M MWNL RM", "Kappa (%)")] == "79.33±0.76"
    assert PAPER[10][("", "EfficientNet-b0 RM", "mRR@10(%)")] == "77.16±0.87"
    assert paper_cell(11, "", "DCH", "mAP@10(%)") == "–"  # not in our copy of the text
    assert len(PAPER[8]) == 11 * (8 * 3 + 4)


def test_every_row_of_the_paper_is_planned_and_reads_its_paper_cells(plan):
    for table in TABLES:
        rows = [r for r in plan.rows if r.table == table]
        assert rows, table
        planned = {(r.group, r.label) for r in rows if not r.note}
        if table == 8:
            assert {r.label for r in rows} == {method for method, *_ in PAPER[8]}
            continue
        printed = {(group, row) for group, row, _ in PAPER[table]}
        assert printed <= planned, printed - planned
    assert len([r for r in plan.rows if r.table == 6 and not r.note]) == 22


def test_runs_shared_between_tables_are_planned_once(plan):
    keys = [e.key for e, seed in plan.runs() if seed == 0]
    assert len(keys) == len(set(keys)) == len(plan.experiments)
    rm18 = {r.table for r in plan.rows if "resnet18_rm-5-8" in r.candidates}
    assert rm18 == {3, 4, 5, 6, 7, 8, 9}
    assert len(plan.runs()) == 3 * len(plan.experiments)


def test_compared_methods_are_tried_at_every_position_they_allow(plan):
    rows = {r.label: r for r in plan.rows if r.table == 8}
    for label, methods in INSERTED.items():
        positions = [(m, p) for m in methods for p in allowed_positions(m, "resnet18")]
        args = [plan.experiments[key].args for key in rows[label].candidates]
        assert [(a[a.index("--method") + 1], a[a.index("--at") + 1]) for a in args] == positions


def test_every_planned_run_is_a_valid_rmnet_train_command(plan):
    commands = argparse.ArgumentParser().add_subparsers()
    add_train_command(commands)
    parser = commands.choices["train"]
    for experiment in plan.experiments.values():
        args = parser.parse_args([*experiment.args, "--out", "unused", "--data", "unused"])
        config = config_from_args(args)
        assert config.arch == experiment.arch
        assert (config.hash_bits == 16) == (experiment.task == "retrieval")


def test_the_smoke_grid_covers_every_table_row_group(plan):
    chosen = smoke_subset(plan)
    for table in TABLES:
        groups = {r.group for r in plan.rows if r.table == table}
        covered = {r.group for r in plan.rows if r.table == table and set(r.candidates) & chosen}
        assert covered == groups, table
    assert len(chosen) < len(plan.experiments) / 3


def test_the_estimate_is_epochs_times_images_over_the_measured_rate(plan):
    baseline = plan.experiments["resnet18"]
    # ResNet18 trains at 7,298 images/s, faster than the loader: the loader bounds it.
    expected = 60 * (SPLIT["train"] / LOADER_IMAGES_PER_S + SPLIT["val"] / 32437) + 29 * SPLIT["test"] / 32437
    assert estimate(baseline).gpu_seconds == pytest.approx(expected)
    inception = plan.experiments["inception_v3_rm-C-E"]  # 1,025 images/s: the GPU bounds it
    expected = 60 * (SPLIT["train"] / 1025 + SPLIT["val"] / 3160) + 29 * SPLIT["test"] / 3160
    assert estimate(inception).gpu_seconds == pytest.approx(expected)


def test_dry_run_lists_every_run_with_its_gpu_time(tmp_path, capsys):
    command = ["reproduce", "--out", str(tmp_path), "--dry-run", "--tables", "3", "5", "--seeds", "0", "1"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "**12 runs (6 configurations), about" in out
    assert out.count("| resnet18_rm-5-8_k-8 |") == 2
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_unknown_tables_are_refused_with_the_valid_ones_named(capsys):
    assert main(["reproduce", "--out", "x", "--dry-run", "--tables", "2"]) == 1
    assert "3 … 11" in capsys.readouterr().err
    assert set(COLUMNS) == set(TABLES)
