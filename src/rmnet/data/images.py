"""Reading one image file as an upright RGB picture, whatever its mode, size or EXIF tag."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps

SKIPPED_FILE = "skipped.json"  # in a cache folder and in a run folder: the images left out
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class UnreadableImageError(OSError):
    """An image file that is missing, truncated or not an image; the message names the file."""


class SkippedImage(NamedTuple):
    """An image left out with ``on_error="skip"``: its id, its file and what was wrong with it."""

    id: str
    path: Path
    reason: str

    def line(self) -> str:
        """One line naming the image, e.g. for a warning or a log."""
        return f"skipped image {self.id} ({self.path}): {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "path": str(self.path), "reason": self.reason}


class SkippedImageWarning(UserWarning):
    """Issued once per image left out by ``on_error="skip"`` (the command line prints it as one line)."""


def warn_skipped(skipped: Iterable[SkippedImage]) -> None:
    """One :class:`SkippedImageWarning` per skipped image, naming it."""
    for image in skipped:
        warnings.warn(image.line(), SkippedImageWarning, stacklevel=2)


def save_skipped(
    path: str | os.PathLike, skipped: Iterable[SkippedImage] | Mapping[str, Iterable[SkippedImage]]
) -> Path:
    """Write ``{"skipped": [{"id", "path", "reason"}, …]}`` atomically; given a mapping from part
    names ("train", "val") to skipped images, each entry also names its ``part``."""
    from rmnet.io import atomic_write_text

    if isinstance(skipped, Mapping):
        rows = [image.to_dict() | {"part": part} for part, images in skipped.items() for image in images]
    else:
        rows = [image.to_dict() for image in skipped]
    return atomic_write_text(path, json.dumps({"skipped": rows}, indent=1) + "\n")


def read_skipped(folder: str | os.PathLike) -> list[SkippedImage]:
    """The images listed in ``folder/skipped.json`` (a cache or a run folder); none without one."""
    path = Path(folder) / SKIPPED_FILE
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["skipped"]
    return [SkippedImage(row["id"], Path(row["path"]), row["reason"]) for row in rows]


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file name with a known image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def open_rgb(path: str | os.PathLike, min_short_edge: int | None = None) -> Image.Image:
    """Decode ``path`` to RGB (grayscale, CMYK, palette and alpha converted), EXIF rotation applied.

    ``min_short_edge`` lets a large JPEG decode at a reduced scale (libjpeg's DCT scaling: several
    times faster) while its short edge stays at least that long; the caller resizes exactly.
    """
    try:
        with Image.open(path) as image:
            if min_short_edge is not None and min(image.size) > min_short_edge:
                scale = min_short_edge / min(image.size)
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image if image.mode == "RGB" else image.convert("RGB")  # pixels stay after the file closes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


def resize_short_edge(image: Image.Image, short_edge: int) -> Image.Image:
    """Shrink ``image`` so its short edge is ``short_edge``, keeping the aspect ratio (never enlarges)."""
    scale = short_edge / min(image.size)
    if scale >= 1:
        return image
    size = (max(short_edge, round(image.width * scale)), max(short_edge, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def check_image(path: str | os.PathLike) -> str | None:
    """Decode ``path`` cheaply (JPEGs at 1/8 scale, still reading every byte); the problem or None."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return describe_problem(error)
    return None


def describe_problem(error: BaseException) -> str:
    """What was wrong with a file, without its path: ``"OSError: image file is truncated …"``."""
    cause = error.__cause__ if isinstance(error, UnreadableImageError) and error.__cause__ else error
    return f"{type(cause).__name__}: {cause}"
