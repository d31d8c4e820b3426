"""Geometry shared by the anatomy and lesion renderers: an eye's layout and its lesion layers.

Everything is drawn at the output size straight away (no supersampling): PIL's C drawing primitives
on 8-bit masks, softened by one box blur per layer, then composited with a flat colour: C-level work
only, which keeps a rendered eye at a few milliseconds (benchmarks/synth_throughput.py compares the
generator with decoding the same images from PNG; docs/results/speed.md has the cost of each part).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FOV_FRACTION = 0.96
"""Radius of the eye's visible disc as a fraction of half the image width, before camera cropping."""


@dataclass(frozen=True)
class Branch:
    """One vessel segment chain: points in pixels, a width per point (pixels), artery or vein."""

    points: np.ndarray
    widths: np.ndarray
    vein: bool


@dataclass
class EyeLayout:
    """Where things are in one eye, in pixels; persistent across that eye's visits."""

    size: int
    disc: tuple[float, float]
    disc_radius: float
    macula: tuple[float, float]
    branches: list[Branch]
    right_eye: bool

    @property
    def center(self) -> float:
        return self.size / 2.0

    @property
    def fov_radius(self) -> float:
        return self.size / 2.0 * FOV_FRACTION

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        """Normalised coordinates (unit = FOV radius, origin at the image centre) to pixels."""
        return self.center + np.asarray(xy, dtype=np.float64) * self.fov_radius

    def scale(self, frac: float, minimum: float) -> float:
        """A length given as a fraction of the image size, never below `minimum` pixels.

        The minimum is what keeps microaneurysms and exudates visible at 64 px.
        """
        return max(minimum, frac * self.size)


# Layer name -> (RGB colour, blur radius as fraction of the image size, minimum blur px, opacity).
LAYER_STYLE: dict[str, tuple[tuple[int, int, int], float, float, float]] = {
    "atrophy": ((236, 196, 150), 0.010, 1.0, 0.85),
    "pigment": ((62, 32, 18), 0.003, 0.5, 0.80),
    "drusen": ((232, 206, 118), 0.004, 0.6, 0.85),
    "red": ((118, 18, 14), 0.0025, 0.5, 0.92),
    "newvessel": ((150, 28, 26), 0.0015, 0.4, 0.90),
    "exudate": ((240, 222, 112), 0.002, 0.4, 0.95),
    "cotton_wool": ((238, 232, 212), 0.012, 1.0, 0.80),
}
LAYER_ORDER = tuple(LAYER_STYLE)


@dataclass
class LesionCanvas:
    """Per-image lesion masks plus the counts the ICDR rule grades from."""

    layout: EyeLayout
    layers: dict[str, Image.Image] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def draw(self, layer: str) -> ImageDraw.ImageDraw:
        if layer not in self.layers:
            self.layers[layer] = Image.new("L", (self.layout.size, self.layout.size), 0)
        return ImageDraw.Draw(self.layers[layer])

    def composite_onto(self, image: Image.Image) -> Image.Image:
        """Blend every drawn layer onto a copy of `image` in a fixed order (drusen under haemorrhages, ...).

        Each layer is blurred and blended only within its lesions' bounding box plus a margin wider than
        the blur reaches: outside it the blurred mask is 0, so the result is the whole-image blend's, byte
        for byte, at a fraction of the cost for the small layers most eyes have.
        """
        size = self.layout.size
        image = image.copy()
        for name in LAYER_ORDER:
            mask = self.layers.get(name)
            bbox = mask.getbbox() if mask is not None else None
            if bbox is None:
                continue
            colour, blur_frac, blur_min, opacity = LAYER_STYLE[name]
            radius = max(blur_min, blur_frac * size)
            margin = math.ceil(radius) + 2  # a box blur of radius r moves mass at most floor(r) + 1 pixels
            box = (max(0, bbox[0] - margin), max(0, bbox[1] - margin), min(size, bbox[2] + margin),
                   min(size, bbox[3] + margin))
            region = mask.crop(box).filter(ImageFilter.BoxBlur(radius))
            if opacity < 1.0:
                region = region.point(_opacity_lut(opacity))
            image.paste(colour, box, region)
        return image


@lru_cache(maxsize=16)
def _opacity_lut(opacity: float) -> tuple[int, ...]:
    return tuple(int(round(i * opacity)) for i in range(256))


def random_points(
    rng: np.random.Generator,
    layout: EyeLayout,
    n: int,
    r_min: float = 0.0,
    r_max: float = 0.9,
    center: tuple[float, float] | None = None,
    avoid_disc: bool = True,
) -> np.ndarray:
    """`n` points (pixels) uniform in an annulus around `center` (normalised units), off the disc."""
    if n <= 0:
        return np.zeros((0, 2))
    cx, cy = center if center is not None else (0.0, 0.0)
    out = np.zeros((0, 2))
    for _ in range(8):  # rejection sampling; a few rounds always suffice for the regions we use
        m = 2 * (n - len(out)) + 4
        r = np.sqrt(rng.uniform(r_min**2, r_max**2, m))
        a = rng.uniform(0, 2 * np.pi, m)
        xy = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)
        ok = np.hypot(xy[:, 0], xy[:, 1]) < 0.93
        px = layout.to_px(xy)
        if avoid_disc:
            d = np.hypot(px[:, 0] - layout.disc[0], px[:, 1] - layout.disc[1])
            ok &= d > 1.3 * layout.disc_radius
        out = np.concatenate([out, px[ok]])[:n]
        if len(out) >= n:
            break
    return out


def quadrant(layout: EyeLayout, px: np.ndarray) -> np.ndarray:
    """ICDR quadrant index 0..3 of each pixel position (split at the image centre)."""
    c = layout.center
    return (px[:, 0] >= c).astype(int) + 2 * (px[:, 1] >= c).astype(int)


def ellipse(draw: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float, fill: int = 255) -> None:
    draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill)


def rotated_ellipse(
    draw: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float, angle: float, fill: int = 255
) -> None:
    """An ellipse along `angle` (radians): flame haemorrhages follow the nerve fibres this way."""
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ca, sa = np.cos(angle), np.sin(angle)
    ex, ey = rx * np.cos(t), ry * np.sin(t)
    pts = np.stack([x + ex * ca - ey * sa, y + ex * sa + ey * ca], axis=1)
    draw.polygon([tuple(p) for p in pts], fill=fill)
