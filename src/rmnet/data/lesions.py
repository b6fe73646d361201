"""A seeded generator of lesion-like images whose classes differ in structure, not orientation.

Every image shows a pigmented lesion on noisy skin. The classes borrow dermoscopic structures:
a regular round blob, an irregular lobed border, dark globules, radial streaks, a pigment
network, and a two-tone asymmetric blotch. Each lesion is drawn at a uniformly random
orientation (or, with ``orientation_range`` below 360°, near upright: a data set with an upright
bias, to train on and then test at random orientations), with jittered scale, position, skin
tone and pigment darkness (drawn from the same ranges in every class, so mean colour alone says
little), hairs and a dermatoscope vignette.
Learnable by a small CNN in minutes; a rotation never changes the class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from rmnet.data.files import claim_folder, save_image_atomically
from rmnet.io import progress_bar

LESION_KINDS = ("regular", "lobed", "globules", "streaks", "network", "two_tone")
_SUPERSAMPLE = 3  # drawn at 3× and downsampled, for smooth edges
_LIGHT_PIGMENT = np.array([0.72, 0.50, 0.36])
_DARK_PIGMENT = np.array([0.24, 0.14, 0.11])


@dataclass
class _Lesion:
    """A lesion's own frame (centred, turned to its orientation) and its pigmented body."""

    u: np.ndarray  # coordinates in the lesion's frame
    v: np.ndarray
    r: np.ndarray  # distance from the centre, 1 on the mean border
    phi: np.ndarray  # angle in the lesion's frame
    radius: float
    body: np.ndarray  # how much of each pixel the lesion covers, 0..1


def render_lesion(
    kind: str, size: int, rng: np.random.Generator, orientation_range: float = 360.0
) -> np.ndarray:
    """One image of class ``kind`` as uint8 (size, size, 3).

    The lesion's orientation is uniform over 360° (the default), or uniform within
    ±``orientation_range``/2 degrees of upright: the lesion's long axis, its darker side (two-tone)
    and its pigment network then point about the same way in every image.
    """
    if kind not in LESION_KINDS:
        raise ValueError(f"unknown lesion kind {kind!r}; choose one of {', '.join(LESION_KINDS)}")
    _check_orientation_range(orientation_range)
    n = size * _SUPERSAMPLE
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    lesion = _place_lesion(x, y, rng, lobed=kind == "lobed", orientation_range=orientation_range)
    # Pigment darkness 0..1 from the same range in every class; structures are darker by 0.4.
    darkness = rng.uniform(0.1, 0.55) + 0.15 * (1 - lesion.r).clip(0, 1) + 0.06 * _smooth_noise(rng, n, 5)
    darkness, alpha = _STRUCTURES[kind](lesion, darkness, rng)
    darkness = np.clip(darkness, 0, 1)[..., None]
    pigment = (1 - darkness) * _LIGHT_PIGMENT + darkness * _DARK_PIGMENT
    image = (1 - alpha[..., None]) * _skin(rng, n) + alpha[..., None] * pigment
    image = _add_hairs(image, rng, x, y) if rng.uniform() < 0.3 else image
    if rng.uniform() < 0.4:  # the dark rim of a dermatoscope's field of view
        image = image * (1 - rng.uniform(0, 0.5) * np.clip((np.hypot(x, y) - 1.05) / 0.3, 0, 1))[..., None]
    image = image + rng.normal(0, 0.015, image.shape)
    pixels = Image.fromarray((image.clip(0, 1) * 255).round().astype(np.uint8))
    return np.asarray(pixels.resize((size, size), Image.Resampling.LANCZOS))


def _place_lesion(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, lobed: bool, orientation_range: float = 360.0
) -> _Lesion:
    """Random centre, orientation, size and mild elongation; a smooth or (``lobed``) lobed border."""
    cx, cy = rng.uniform(-0.12, 0.12, 2)
    if orientation_range >= 360:
        angle = rng.uniform(0, 2 * np.pi)
    else:  # one draw either way, so the other properties of image i do not change
        angle = np.deg2rad(rng.uniform(-orientation_range / 2, orientation_range / 2))
    radius = rng.uniform(0.38, 0.55)
    u = np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)
    v = (-np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy)) / rng.uniform(0.8, 1.0)
    r, phi = np.hypot(u, v) / radius, np.arctan2(v, u)
    harmonics, amplitude = (range(3, 8), (0.08, 0.15)) if lobed else (range(2, 4), (0.01, 0.04))
    border = 1 + sum(rng.uniform(*amplitude) * np.cos(k * phi + rng.uniform(0, 2 * np.pi)) for k in harmonics)
    body = np.clip((border - r) / rng.uniform(0.03, 0.10) + 0.5, 0, 1)
    return _Lesion(u, v, r, phi, radius, body)


def _plain(lesion: _Lesion, darkness: np.ndarray, rng: np.random.Generator):
    """Regular and lobed lesions: evenly pigmented, the class is in the border."""
    return darkness, lesion.body


def _globules(lesion: _Lesion, darkness: np.ndarray, rng: np.random.Generator):
    """Dark round dots scattered inside the lesion."""
    accent = darkness + 0.4
    for _ in range(rng.integers(6, 12)):
        at, towards = 0.7 * np.sqrt(rng.uniform(0, 1)), rng.uniform(0, 2 * np.pi)
        distance = np.hypot(
            lesion.u / lesion.radius - at * np.cos(towards), lesion.v / lesion.radius - at * np.sin(towards)
        )
        dot = np.clip(1.5 - distance / rng.uniform(0.1, 0.15), 0, 1)
        darkness = (1 - dot) * darkness + dot * accent
    return darkness, lesion.body


def _streaks(lesion: _Lesion, darkness: np.ndarray, rng: np.random.Generator):
    """Dark radial lines from inside the lesion out past its border, thinning as they go."""
    accent, alpha = darkness + 0.4, lesion.body
    count = rng.integers(8, 13)
    for towards in np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi):
        towards += rng.uniform(-0.15, 0.15)
        length = rng.uniform(1.2, 1.5)
        across = np.abs(np.angle(np.exp(1j * (lesion.phi - towards)))) * lesion.r
        width = 0.08 * (1.25 - lesion.r / length / 2)
        streak = (
            np.clip(1 - across / width, 0, 1) * (lesion.r > 0.5) * np.clip((length - lesion.r) / 0.1, 0, 1)
        )
        alpha = np.maximum(alpha, streak)
        darkness = np.where(streak > lesion.body, accent, (1 - streak) * darkness + streak * accent)
    return darkness, alpha


def _network(lesion: _Lesion, darkness: np.ndarray, rng: np.random.Generator):
    """A pigment network: a wobbly grid of dark lines on a lighter lesion, fading at the border."""
    period = rng.uniform(0.3, 0.38) * lesion.radius
    wobble = 0.6 * _smooth_noise(rng, lesion.u.shape[0], 6)
    lines = [
        np.abs(np.sin(np.pi * (np.cos(a) * lesion.u + np.sin(a) * lesion.v) / period + wobble))
        for a in (0, np.pi / 2)
    ]
    mesh = np.clip(1 - np.minimum(*lines) / 0.35, 0, 1) * np.clip((1.05 - lesion.r) / 0.4, 0, 1)
    return (1 - mesh) * (darkness - 0.1) + mesh * (darkness + 0.4), lesion.body


def _two_tone(lesion: _Lesion, darkness: np.ndarray, rng: np.random.Generator):
    """An asymmetric blotch: one side of a wavy line darker than the other."""
    side = np.tanh(
        (lesion.u + 0.15 * lesion.radius * _smooth_noise(rng, lesion.u.shape[0], 3)) / (0.08 * lesion.radius)
    )
    return darkness + 0.25 * side, lesion.body


_STRUCTURES = {
    "regular": _plain,
    "lobed": _plain,
    "globules": _globules,
    "streaks": _streaks,
    "network": _network,
    "two_tone": _two_tone,
}


def make_lesion_dataset(
    out_dir: str | os.PathLike,
    n_per_class: int = 200,
    size: int = 64,
    seed: int = 0,
    num_classes: int = len(LESION_KINDS),
    orientation_range: float = 360.0,
) -> Path:
    """Write ``out_dir/<kind>/<kind>_<i>.png`` for the first ``num_classes`` kinds; returns ``out_dir``.

    ``orientation_range`` below 360 draws every lesion within ±orientation_range/2 degrees of
    upright (an upright bias, e.g. 30); 0 draws them all upright.

    Each image depends only on (seed, class, i), so a second call, or one resuming an interrupted
    run, writes only what is missing; each file appears whole (written, then renamed).
    """
    if not 1 <= num_classes <= len(LESION_KINDS):
        raise ValueError(f"num_classes must be between 1 and {len(LESION_KINDS)}, got {num_classes}")
    out_dir = Path(out_dir)
    _check_orientation_range(orientation_range)
    recipe = {"generator": "rmnet lesions v1", "n_per_class": n_per_class, "size": size, "seed": seed,
              "classes": list(LESION_KINDS[:num_classes])}  # fmt: skip
    if orientation_range < 360:  # absent for the default, so folders made before still match
        recipe["orientation_range"] = orientation_range
    claim_folder(out_dir, "lesions.json", recipe)
    jobs = [(c, kind, i) for c, kind in enumerate(recipe["classes"]) for i in range(n_per_class)]
    for c, kind, i in progress_bar(jobs, "lesion images"):
        path = out_dir / kind / f"{kind}_{i:04d}.png"
        if not path.exists():
            pixels = render_lesion(kind, size, np.random.default_rng([seed, c, i]), orientation_range)
            save_image_atomically(Image.fromarray(pixels), path, format="PNG")
    return out_dir


def _check_orientation_range(degrees: float) -> None:
    if not 0 <= degrees <= 360:
        raise ValueError(f"orientation_range must be between 0 and 360 degrees, got {degrees}")


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Zero-mean noise of unit scale varying over about ``cells`` blobs per side."""
    coarse = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))  # mode "F"
    return np.asarray(coarse.resize((n, n), Image.Resampling.BICUBIC), dtype=np.float64)


def _skin(rng: np.random.Generator, n: int) -> np.ndarray:
    """A skin tone with blotchy shading (n, n, 3)."""
    tone = np.array([0.90, 0.70, 0.60]) + rng.uniform(-0.08, 0.05) + rng.normal(0, 0.02, 3)
    return tone * (1 + 0.04 * _smooth_noise(rng, n, 4))[..., None]


def _add_hairs(image: np.ndarray, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A few thin dark curved hairs crossing the image."""
    for _ in range(rng.integers(1, 4)):
        a, offset, bend = rng.uniform(0, np.pi), rng.uniform(-0.9, 0.9), rng.uniform(-0.4, 0.4)
        along = np.cos(a) * x + np.sin(a) * y
        across = -np.sin(a) * x + np.cos(a) * y - offset - bend * along**2
        hair = np.clip(1 - np.abs(across) / 0.012, 0, 1)[..., None]
        image = image * (1 - 0.8 * hair) + 0.8 * hair * np.array([0.18, 0.12, 0.10])
    return image
