"""The stratified 8:1:1 split: proportions, seed, lesion groups, tiny classes, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmnet.data import ImageTable, load_image_table, load_split, make_split, save_split


def _table(counts: list[int], groups_of: int | None = None) -> ImageTable:
    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    groups = [f"L{c}_{i // groups_of}" for c, i in zip(labels, range(n), strict=True)] if groups_of else []
    return ImageTable([f"img{i}" for i in range(n)], [f"img{i}.jpg" for i in range(n)], labels,
                      [f"c{c}" for c in range(len(counts))], groups)  # fmt: skip


def _check_partition(split, n: int) -> None:
    parts = [*split.train, *split.val, *split.test]
    assert sorted(parts) == list(range(n))


def test_split_is_a_partition_in_ratio_8_1_1_within_every_class():
    table = _table([500, 200, 100, 40])
    split = make_split(table, seed=0)
    _check_partition(split, len(table))
    counts = {name: table.subset(split.part(name)).class_counts() for name in ("train", "val", "test")}
    for c, n_c in enumerate(table.class_counts()):
        assert abs(counts["train"][c] - 0.8 * n_c) <= 1
        assert abs(counts["val"][c] - 0.1 * n_c) <= 1
        assert abs(counts["test"][c] - 0.1 * n_c) <= 1


def test_same_seed_same_split_other_seed_other_split():
    table = _table([60, 30, 10])
    assert make_split(table, seed=3) == make_split(table, seed=3)
    assert make_split(table, seed=3).test != make_split(table, seed=4).test


def test_custom_ratios_are_respected():
    split = make_split(_table([100, 100]), ratios=(0.6, 0.2, 0.2))
    assert (len(split.train), len(split.val), len(split.test)) == (120, 40, 40)


def test_tiny_classes_always_have_a_training_image():
    table = _table([50, 1, 2, 3])
    for seed in range(10):
        split = make_split(table, seed=seed)
        _check_partition(split, len(table))
        assert (table.subset(split.train).class_counts() >= 1).all()


def test_group_by_lesion_never_puts_one_lesion_on_two_sides():
    table = _table([120, 60, 30], groups_of=3)
    split = make_split(table, seed=1, group_by_lesion=True)
    _check_partition(split, len(table))
    side = {}
    for name in ("train", "val", "test"):
        for i in split.part(name):
            assert side.setdefault(table.groups[i], name) == name
    assert abs(len(split.test) - 21) <= 3 and abs(len(split.val) - 21) <= 3


def test_group_by_lesion_on_isic_fixture_keeps_lesions_together_and_images_without_id_alone(isic_root):
    table = load_image_table(isic_root)
    split = make_split(table, seed=0, group_by_lesion=True)
    _check_partition(split, len(table))
    for name in ("val", "test"):
        others = {
            table.groups[i] for part in ("train", "val", "test") if part != name for i in split.part(part)
        }
        assert not ({table.groups[i] for i in split.part(name)} - {None}) & others
    assert (table.subset(split.train).class_counts() >= 1).all()


def test_ungrouped_split_may_separate_images_of_one_lesion():
    table = _table([300], groups_of=10)
    split = make_split(table, seed=0)
    train_groups = {table.groups[i] for i in split.train}
    assert train_groups & {table.groups[i] for i in split.test}


def test_bad_ratios_are_rejected():
    with pytest.raises(ValueError, match="summing to 1"):
        make_split(_table([10]), ratios=(0.8, 0.1, 0.2))


def test_save_load_round_trip_keeps_everything(tmp_path):
    table = _table([30, 20])
    split = make_split(table, seed=7, ratios=(0.7, 0.2, 0.1), group_by_lesion=False)
    path = save_split(split, tmp_path / "run" / "split.json")
    assert load_split(path) == split
    assert load_split(path, table) == split
    record = json.loads(path.read_text())
    assert record["seed"] == 7 and record["ratios"] == [0.7, 0.2, 0.1] and record["ids"] == table.ids


def test_load_with_a_different_table_is_detected(tmp_path):
    path = save_split(make_split(_table([30, 20])), tmp_path / "split.json")
    other = _table([30, 25])
    other.ids[3] = "someone_else"
    with pytest.raises(ValueError, match=r"made for a different table: 1 of its images .*img3"):
        load_split(path, other)


def test_load_with_the_same_images_in_another_order_maps_indices_by_id(tmp_path):
    table = _table([30, 20])
    split = make_split(table)
    path = save_split(split, tmp_path / "split.json")
    reordered = table.subset(np.arange(len(table))[::-1])
    moved = load_split(path, reordered)
    assert [reordered.ids[i] for i in moved.test] == sorted(
        (table.ids[i] for i in split.test), key=reordered.ids.index
    )


def test_not_a_split_file_is_named(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a split file"):
        load_split(tmp_path / "x.json")
