"""Reading one image file as an upright RGB picture, whatever its mode, size or EXIF tag."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

SKIPPED_FILE = "skipped.json"  # in a cache folder and in a run folder: the images left out
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


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
    """Decode ``path`` to RGB (:func:`to_rgb`: 16-bit grey by its bit depth, transparency on white),
    EXIF rotation applied.

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
            return to_rgb(image)  # a new image unless already RGB: pixels stay after the file closes
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode as RGB: 16-bit and 32-bit grey scaled by their bit depth (:func:`bit_depth`), never
    clipped; transparent pixels composited onto white (``BACKGROUND``), as a browser shows them."""
    if image.mode.startswith(("I", "F")):
        image = to_8bit(image)
    transparent = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if transparent:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def bit_depth(maximum: float) -> int:
    """The bits a grey image's values need: 8, 10, 12, 14, 16, or 32 (its brightest pixel decides)."""
    for bits in (8, 10, 12, 14, 16):
        if maximum < 2**bits:
            return bits
    return 32


def to_8bit(image: Image.Image) -> Image.Image:
    """A 1-bit, 16-bit ("I;16…"), 32-bit ("I") or float ("F") grey image as 8-bit "L".

    Integers are scaled from their bit depth to 0…255 (a 16-bit value v becomes v·255/65535);
    floats whose values are all within 0…1 are scaled by 255, others as integers.
    """
    if image.mode in ("1", "L"):
        return image.convert("L")
    pixels = np.asarray(image)
    if image.mode == "F" and float(pixels.max(initial=0)) <= 1.0:
        top = 1.0
    else:
        top = float(2 ** bit_depth(float(pixels.max(initial=0))) - 1)
    out = np.empty(pixels.shape, np.uint8)
    for start in range(0, len(pixels), 256):  # by bands of rows: no full-size float copy
        rows = pixels[start : start + 256].astype(np.float32)
        out[start : start + 256] = np.clip(np.rint(rows * (255.0 / top)), 0, 255)
    return Image.fromarray(out, "L")


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
