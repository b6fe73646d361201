"""`rmnet reproduce --smoke` end to end on the generated ISIC-layout folder: every table file with
every row, the paper's numbers beside ours, runs.csv; a second call skips the finished runs, and an
interrupted run resumes."""

import csv
import shutil

import pytest

from rmnet.cli import main
from rmnet.reproduce.job import run_state
from rmnet.reproduce.paper import TITLES
from rmnet.reproduce.plan import build_plan, smoke_subset


@pytest.fixture(scope="module")
def smoke(isic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    assert main(["reproduce", "--data", str(isic_root), "--out", str(out), "--smoke", "--seeds", "0"]) == 0
    return out


def test_smoke_writes_every_table_with_every_row_and_the_papers_numbers(smoke):
    plan = build_plan(seeds=[0])
    for table in TITLES:
        text = (smoke / f"table{table}.md").read_text()
        assert text.startswith(f"# Table {table}: {TITLES[table]}")
        for row in (r for r in plan.rows if r.table == table):
            assert f"| {row.label}" in text, (table, row.label)
    table3 = (smoke / "table3.md").read_text()
    rm_row = next(line for line in table3.splitlines() if line.startswith("| RM |"))
    cells = [c.strip() for c in rm_row.strip("|").split("|")]
    assert cells[2] == "64.66±0.99" and cells[1] != "–"  # ours (a number), then the paper's
    assert float(cells[1]) >= 0
    assert "| 7–8 |" in (smoke / "table6.md").read_text()


def test_runs_csv_lists_every_planned_run_and_the_smoke_runs_are_finished(smoke):
    plan = build_plan(seeds=[0])
    with open(smoke / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(plan.runs())
    finished = {r["experiment"] for r in rows if r["state"] == "finished"}
    assert finished == smoke_subset(plan)
    hashed = next(r for r in rows if r["experiment"] == "resnet18_rm-5-8_hash")
    assert hashed["map_at_k"] and hashed["mrr_at_k"] and hashed["val_score"]


def test_a_second_call_skips_finished_runs_and_an_interrupted_run_resumes(smoke, isic_root, capsys):
    run = smoke / "runs" / "resnet18_rm-5-8" / "seed-0"
    shutil.rmtree(run / "report")
    (run / "metrics.csv").write_text((run / "metrics.csv").read_text().splitlines()[0] + "\n")
    assert run_state(run) == "interrupted"
    assert main(["reproduce", "--data", str(isic_root), "--out", str(smoke), "--smoke", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out
    assert run_state(run) == "finished"


def test_a_missing_data_folder_is_one_clear_error_before_any_run(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["reproduce", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--smoke"]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert not out.exists()  # nothing planned, run or written


def test_failed_runs_make_the_command_fail_after_writing_the_tables(isic_root, tmp_path, capsys):
    out = tmp_path / "paper"  # every run fails: --train-args gives train an option it refuses
    argv = [
        "reproduce",
        "--data",
        str(isic_root),
        "--out",
        str(out),
        "--smoke",
        "--seeds",
        "0",
        "--tables",
        "3",
    ]
    assert main([*argv, "--train-args", "--optimizer rmsprop"]) == 1
    err = capsys.readouterr().err
    assert "runs failed" in err and "run the command again to retry them" in err
    assert (out / "table3.md").is_file() and (out / "runs.csv").is_file()
