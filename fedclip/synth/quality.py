"""Image-quality degradations, each matching a quality label of the taxonomy.

Exposure problems are folded into the camera's colour lookup table (`exposure_factor`); the others
are drawn here, before the camera's aperture, as a real photograph would carry them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEVERE_FOR_READABILITY = {"blur": 2.2, "haze": 0.55, "underexposure": 0.5}
"""Degradation strengths beyond which a grader would call the image unreadable."""


def exposure_factor(issues: dict[str, float]) -> float:
    if "overexposure" in issues:
        return 1.0 + issues["overexposure"]
    if "underexposure" in issues:
        return 1.0 - issues["underexposure"]
    return 1.0


def _blur(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(strength * image.size[0] / 224))


@lru_cache(maxsize=32)
def _gradient(size: int, direction: int) -> Image.Image:
    a = 2 * np.pi * direction / 8
    ax = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(ax, ax)
    g = np.clip(0.5 + 0.5 * (xx * np.cos(a) + yy * np.sin(a)), 0, 1)
    return Image.fromarray((g * 255).astype(np.uint8))


def _uneven(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """One side in shadow: blend towards a darkened copy along a random direction."""
    mask = _gradient(image.size[0], int(rng.integers(8))).point(lambda v: int(v * strength))
    dark = image.point(lambda v: int(v * 0.35))
    return Image.composite(dark, image, mask)


def _haze(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Media opacity (cataract): low contrast and a milky veil."""
    veil = Image.new("RGB", image.size, (200, 170, 150))
    return Image.blend(image, veil, strength).filter(ImageFilter.GaussianBlur(0.8 * image.size[0] / 224))


def _artefact(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Dust on the lens (soft dark spots) and an eyelash shadow arcing in from the top."""
    size = image.size[0]
    mask = Image.new("L", image.size, 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.01, 0.03) * size + 1
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(150 * strength))
    y0 = rng.uniform(0.05, 0.2) * size
    draw.arc((-0.2 * size, y0 - 0.6 * size, 1.2 * size, y0 + 0.3 * size), 20, 160, fill=int(200 * strength),
             width=max(2, size // 25))
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, size / 60)))
    return Image.composite(Image.new("RGB", image.size, (20, 10, 5)), image, mask)


DEGRADERS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "blur": _blur,
    "uneven_illumination": _uneven,
    "haze": _haze,
    "artefact": _artefact,
}


def sample_issues(rng: np.random.Generator, rate: float) -> dict[str, float]:
    """Which quality issues an image has, with strengths; empty for most images."""
    if rng.random() >= rate:
        return {}
    issues: dict[str, float] = {}
    names = ["blur", "uneven_illumination", "haze", "overexposure", "underexposure", "artefact"]
    first = names[int(rng.integers(len(names)))]
    chosen = {first} | {n for n in names if rng.random() < 0.12}
    if {"overexposure", "underexposure"} <= chosen:
        chosen.discard("underexposure")
    ranges = {"blur": (0.8, 3.0), "uneven_illumination": (0.6, 1.0), "haze": (0.25, 0.65),
              "overexposure": (0.35, 0.8), "underexposure": (0.3, 0.6), "artefact": (0.6, 1.0)}
    for n in names:
        if n in chosen:
            issues[n] = float(rng.uniform(*ranges[n]))
    return issues


def readable(issues: dict[str, float]) -> bool:
    return all(issues.get(k, 0.0) < v for k, v in SEVERE_FOR_READABILITY.items())


def degrade(image: Image.Image, issues: dict[str, float], rng: np.random.Generator) -> Image.Image:
    for name, fn in DEGRADERS.items():
        if name in issues:
            image = fn(image, issues[name], rng)
    return image
