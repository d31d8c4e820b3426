"""Hospital / camera profiles: what makes one site's images domain-shifted from another's.

A profile fixes the camera (colour response, field of view, optical sharpness, compression) and the
site's population (how common each condition is, how often images are degraded). Federated
experiments partition by profile to get realistic non-IID hospitals.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from fedclip.errors import FedclipError


@dataclass(frozen=True)
class HospitalProfile:
    name: str
    camera: str
    gain: tuple[float, float, float]  # per-channel colour response
    gamma: float
    fov: float  # radius of the camera's circular field as a fraction of half the image width
    sharpness_blur: float  # optical blur as a fraction of the image size (lower-resolution sensors)
    jpeg_quality: int | None  # None: stored losslessly
    degrade_rate: float  # probability that an image has at least one quality issue
    prevalence_scale: dict[str, float] = field(default_factory=dict)  # condition -> multiplier
    diabetic_rate: float = 0.35  # fraction of patients with diabetes (screening clinics: more)
    sensor_noise: float = 2.0  # std of the sensor's noise in 8-bit levels (small handheld sensors: more)


PROFILES: dict[str, HospitalProfile] = {
    p.name: p
    for p in (
        HospitalProfile("riverside", "Topcon TRC-NW8", (1.00, 1.00, 1.00), 1.00, 0.94, 0.0, None, 0.10,
                        {}, 0.40, 2.0),
        HospitalProfile("northgate", "Canon CR-2 AF", (0.92, 1.06, 1.18), 0.90, 0.90, 0.001, 92, 0.08,
                        {"glaucoma": 1.8, "amd": 1.4}, 0.25, 2.5),
        HospitalProfile("lakeshore", "Optomed Aurora (handheld)", (1.10, 0.94, 0.80), 1.12, 0.86, 0.003, 75,
                        0.30, {"hypertensive_retinopathy": 1.8}, 0.55, 5.0),
        HospitalProfile("summit", "Zeiss Visucam 500", (0.96, 1.02, 1.05), 0.95, 1.00, 0.0015, 88, 0.12,
                        {"pathological_myopia": 2.5, "rvo": 1.5}, 0.30, 2.0),
    )
}
DEFAULT_PROFILE = "riverside"


def profile(name: str) -> HospitalProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise FedclipError(
            f"unknown hospital profile {name!r}; choose one of: {', '.join(PROFILES)}"
        ) from None


@lru_cache(maxsize=16)
def _fov_mask(size: int, fov: float) -> Image.Image:
    """The camera's circular aperture, anti-aliased by a light blur."""
    mask = Image.new("L", (size, size), 0)
    r = size / 2.0 * fov
    c = size / 2.0
    ImageDraw.Draw(mask).ellipse((c - r, c - r, c + r, c + r), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(0.5, size / 300)))


@lru_cache(maxsize=64)
def _colour_lut(gain: tuple[float, float, float], gamma: float, exposure: float) -> tuple[int, ...]:
    x = np.arange(256, dtype=np.float64) / 255.0
    g = np.asarray(gain, dtype=np.float64)[:, None]
    return tuple(np.clip(255.0 * np.clip(x[None] * g * exposure, 0, 1) ** gamma, 0, 255).round()
                 .astype(int).ravel().tolist())


_BLACK: dict[int, Image.Image] = {}


@lru_cache(maxsize=16)
def _noise_field(size: int, std: float) -> Image.Image:
    """A fixed field of sensor noise centred on 128 (fixed seed: identical in every process)."""
    rng = np.random.default_rng(77)
    return Image.fromarray(np.clip(128 + rng.normal(0, std, (size, size, 3)), 0, 255).astype(np.uint8))


def apply_optics(image: Image.Image, prof: HospitalProfile) -> Image.Image:
    """The camera's optical softness. A patient is always imaged by one site's camera, so this is
    applied once per rendered eye rather than per visit."""
    if prof.sharpness_blur <= 0:
        return image
    return image.filter(ImageFilter.BoxBlur(prof.sharpness_blur * image.size[0]))


def apply_camera(image: Image.Image, prof: HospitalProfile, exposure: float,
                 noise_shift: tuple[int, int] = (0, 0)) -> Image.Image:
    """Colour response + exposure in one lookup table, sensor noise, aperture, then compression.

    The noise is one fixed field per camera, shifted per shot by `noise_shift`: a fresh field per image
    would cost more than the rest of the camera together, and a shifted one is just as unstructured.
    """
    size = image.size[0]
    image = image.point(_colour_lut(prof.gain, prof.gamma, round(exposure, 2)))
    if prof.sensor_noise > 0:
        noise = ImageChops.offset(_noise_field(size, prof.sensor_noise), *noise_shift)
        image = ImageChops.add(image, noise, scale=1.0, offset=-128)
    black = _BLACK.get(size)
    if black is None:
        black = _BLACK[size] = Image.new("RGB", (size, size), 0)
    image = Image.composite(image, black, _fov_mask(size, prof.fov))
    if prof.jpeg_quality is not None:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=prof.jpeg_quality)
        buf.seek(0)
        image = Image.open(buf)
        image.load()
    return image
