"""rmnet.report: angles stay numbers, rows sort by angle, and mean ± SD over runs reads them back."""

from rmnet.report import aggregate_reports, angle_label, flatten_numbers, summary_markdown


def report(accuracy: float) -> dict:
    rows = [{"angle": a, "accuracy": accuracy, "changed": 0.0} for a in (0.0, 22.5, 90.0, 180.0, 270.0)]
    rows.append({"angle": "random", "accuracy": accuracy / 2, "changed": 0.5})
    return {"classification": {"kappa": accuracy}, "rotation": {"angles": rows}}


def test_angles_read_as_numbers_with_their_decimals():
    assert [angle_label(a) for a in (0, 22.5, 90.0, "random")] == ["upright", "22.5°", "90°", "random angle"]


def test_flattened_rotation_rows_are_keyed_by_angle_and_aggregate_over_runs():
    flat = flatten_numbers(report(0.8))
    assert flat["rotation.angles.22.5.accuracy"] == 0.8 and flat["rotation.angles.random.changed"] == 0.5
    stats = aggregate_reports([report(0.6), report(0.8)])
    assert round(stats["rotation.angles.90.accuracy"]["mean"], 6) == 0.7


def test_the_summary_lists_rotations_in_angle_order_not_string_order():
    stats = aggregate_reports([report(0.6), report(0.8)])
    text = summary_markdown(stats, ["seed-0", "seed-1"], [0.0, 22.5, 90.0, 180.0, 270.0, "random"])
    lines = [line for line in text.splitlines() if line.startswith("| accuracy,")]
    assert [line.split("|")[1].strip() for line in lines] == [
        "accuracy, 22.5°", "accuracy, 90°", "accuracy, 180°", "accuracy, 270°", "accuracy, random angle",
    ]  # fmt: skip
    assert "| accuracy, 22.5° | 70.00 ± 14.14 |" in text
