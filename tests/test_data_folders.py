"""A user's own data: one sub-folder per class, or a CSV of path,label; and the ImageTable they give."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rmnet.data import ImageTable, load_image_table


def _image(path: Path, colour=(200, 120, 90)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)
    return path


def test_class_folders_give_sorted_classes_and_relative_ids(lesion_root):
    table = load_image_table(lesion_root)
    assert table.class_names == sorted(table.class_names) == ["globules", "lobed", "regular", "streaks"]
    assert table.class_counts().tolist() == [10, 10, 10, 10]
    assert table.ids[0] == "globules/globules_0000"
    assert all(table.class_names[label] in id_ for label, id_ in zip(table.labels, table.ids, strict=True))


def test_class_folders_include_images_in_nested_folders(tmp_path):
    _image(tmp_path / "a" / "x.jpg")
    _image(tmp_path / "a" / "visit2" / "y.png")
    _image(tmp_path / "b" / "z.jpeg")
    table = load_image_table(tmp_path)
    assert table.ids == ["a/visit2/y", "a/x", "b/z"]
    assert table.class_counts().tolist() == [2, 1]


def test_non_image_files_are_skipped_with_a_warning_and_hidden_files_ignored(tmp_path):
    _image(tmp_path / "a" / "x.jpg")
    _image(tmp_path / "b" / "y.jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".DS_Store").write_text("")
    with pytest.warns(UserWarning, match=r"skipped 1 files that are not images .*notes.txt"):
        table = load_image_table(tmp_path)
    assert len(table) == 2


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    _image(tmp_path / "a" / "x.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty has no images"):
        load_image_table(tmp_path)


def test_folder_without_class_folders_is_an_error_saying_what_is_expected(tmp_path):
    _image(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="one folder per class"):
        load_image_table(tmp_path)


def test_numeric_class_names_sort_as_numbers(tmp_path):
    for name in ("2", "10", "9"):
        _image(tmp_path / name / "x.png")
    assert load_image_table(tmp_path).class_names == ["2", "9", "10"]


def test_class_names_given_fix_the_order_and_reject_unknown_folders(lesion_root):
    order = ["streaks", "regular", "lobed", "globules", "network"]
    table = load_image_table(lesion_root, class_names=order)
    assert table.class_names == order and table.class_counts().tolist() == [10, 10, 10, 10, 0]
    assert table.class_names[table.labels[0]] == "globules"
    with pytest.raises(ValueError, match=r"unknown class 'streaks'"):
        load_image_table(lesion_root, class_names=["globules", "lobed", "regular"])


def test_csv_list_resolves_paths_relative_to_the_csv(tmp_path):
    _image(tmp_path / "imgs" / "p1.jpg")
    _image(tmp_path / "imgs" / "p2.jpg")
    absolute = _image(tmp_path / "elsewhere" / "p3.png")
    csv = tmp_path / "lists" / "data.csv"
    csv.parent.mkdir()
    rows = [("../imgs/p1.jpg", "benign"), ("../imgs/p2.jpg", "malignant"), (str(absolute), "benign")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(csv, index=False)
    table = load_image_table(csv)
    assert table.class_names == ["benign", "malignant"]
    assert table.labels.tolist() == [0, 1, 0]
    assert all(p.is_file() for p in table.paths) and table.metadata is None


def test_csv_list_optional_id_lesion_id_and_metadata_columns(tmp_path):
    for name in ("a", "b", "c"):
        _image(tmp_path / f"{name}.jpg")
    frame = pd.DataFrame(
        {
            "path": ["a.jpg", "b.jpg", "c.jpg"],
            "label": ["x", "y", "x"],
            "id": ["first", "second", "third"],
            "lesion_id": ["L1", "", "L1"],
            "age": [40, 50, None],
        }
    )
    frame.to_csv(tmp_path / "list.csv", index=False)
    table = load_image_table(tmp_path / "list.csv")
    assert table.ids == ["first", "second", "third"]
    assert table.groups == ["L1", None, "L1"]
    assert list(table.metadata.columns) == ["age"] and np.isnan(table.metadata["age"][2])


def test_csv_list_missing_column_is_named(tmp_path):
    pd.DataFrame({"file": ["a.jpg"], "label": ["x"]}).to_csv(tmp_path / "list.csv", index=False)
    with pytest.raises(ValueError, match=r"missing column 'path' \(found: file, label\)"):
        load_image_table(tmp_path / "list.csv")


def test_csv_list_missing_file_is_named(tmp_path):
    _image(tmp_path / "a.jpg")
    pd.DataFrame({"path": ["a.jpg", "gone.jpg"], "label": ["x", "y"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"1 images listed in .* do not exist: .*gone.jpg"):
        load_image_table(tmp_path / "l.csv")


def test_csv_list_row_without_label_is_named(tmp_path):
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": ["x", None]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ValueError, match="row 3 has no label"):
        load_image_table(tmp_path / "l.csv")


def test_csv_list_unknown_class_against_given_classes(tmp_path):
    _image(tmp_path / "a.jpg")
    pd.DataFrame({"path": ["a.jpg"], "label": ["zebra"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(ValueError, match=r"unknown class 'zebra' \(known classes: MEL, NV\)"):
        load_image_table(tmp_path / "l.csv", class_names=["MEL", "NV"])


def test_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_table(tmp_path / "nowhere")


def test_table_subset_keeps_classes_groups_and_metadata_rows(isic_root):
    table = load_image_table(isic_root)
    part = table.subset([3, 0, 9])
    assert part.ids == [table.ids[3], table.ids[0], table.ids[9]]
    assert part.class_names == table.class_names and part.groups == [table.groups[i] for i in (3, 0, 9)]
    assert part.metadata["lesion_id"].tolist() == [table.metadata["lesion_id"][i] for i in (3, 0, 9)]
    assert part.class_counts().sum() == 3 and len(part.class_counts()) == table.num_classes


def test_table_rejects_repeated_ids_and_out_of_range_labels():
    with pytest.raises(ValueError, match="repeated: a"):
        ImageTable(["a", "a"], ["x.jpg", "y.jpg"], np.array([0, 1]), ["c0", "c1"])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        ImageTable(["a", "b"], ["x.jpg", "y.jpg"], np.array([0, 2]), ["c0", "c1"])


def test_copy_of_a_folder_loads_identically(lesion_root, tmp_path):
    copy = Path(shutil.copytree(lesion_root, tmp_path / "copy"))
    original, copied = load_image_table(lesion_root), load_image_table(copy)
    assert copied.ids == original.ids and copied.labels.tolist() == original.labels.tolist()
