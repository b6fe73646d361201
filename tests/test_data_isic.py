"""The ISIC 2019 loader on a fixture in the published layout, with the real files' quirks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmnet.data import ImageDataset, load_image_table, load_isic2019
from rmnet.data.isic import GROUND_TRUTH_NAME, METADATA_NAME


def _copy(isic_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(isic_root, tmp_path / "isic"))


def test_loads_every_row_with_float_one_hot_labels(isic_root):
    table = load_image_table(isic_root)
    truth = pd.read_csv(isic_root / GROUND_TRUTH_NAME)
    assert len(table) == len(truth) == 32
    expected = truth[table.class_names].to_numpy().argmax(axis=1)
    np.testing.assert_array_equal(table.labels, expected)
    assert table.class_counts().tolist() == [8, 8, 8, 8]


def test_classes_no_image_uses_are_left_out_unk_included(isic_root):
    table = load_image_table(isic_root)
    assert table.class_names == ["MEL", "NV", "BCC", "BKL"]  # AK, DF, VASC, SCC, UNK are all zeros


def test_finds_csvs_in_the_parent_of_the_images_folder(isic_root):
    from_top = load_image_table(isic_root)
    from_images = load_image_table(isic_root / "ISIC_2019_Training_Input")
    assert from_images.ids == from_top.ids and from_images.paths == from_top.paths
    assert from_images.metadata is not None


def test_ground_truth_csv_itself_is_a_source(isic_root):
    table = load_image_table(isic_root / GROUND_TRUTH_NAME)
    assert len(table) == 32 and all(p.is_file() for p in table.paths)


def test_explicit_csv_paths_work_with_other_names(isic_root, tmp_path):
    truth, meta = tmp_path / "labels.csv", tmp_path / "meta.csv"
    shutil.copy(isic_root / GROUND_TRUTH_NAME, truth)
    shutil.copy(isic_root / METADATA_NAME, meta)
    images = tmp_path / "jpegs"
    shutil.copytree(isic_root / "ISIC_2019_Training_Input", images)
    table = load_image_table(images, ground_truth=truth, metadata=meta)
    assert len(table) == 32 and table.groups[0] == "HAM_0000000"


def test_downsampled_suffix_is_stripped_from_the_id_but_the_file_is_found(isic_root, isic_quirks):
    table = load_image_table(isic_root)
    index = table.ids.index(isic_quirks["downsampled"])
    assert table.paths[index].name == isic_quirks["downsampled"] + "_downsampled.jpg"
    assert not any(i.endswith("_downsampled") for i in table.ids)


def test_downsampled_name_in_csv_finds_a_file_without_the_suffix(isic_root, isic_quirks, tmp_path):
    root = _copy(isic_root, tmp_path)
    name = isic_quirks["downsampled"]
    folder = root / "ISIC_2019_Training_Input"
    (folder / f"{name}_downsampled.jpg").rename(folder / f"{name}.jpg")
    table = load_image_table(root)
    assert table.paths[table.ids.index(name)].name == f"{name}.jpg"


def test_metadata_is_aligned_with_missing_values_as_nan(isic_root, isic_quirks):
    table = load_image_table(isic_root)
    meta = table.metadata
    assert list(meta.columns) == ["age_approx", "anatom_site_general", "lesion_id", "sex"]
    for image_id in isic_quirks["no_age"]:
        assert np.isnan(meta["age_approx"][table.ids.index(image_id)])
    for image_id in isic_quirks["no_sex"]:
        assert pd.isna(meta["sex"][table.ids.index(image_id)])
    assert meta["age_approx"][table.ids.index("ISIC_0000001")] == 35.0


def test_rows_without_lesion_id_have_no_group_and_lesions_repeat(isic_root, isic_quirks):
    table = load_image_table(isic_root)
    for image_id in isic_quirks["no_lesion_id"]:
        assert table.groups[table.ids.index(image_id)] is None
    groups = [g for g in table.groups if g is not None]
    assert len(set(groups)) < len(groups)


def test_without_metadata_csv_groups_are_none(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    (root / METADATA_NAME).unlink()
    table = load_image_table(root)
    assert table.metadata is None and table.groups == [None] * len(table)


def test_quirky_jpegs_decode_to_upright_rgb(isic_root, isic_quirks):
    table = load_image_table(isic_root)
    dataset = ImageDataset(table, transform=None)
    for quirk in ("grayscale", "cmyk", "exif_rotated", "downsampled"):
        image, _ = dataset[table.ids.index(isic_quirks[quirk])]
        assert image.shape[0] == 3, quirk
    rotated, _ = dataset[table.ids.index(isic_quirks["exif_rotated"])]
    assert tuple(rotated.shape[1:]) == (32, 24)  # stored 32 wide × 24 high, tagged "rotate 90°"


def test_images_of_different_sizes_are_loaded_as_they_are(isic_root):
    dataset = ImageDataset(load_image_table(isic_root))
    sizes = {tuple(dataset[i][0].shape[1:]) for i in range(8)}
    assert len(sizes) >= 3


def test_missing_column_is_named_with_the_columns_found(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    truth = pd.read_csv(root / GROUND_TRUTH_NAME).drop(columns=["MEL"])
    truth.to_csv(root / GROUND_TRUTH_NAME, index=False)
    with pytest.raises(ValueError, match=r"missing column 'MEL' \(found: image, NV, BCC"):
        load_image_table(root)


def test_image_missing_on_disk_is_named_with_the_count(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    for name in ("ISIC_0000004", "ISIC_0000005"):
        (root / "ISIC_2019_Training_Input" / f"{name}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 images listed in .* ISIC_0000004, ISIC_0000005") as error:
        load_image_table(root)
    # The advice names the command-line option (not a Python argument), and following it works.
    assert "--ground-truth" in str(error.value) and "ground_truth=" not in str(error.value)
    truth = pd.read_csv(root / GROUND_TRUTH_NAME)
    truth[~truth["image"].isin(["ISIC_0000004", "ISIC_0000005"])].to_csv(tmp_path / "subset.csv", index=False)
    assert len(load_image_table(root, ground_truth=tmp_path / "subset.csv")) == 30


def test_many_missing_images_say_how_many_more(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    for path in sorted((root / "ISIC_2019_Training_Input").glob("ISIC_00000[1-2]*.jpg")):
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"20 images .*\(and 17 more\)"):
        load_image_table(root)


@pytest.mark.parametrize(("row", "what"), [({"MEL": 0.0}, "no class"), ({"NV": 1.0}, "two classes")])
def test_row_with_no_or_two_classes_names_the_image(isic_root, tmp_path, row, what):
    root = _copy(isic_root, tmp_path)
    truth = pd.read_csv(root / GROUND_TRUTH_NAME)
    for column, value in row.items():
        truth.loc[1, column] = value  # ISIC_0000001 is a MEL
    truth.to_csv(root / GROUND_TRUTH_NAME, index=False)
    with pytest.raises(ValueError, match=f"image ISIC_0000001 has {what}"):
        load_image_table(root)


def test_non_numeric_label_value_names_image_and_column(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    truth = pd.read_csv(root / GROUND_TRUTH_NAME, dtype=str)
    truth.loc[3, "BCC"] = "yes"
    truth.to_csv(root / GROUND_TRUTH_NAME, index=False)
    with pytest.raises(ValueError, match=r"ISIC_0000003 has 'yes' in column 'BCC'"):
        load_image_table(root)


def test_folder_without_ground_truth_is_not_taken_for_isic(tmp_path):
    with pytest.raises(FileNotFoundError, match=GROUND_TRUTH_NAME):
        load_isic2019(tmp_path)


def test_class_names_given_that_lack_a_class_in_the_data_is_an_error(isic_root):
    with pytest.raises(ValueError, match=r"unknown class 'BKL'"):
        load_image_table(isic_root, class_names=["MEL", "NV", "BCC"])


def test_class_names_given_map_labels_onto_the_full_isic_order(isic_root):
    table = load_image_table(isic_root, class_names=["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"])
    assert table.class_counts().tolist() == [8, 8, 8, 0, 8, 0, 0, 0]
