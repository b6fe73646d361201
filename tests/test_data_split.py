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


@pytest.mark.parametrize("ratios", [(0.2, 0.4, 0.4), (0.3, 0.3, 0.4), (0.45, 0.45, 0.1)])
def test_train_ratios_below_one_half_keep_the_ratios_and_a_training_image_of_every_class(ratios):
    # With a train ratio under 0.5 the midpoint of a class's only image falls outside train: the
    # rule "the first unit of every class trains" is what keeps such a class learnable.
    table = _table([100, 1, 2, 3])
    for seed in range(5):
        split = make_split(table, seed=seed, ratios=ratios)
        _check_partition(split, len(table))
        assert (table.subset(split.train).class_counts() >= 1).all(), seed
        big = [int(table.subset(split.part(name)).class_counts()[0]) for name in ("train", "val", "test")]
        assert all(abs(n - 100 * r) <= 1 for n, r in zip(big, ratios, strict=True)), (seed, big)


def test_a_one_image_class_trains_even_when_train_is_the_smallest_part():
    table = _table([40, 1])
    for seed in range(5):
        split = make_split(table, seed=seed, ratios=(0.1, 0.45, 0.45))
        assert len(table) - 1 in split.train  # the only image of class c1


def _mixed_lesion_table() -> ImageTable:
    """Class c0: 30 single images. Lesion "mixed": two images of class c1, then one of class c0."""
    labels = np.array([0] * 30 + [1, 1, 0])
    groups = [None] * 30 + ["mixed"] * 3
    return ImageTable([f"img{i}" for i in range(33)], [f"img{i}.jpg" for i in range(33)], labels,
                      ["c0", "c1"], groups)  # fmt: skip


def test_a_lesion_with_mixed_labels_stays_whole_and_counts_for_its_majority_class():
    table = _mixed_lesion_table()
    lesion = [30, 31, 32]
    for seed in range(8):
        split = make_split(table, seed=seed, ratios=(0.2, 0.4, 0.4), group_by_lesion=True)
        _check_partition(split, len(table))
        # The lesion is a c1 lesion (2 of its 3 images): the only unit of c1, so it trains, whole.
        # Taken by its last image it would be one of 31 c0 units and land in val or test mostly.
        assert set(lesion) <= set(split.train), seed
        assert (table.subset(split.train).class_counts() >= 1).all()
        # The 30 single c0 images keep the ratios on their own (6 / 12 / 12).
        singles = [len([i for i in split.part(name) if i < 30]) for name in ("train", "val", "test")]
        assert abs(singles[0] - 6) <= 1 and abs(singles[1] - 12) <= 1, (seed, singles)


def test_without_lesion_groups_the_images_of_a_mixed_lesion_split_by_their_own_labels():
    table = _mixed_lesion_table()
    split = make_split(table, seed=0, ratios=(0.2, 0.4, 0.4))
    _check_partition(split, len(table))
    assert {30, 31} & set(split.train)  # one of the two c1 images trains: the first in shuffled order


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
