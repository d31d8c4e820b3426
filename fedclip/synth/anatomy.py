"""The healthy-looking eye: fundus background, choroid, macula, optic disc and the vessel tree.

What is drawn here is a patient's identity (vessel tree, disc position and size, pigmentation) plus
the conditions that change anatomy rather than add lesions (glaucomatous cupping, myopic
tessellation and peripapillary atrophy, hypertensive arteriolar narrowing and AV nicking). It is
rendered once per eye and reused for every visit of that eye.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from scipy.spatial import cKDTree

from fedclip.synth.canvas import Branch, EyeLayout


@dataclass(frozen=True)
class EyeAnatomy:
    """Anatomical parameters of one eye, in normalised units (1 = FOV radius)."""

    right_eye: bool
    pigmentation: float  # 0 = light (blond) fundus, 1 = heavily pigmented
    disc_radius: float
    disc_offset: tuple[float, float]  # jitter of the disc around its standard position
    cup_to_disc: float
    cup_elongation: float  # vertical / horizontal cup radius (> 1: rim thinning at the poles)
    tessellation: float  # 0..1, visible choroidal vessels (myopia)
    peripapillary_atrophy: float  # 0..1, width of the temporal atrophic crescent
    artery_scale: float  # < 1: arteriolar narrowing (hypertension)
    av_nicking: int  # number of arteriovenous crossings with nicking
    vessel_seed: int
    texture_index: int


# ------------------------------------------------------------------------------------------ vessels
def grow_vessels(anatomy: EyeAnatomy, size: int) -> EyeLayout:
    """A branching artery and vein tree leaving the disc; temporal arcades bend around the macula.

    Grown for a right eye (disc on the right of the image) and mirrored for a left eye. All branches
    of one generation grow at once as arrays (a random walk with drift), which is what keeps a
    ~100-branch tree cheap enough to render per eye.
    """
    rng = np.random.default_rng(anatomy.vessel_seed)
    disc = np.array([0.36 + anatomy.disc_offset[0], 0.0 + anatomy.disc_offset[1]])
    macula = np.array([-0.24 + 0.5 * anatomy.disc_offset[0], 0.04 + 0.5 * anatomy.disc_offset[1]])
    # (initial angle, curvature per step, width scale): superotemporal, inferotemporal, superonasal,
    # inferonasal; temporal arcades are the widest and curve around the macula.
    trunks = np.array([(-1.75, -0.045, 1.0), (1.75, 0.045, 1.0), (-0.9, 0.02, 0.75), (0.9, -0.02, 0.75)])
    vein = np.repeat([False, True], len(trunks))
    t = np.tile(trunks, (2, 1))
    theta = t[:, 0] + np.where(vein, 0.12, -0.12) + rng.normal(0, 0.08, len(t))
    width = t[:, 2] * np.where(vein, 0.028, 0.021 * anatomy.artery_scale)
    starts = np.tile(disc, (len(t), 1))
    curvature = t[:, 1]
    branches: list[tuple[np.ndarray, np.ndarray, list[int], list[bool]]] = []
    for steps, p_branch in ((60, 0.07), (35, 0.045), (20, 0.0)):
        if len(starts) == 0:
            break
        starts, theta, width, curvature, vein = _grow_generation(
            rng, starts, theta, width, curvature, vein, macula, steps, p_branch, branches)
    sign = 1.0 if anatomy.right_eye else -1.0
    half = size / 2.0
    radius = half * 0.96

    def px(p: np.ndarray) -> np.ndarray:
        return np.stack([half + sign * p[..., 0] * radius, half + p[..., 1] * radius], axis=-1)

    out = []
    for points, widths, lengths, veins in branches:  # one generation's arrays, converted at once
        points, widths = px(points), widths * radius
        out.extend(Branch(points[i, :k], widths[i, :k], v)
                   for i, (k, v) in enumerate(zip(lengths, veins, strict=True)) if k)
    d = px(disc[None])[0]
    m = px(macula[None])[0]
    return EyeLayout(size, (float(d[0]), float(d[1])), anatomy.disc_radius * radius,
                     (float(m[0]), float(m[1])), out, anatomy.right_eye)


def _grow_generation(rng, starts, theta0, width0, curvature, vein, macula, steps, p_branch, out):
    """Grow every branch of one generation; return the next generation's starting states."""
    n = len(starts)
    step = 0.03
    theta = theta0[:, None] + np.cumsum(curvature[:, None] + rng.normal(0, 0.12, (n, steps)), axis=1)
    x = starts[:, :1] + np.cumsum(step * np.cos(theta), axis=1)
    y = starts[:, 1:] + np.cumsum(step * np.sin(theta), axis=1)
    fork = rng.random((n, steps)) < p_branch
    fork[:, :3] = False
    factor = 0.985 * np.where(np.roll(fork, 1, axis=1), 0.88, 1.0)  # a fork thins the parent after it
    factor[:, 0] = 0.985
    width = width0[:, None] * np.cumprod(factor, axis=1)
    stop = (x * x + y * y > 1.0) | ((x - macula[0]) ** 2 + (y - macula[1]) ** 2 < 0.01) | (width < 0.0025)
    alive = np.cumprod(~stop, axis=1).astype(bool)
    # Each branch: its start and the points before it first stops; kept as the generation's padded arrays
    # with a length per branch (0: died at once), since slicing rows is far cheaper than building them.
    points = np.empty((n, steps + 1, 2))
    points[:, 0], points[:, 1:, 0], points[:, 1:, 1] = starts, x, y
    widths = np.empty((n, steps + 1))
    widths[:, 0], widths[:, 1:] = width0, width
    k = alive.sum(axis=1)
    out.append((points, widths, np.where(k >= 1, k + 1, 0).tolist(), vein.tolist()))
    bi, bj = np.nonzero(fork & alive)
    m = len(bi)
    side = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    return (np.stack([x[bi, bj], y[bi, bj]], axis=1), theta[bi, bj] + side * rng.uniform(0.5, 1.1, m),
            width[bi, bj] * rng.uniform(0.5, 0.7, m), rng.normal(0, 0.03, m), vein[bi])


def _draw_tree(layout: EyeLayout, vein: bool, nick_points: np.ndarray | None = None) -> Image.Image:
    mask = Image.new("L", (layout.size, layout.size), 0)
    draw = ImageDraw.Draw(mask)
    chosen = [b for b in layout.branches if b.vein == vein]
    if chosen:
        # One polyline per run of points sharing a pixel width, so the vessel tapers; sub-pixel widths fade
        # (lower mask value, half-pixel steps) instead of thinning. Runs of all branches are found at once:
        # a run starts where a branch starts or its width step changes, and ends on the next run's first
        # point (so consecutive runs join) or on its branch's last point.
        lengths = np.array([len(b.widths) for b in chosen])
        key = np.maximum(0.5, np.round(2.0 * np.concatenate([b.widths for b in chosen])) / 2.0)
        first = np.zeros(len(key) + 1, dtype=bool)
        first[np.cumsum(lengths) - lengths] = True
        first[-1] = True
        bounds = np.flatnonzero(first[:-1] | np.r_[True, key[1:] != key[:-1]])
        nxt = np.r_[bounds[1:], len(key)]
        ends = np.where(first[nxt], nxt, nxt + 1)
        flat = np.concatenate([b.points for b in chosen]).ravel().tolist()
        for start, end, w in zip(bounds.tolist(), ends.tolist(), key[bounds].tolist(), strict=True):
            # No joint="curve": PIL draws those joints in Python, which tripled the tree's cost; the mask
            # blur below closes the hairline gaps at the joints.
            draw.line(flat[2 * start:2 * end], fill=int(255 * min(1.0, w)), width=max(1, round(w)))
    if nick_points is not None:
        for x, y, r in nick_points:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    return mask


def _av_crossings(layout: EyeLayout, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `n` places where an artery crosses a vein: (x, y, radius of the nicked vein gap)."""
    if n <= 0:
        return np.zeros((0, 3))
    a = np.concatenate([b.points for b in layout.branches if not b.vein])
    v = np.concatenate([b.points for b in layout.branches if b.vein])
    vw = np.concatenate([b.widths for b in layout.branches if b.vein])
    reach = np.maximum(1.5, vw)
    # Candidate pairs from a k-d tree (a dense artery x vein distance matrix cost ~30 ms per eye), then the
    # exact test on them, in the dense version's (artery, vein) order so that the same crossings are picked.
    near = cKDTree(a).query_ball_point(v, reach * (1 + 1e-9) + 1e-9)
    vi = np.repeat(np.arange(len(v)), [len(n) for n in near])
    ai = np.fromiter((i for n in near for i in n), dtype=np.intp, count=len(vi))
    ok = np.hypot(a[ai, 0] - v[vi, 0], a[ai, 1] - v[vi, 1]) < reach[vi]
    order = np.lexsort((vi[ok], ai[ok]))
    ai, vi = ai[ok][order], vi[ok][order]
    if len(ai) == 0:
        return np.zeros((0, 3))
    pick = rng.choice(len(ai), size=min(n, len(ai)), replace=False)
    return np.array([[*a[ai[k]], max(1.5, 1.6 * vw[vi[k]])] for k in pick])


# --------------------------------------------------------------------------------------- background
@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (size - 1) / 2.0
    ax = (np.arange(size, dtype=np.float32) - c) / (size / 2.0 * 0.96)
    xx, yy = np.meshgrid(ax, ax)
    return xx, yy, xx * xx + yy * yy


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    img = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(max(0.6, scale * size)))
    a = np.asarray(img, dtype=np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


@lru_cache(maxsize=8)
def _texture_bank(size: int) -> tuple[np.ndarray, ...]:
    """Choroidal mottling fields (fixed seed, so every process builds the same bank)."""
    rng = np.random.default_rng(1234)
    return tuple(0.6 * _smooth_noise(rng, size, 0.004) + 0.8 * _smooth_noise(rng, size, 0.02)
                 for _ in range(8))


@lru_cache(maxsize=8)
def _tessellation_bank(size: int) -> tuple[np.ndarray, ...]:
    """Ridge networks standing for the large choroidal vessels a thin myopic retina lets through, twice the
    image's size: each eye sees its own window of one (`_background`). With one fixed field per image, every
    myopic eye of every patient carried one of four identical patterns — near-duplicates that the copying
    audit flags."""
    rng = np.random.default_rng(4321)
    out = []
    for _ in range(4):
        n = _smooth_noise(rng, 2 * size, 0.0125)
        out.append(np.exp(-(n / 0.7) ** 2).astype(np.float32))
    return tuple(out)


def _blob(canvas: np.ndarray, cx: float, cy: float, rx: float, ry: float, soft: float) -> tuple:
    """Soft elliptical alpha over the blob's bounding box only: (slice_y, slice_x, alpha)."""
    size = canvas.shape[0]
    x0, x1 = max(0, int(cx - rx - soft - 2)), min(size, int(cx + rx + soft + 3))
    y0, y1 = max(0, int(cy - ry - soft - 2)), min(size, int(cy + ry + soft + 3))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    alpha = np.clip((1.0 - d) * min(rx, ry) / max(soft, 1e-3) + 0.5, 0.0, 1.0)
    return slice(y0, y1), slice(x0, x1), alpha[..., None]


_SHADE_SCALE = 240.0


@lru_cache(maxsize=32)
def _shade(size: int, texture: int) -> Image.Image:
    """Vignetting x choroidal mottling as an 8-bit RGB map (value / 240 = brightness factor)."""
    _, _, r2 = _grid(size)
    shade = (0.70 + 0.30 * np.clip(1.0 - r2, 0.0, 1.0)) * (1.0 + 0.05 * _texture_bank(size)[texture])
    return Image.fromarray(np.clip(shade * _SHADE_SCALE, 0, 255).astype(np.uint8)).convert("RGB")


def _background(anatomy: EyeAnatomy, size: int, base: np.ndarray) -> np.ndarray:
    """Fundus colour x shade, as one C-level multiply (PIL's multiply computes a * b / 255)."""
    shade = _shade(size, anatomy.texture_index % 8)
    if anatomy.tessellation > 0.2:  # myopic eyes only: the full-image float path is fine for them
        oy, ox = (anatomy.vessel_seed >> 4) % size, (anatomy.vessel_seed >> 16) % size  # this eye's window
        ridge = _tessellation_bank(size)[anatomy.texture_index % 4][oy:oy + size, ox:ox + size]
        s = np.asarray(shade, np.float32) * (1.0 - 0.3 * anatomy.tessellation * (1.0 - ridge))[..., None]
        shade = Image.fromarray(np.clip(s, 0, 255).astype(np.uint8))
    colour = tuple(int(min(255.0, c * 255.0 / _SHADE_SCALE)) for c in base)
    return np.array(ImageChops.multiply(shade, Image.new("RGB", shade.size, colour)))


def _paint(img: np.ndarray, blob: tuple, colour: tuple[float, float, float] | None, strength: float) -> None:
    """Blend a colour into a blob's bounding box (or darken it when `colour` is None), in place."""
    ys, xs, a = blob
    patch = img[ys, xs].astype(np.float32)
    if colour is None:
        patch *= 1.0 - strength * a
    else:
        patch += (np.asarray(colour, np.float32) - patch) * (a * strength)
    img[ys, xs] = np.clip(patch, 0, 255).astype(np.uint8)


def render_eye(anatomy: EyeAnatomy, size: int) -> tuple[Image.Image, EyeLayout]:
    """The eye without lesions or camera effects, and its layout for the lesion renderers."""
    layout = grow_vessels(anatomy, size)
    light = np.array([214.0, 112.0, 52.0], np.float32)
    dark = np.array([150.0, 62.0, 28.0], np.float32)
    base = light + (dark - light) * anatomy.pigmentation
    img = _background(anatomy, size, base)

    # Macula: a darker zone with a small foveal reflex.
    mx, my = layout.macula
    mr = 0.16 * size / 2
    _paint(img, _blob(img, mx, my, mr * 1.6, mr * 1.6, mr * 1.4), None, 0.32)
    fr = size * 0.006 + 0.6
    _paint(img, _blob(img, mx, my, fr, fr, 0.8), (235.0, 170.0, 110.0), 0.4)

    dx, dy = layout.disc
    dr = layout.disc_radius
    if anatomy.peripapillary_atrophy > 0:  # temporal crescent: towards the macula
        side = -1.0 if anatomy.right_eye else 1.0
        w = dr * (0.35 + 0.6 * anatomy.peripapillary_atrophy)
        _paint(img, _blob(img, dx + side * w * 0.8, dy, dr + w * 0.6, dr * 1.05, 1.5), (235.0, 200.0, 160.0),
               0.85)
    tilt = 0.78 if anatomy.peripapillary_atrophy > 0 else 0.92
    _paint(img, _blob(img, dx, dy, dr * tilt, dr, max(1.0, dr * 0.25)), (236.0, 160.0, 105.0), 0.9)
    cr = dr * anatomy.cup_to_disc
    _paint(img, _blob(img, dx, dy - 0.05 * dr, cr * tilt, cr * anatomy.cup_elongation, max(0.8, cr * 0.3)),
           (252.0, 230.0, 192.0), 0.9)

    image = Image.fromarray(img)
    rng = np.random.default_rng(anatomy.vessel_seed + 1)
    nicks = _av_crossings(layout, anatomy.av_nicking, rng)
    blur = ImageFilter.BoxBlur(max(0.5, size / 450))
    veins = _draw_tree(layout, vein=True, nick_points=nicks).filter(blur)
    arteries = _draw_tree(layout, vein=False).filter(blur)
    vein_col = tuple(int(c) for c in (base * np.array([0.55, 0.28, 0.40])))
    art_col = tuple(int(c) for c in (base * np.array([0.85, 0.50, 0.70])))
    image.paste(vein_col, None, veins)
    image.paste(art_col, None, arteries)
    return image, layout
