"""The paper's image transforms (torchvision.transforms.v2), for PIL images and tensors alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from rmnet.models.weights import IMAGENET_MEAN, IMAGENET_STD, resize_for

FULL_CIRCLE = 360.0
_HFLIP = v2.RandomHorizontalFlip(p=1.0)
_VFLIP = v2.RandomVerticalFlip(p=1.0)
_TRUE_WORDS = ("true", "yes", "on")
_FALSE_WORDS = ("false", "no", "off", "none")


def max_rotation_angle(value: bool | float | int | str | None) -> float:
    """The largest rotation angle in degrees that rotation augmentation may draw, from any spelling.

    Numbers are degrees in [0, 360]: 0 is off, 45 draws uniformly from [−45°, 45°], 180 or more
    the whole circle. For backward compatibility ``True`` (and "true", "yes", "on") is 360 and
    ``False``/``None`` (and "false", "no", "off", "none") is 0.
    """
    if value is None or isinstance(value, bool):
        return FULL_CIRCLE if value else 0.0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS or word in _FALSE_WORDS:
            return FULL_CIRCLE if word in _TRUE_WORDS else 0.0
        try:
            value = float(word)
        except ValueError as err:
            raise ValueError(
                f"rotation_augmentation must be an angle in degrees (0–360) or true/false, got {value!r}"
            ) from err
    angle = float(value)
    if not math.isfinite(angle) or not 0.0 <= angle <= FULL_CIRCLE:
        raise ValueError(
            f"rotation_augmentation must be an angle in degrees between 0 (off) and 360 (the whole "
            f"circle), got {value!r}"
        )
    return angle


def random_rotation(max_angle: bool | float | str | None) -> v2.RandomRotation | None:
    """A bilinear rotation by an angle uniform in [−max_angle, max_angle] (zeros outside), or None for 0.

    From 180° up it is the whole circle, drawn from [0°, 360°) as the boolean option always did.
    With RM over C4 (exact quarter turns) 45° covers every orientation; 22.5° with C8.
    """
    angle = max_rotation_angle(max_angle)
    if angle == 0.0:
        return None
    degrees = (0.0, FULL_CIRCLE) if angle >= 180.0 else (-angle, angle)
    return v2.RandomRotation(degrees=degrees, interpolation=v2.InterpolationMode.BILINEAR)


ROTATION_MODES = ("continuous", "quarter")  # = rmnet.config.ROTATION_AUGMENTATION_MODES
RANDAUGMENT = dict(num_ops=2, magnitude=10)  # MWNL's authors' AUG_LAYER_NUM and AUG_MAG


class RandomQuarterTurn:
    """Turn the image by 0, 90, 180 or 270° (each equally likely; torch's generator): exact, no
    interpolation and nothing cut off, the paper's "90-degree" rotation interval."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        turns = int(torch.randint(4, ()))
        turned = torch.rot90(image, turns, dims=(-2, -1))
        return tv_tensors.wrap(turned, like=image) if isinstance(image, tv_tensors.Image) else turned

    def __repr__(self) -> str:
        return "RandomQuarterTurn()"


class GridCrops:
    """An n×n grid of ``size`` crops spread evenly over the image, corner to corner, stacked
    (n², C, size, size): MWNL's authors' multi-crop test (their ``_val_multi_crop``)."""

    def __init__(self, size: int, crops: int) -> None:
        per_side = math.isqrt(crops)
        if crops < 2 or per_side * per_side != crops:
            raise ValueError(f"grid crops need a square number of at least 4 crops, got {crops}")
        self.size, self.per_side = size, per_side

    def offsets(self, length: int) -> list[int]:
        """Where the crops start along a side of ``length`` pixels (first flush, last flush)."""
        span = length - self.size
        return [int(i * span / (self.per_side - 1)) for i in range(self.per_side)]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if min(h, w) < self.size:
            raise ValueError(f"an image of {w}×{h} px is smaller than the {self.size} px crops")
        s = self.size
        crops = [image[..., y : y + s, x : x + s] for y in self.offsets(h) for x in self.offsets(w)]
        return torch.stack([c.as_subclass(torch.Tensor) for c in crops])

    def __repr__(self) -> str:
        return f"GridCrops(size={self.size}, crops={self.per_side**2})"


@dataclass(frozen=True)
class TransformRecipe:
    """What :func:`build_transform` was asked for, kept on the pipeline it returns (``.recipe``), so
    that the batched transform of ``rmnet.data.batched`` applies the very same one."""

    train: bool
    image_size: int
    resize: int
    max_angle: float  # degrees; 0 is off, 180 or more the whole circle
    flips: bool
    quarter_turns: bool = False  # a random quarter turn (exact) instead of a continuous angle


def decode_transform(resize: int) -> v2.Compose:
    """The first steps of every pipeline: a PIL image to a uint8 tensor (3, H, W), short edge ``resize``."""
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True)])


def build_transform(
    train: bool,
    image_size: int,
    resize: int | None = None,
    rotation_augmentation: bool | float = 0.0,
    flips: bool = True,
    *,
    rotation_mode: str = "continuous",
    randaugment: bool = False,
    crops: int = 1,
) -> Callable:
    """The paper's recipe (SPEC §3) as a v2 pipeline returning a normalised float tensor (3, S, S).

    Train: short edge to ``resize`` (default ``round(image_size * 256 / 224)``, i.e. 256 for 224),
    a random ``image_size`` crop of the image "or its horizontal flip or vertical flip" (one of the
    three, equally likely; never both flips, which would be a 180° rotation); ``flips=False``
    leaves the flips out. Eval: the same resize and a centre crop. ``rotation_augmentation``
    (train only) is the largest rotation angle in degrees: the resized image is rotated by an
    angle uniform in [−angle, angle] (180 or more, or True: the whole circle, the "RA" baseline)
    before cropping; 0 or False (the default) is off, and the paper's RM runs never use it.
    ``rotation_mode="quarter"`` turns it by a random quarter turn instead (whatever the angle).
    ``randaugment``: torchvision's RandAugment (2 operations, magnitude 10) before cropping (train).
    ``crops`` > 1 (eval): an n×n grid of crops, stacked (crops, 3, S, S), for test-time averaging.
    The pipeline's ``.recipe`` (a :class:`TransformRecipe`) records these choices.
    """
    if rotation_mode not in ROTATION_MODES:
        raise ValueError(f"rotation mode must be one of {', '.join(ROTATION_MODES)}, got {rotation_mode!r}")
    resize = resize or resize_for(image_size)
    if resize < image_size:
        raise ValueError(f"resize ({resize}) must be at least image_size ({image_size})")
    steps: list[Callable] = [*decode_transform(resize).transforms]
    if train:
        if randaugment:
            steps.append(v2.RandAugment(**RANDAUGMENT))
        rotation = (
            RandomQuarterTurn() if rotation_mode == "quarter" else random_rotation(rotation_augmentation)
        )
        if rotation is not None:
            steps.append(rotation)
        steps.append(v2.RandomCrop(image_size))
        if flips:
            steps.append(v2.RandomChoice([v2.Identity(), _HFLIP, _VFLIP]))
    else:
        max_rotation_angle(rotation_augmentation)  # validate it all the same
        steps.append(GridCrops(image_size, crops) if crops > 1 else v2.CenterCrop(image_size))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    pipeline = v2.Compose(steps)
    # The batched transform (data path memory) reads this recipe; a pipeline with a step it lacks
    # (RandAugment, grid crops) leaves .recipe unset, so that such data are read as files.
    if not (train and randaugment) and not (not train and crops > 1):
        quarter = train and rotation_mode == "quarter"
        angle = max_rotation_angle(rotation_augmentation) if train and not quarter else 0.0
        pipeline.recipe = TransformRecipe(train, image_size, resize, angle, flips and train, quarter)
    return pipeline
