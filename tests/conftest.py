"""Shared fixtures: tiny data sets generated once per test session (read-only for the tests).

- ``isic_root``: a folder in the exact ISIC 2019 layout with the real files' quirks
  (``isic_quirks`` says which image has which).
- ``lesion_root``: a tiny generated lesion data set, one folder per class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rmnet.data.lesions import make_lesion_dataset, render_lesion

# Tiny tensors gain nothing from several threads, and on a shared 2-core machine the threads of
# one test fight each other and every other process: one thread keeps the suite fast everywhere.
torch.set_num_threads(1)

ISIC_USED_CLASSES = ("MEL", "NV", "BCC", "BKL")  # the other columns, UNK included, are all zeros
ISIC_COLUMNS = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC_PER_CLASS = 8
ISIC_SIZES = ((32, 24), (24, 32), (28, 28), (30, 20))  # (width, height), like 600×450 vs 1024×1024
ISIC_QUIRKS = {
    "downsampled": "ISIC_0000000",  # listed and stored as ISIC_0000000_downsampled
    "grayscale": "ISIC_0000009",
    "cmyk": "ISIC_0000018",
    "exif_rotated": "ISIC_0000027",  # stored 32×24 with EXIF orientation 6: upright it is 24×32
    "no_lesion_id": ("ISIC_0000005", "ISIC_0000013"),
    "no_age": ("ISIC_0000002", "ISIC_0000020"),
    "no_sex": ("ISIC_0000003",),
}


def _write_isic_image(path: Path, rng: np.random.Generator, index: int, quirk: str | None) -> None:
    kind = ("regular", "lobed", "globules", "streaks")[index % 4]
    image = Image.fromarray(render_lesion(kind, 32, rng)).resize(ISIC_SIZES[index % len(ISIC_SIZES)])
    if quirk == "grayscale":
        image.convert("L").save(path, quality=90)
    elif quirk == "cmyk":
        image.convert("CMYK").save(path, quality=90)
    elif quirk == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
        image.resize((32, 24)).save(path, quality=90, exif=exif)
    else:
        image.save(path, quality=90)


@pytest.fixture(scope="session")
def isic_quirks() -> dict:
    """Which image of ``isic_root`` carries which quirk (canonical ids)."""
    return ISIC_QUIRKS


@pytest.fixture(scope="session")
def isic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ISIC 2019 layout: the two CSVs beside ``ISIC_2019_Training_Input/`` (32 JPEGs, 4 classes × 8)."""
    root = tmp_path_factory.mktemp("isic2019")
    images = root / "ISIC_2019_Training_Input"
    images.mkdir()
    rng = np.random.default_rng(0)
    special = {v: k for k, v in ISIC_QUIRKS.items() if isinstance(v, str)}
    truth, meta = [], []
    for index in range(ISIC_PER_CLASS * len(ISIC_USED_CLASSES)):
        image_id = f"ISIC_{index:07d}"
        name = image_id + "_downsampled" if special.get(image_id) == "downsampled" else image_id
        _write_isic_image(images / f"{name}.jpg", rng, index, special.get(image_id))
        label = ISIC_USED_CLASSES[index // ISIC_PER_CLASS]
        truth.append({"image": name, **{c: "1.0" if c == label else "0.0" for c in ISIC_COLUMNS}})
        lesion = f"HAM_{index // 2:07d}"  # two images per lesion, both of the same class
        lesion = None if image_id in ISIC_QUIRKS["no_lesion_id"] else lesion
        meta.append(
            {
                "image": name,
                "age_approx": "" if image_id in ISIC_QUIRKS["no_age"] else f"{30 + 5 * (index % 9)}.0",
                "anatom_site_general": "" if index % 7 == 0 else ("anterior torso", "head/neck")[index % 2],
                "lesion_id": lesion or "",
                "sex": "" if image_id in ISIC_QUIRKS["no_sex"] else ("male", "female")[index % 2],
            }
        )
    pd.DataFrame(truth).to_csv(root / "ISIC_2019_Training_GroundTruth.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "ISIC_2019_Training_Metadata.csv", index=False)
    return root


@pytest.fixture(scope="session")
def lesion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated lesions, 24 px PNGs, 4 classes × 10 images in one folder per class."""
    return make_lesion_dataset(
        tmp_path_factory.mktemp("lesions"), n_per_class=10, size=24, seed=0, num_classes=4
    )
