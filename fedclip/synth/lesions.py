"""Lesion renderers, each drawing where the lesion belongs clinically.

Every function takes a `LesionCanvas` and a seeded generator, draws into named layers and records
what it drew in `canvas.counts` (the DR grade is computed from those counts, never assumed).
Sizes are fractions of the image with pixel minimums so that lesions stay visible at 64 px.
"""

from __future__ import annotations

import numpy as np

from fedclip.synth.canvas import LesionCanvas, ellipse, quadrant, random_points, rotated_ellipse

# Quadrant q -> angle range (radians) in image coordinates (y down): bit 0 = right half, bit 1 = lower.
_QUADRANT_ANGLES = {0: (np.pi, 1.5 * np.pi), 1: (1.5 * np.pi, 2 * np.pi), 2: (0.5 * np.pi, np.pi), 3: (0, 0.5 * np.pi)}


def _points_in_quadrant(rng: np.random.Generator, canvas: LesionCanvas, n: int, q: int) -> np.ndarray:
    lo, hi = _QUADRANT_ANGLES[q]
    layout = canvas.layout
    out = np.zeros((0, 2))
    for _ in range(8):
        m = 2 * (n - len(out)) + 4
        r = np.sqrt(rng.uniform(0.12**2, 0.88**2, m))
        a = rng.uniform(lo + 0.05, hi - 0.05, m)
        px = layout.to_px(np.stack([r * np.cos(a), r * np.sin(a)], axis=1))
        d = np.hypot(px[:, 0] - layout.disc[0], px[:, 1] - layout.disc[1])
        out = np.concatenate([out, px[(d > 1.3 * layout.disc_radius) & (quadrant(layout, px) == q)]])[:n]
        if len(out) >= n:
            break
    return out


def draw_microaneurysms(canvas: LesionCanvas, rng: np.random.Generator, n: int) -> None:
    """Tiny round red dots, mostly in the posterior pole around the macula."""
    layout = canvas.layout
    draw = canvas.draw("red")
    pts = random_points(rng, layout, n, 0.05, 0.6, center=_macula_norm(canvas))
    for x, y in pts:
        r = layout.scale(rng.uniform(0.004, 0.006), 0.8)
        ellipse(draw, x, y, r, r)
    canvas.counts["microaneurysm"] += len(pts)


def draw_haemorrhages(canvas: LesionCanvas, rng: np.random.Generator, per_quadrant: list[int]) -> None:
    """Dot and blot intraretinal haemorrhages, counted per ICDR quadrant."""
    layout = canvas.layout
    draw = canvas.draw("red")
    for q, n in enumerate(per_quadrant):
        pts = _points_in_quadrant(rng, canvas, n, q)
        for x, y in pts:
            rx = layout.scale(rng.uniform(0.006, 0.014), 1.0)
            ry = rx * rng.uniform(0.7, 1.3)
            ellipse(draw, x, y, rx, ry, fill=int(rng.integers(200, 256)))
        canvas.counts[f"haemorrhage_q{q}"] += len(pts)


def draw_exudates(
    canvas: LesionCanvas, rng: np.random.Generator, n: int, center: tuple[float, float], spread: float
) -> None:
    """Hard exudates: small sharp yellow flecks, clustered (`center`, `spread` in normalised units)."""
    layout = canvas.layout
    draw = canvas.draw("exudate")
    pts = random_points(rng, layout, n, 0.0, spread, center=center)
    for x, y in pts:
        r = layout.scale(rng.uniform(0.003, 0.007), 0.7)
        ellipse(draw, x, y, r * rng.uniform(0.8, 1.4), r)
    canvas.counts["exudate"] += len(pts)


def draw_cotton_wool(canvas: LesionCanvas, rng: np.random.Generator, n: int) -> None:
    """Fluffy white patches near the arcades (nerve fibre layer infarcts)."""
    layout = canvas.layout
    draw = canvas.draw("cotton_wool")
    pts = random_points(rng, layout, n, 0.2, 0.6)
    for x, y in pts:
        r = layout.scale(rng.uniform(0.012, 0.022), 1.5)
        rotated_ellipse(draw, x, y, r * 1.5, r, rng.uniform(0, np.pi))
    canvas.counts["cotton_wool"] += len(pts)


def draw_neovascularisation(canvas: LesionCanvas, rng: np.random.Generator, at_disc: bool) -> None:
    """A tangle of fine new vessels on the disc (NVD) or beside an arcade vein (NVE)."""
    layout = canvas.layout
    draw = canvas.draw("newvessel")
    if at_disc:
        cx, cy = layout.disc
        radius = 1.3 * layout.disc_radius
    else:
        veins = [b for b in layout.branches if b.vein and len(b.points) > 8]
        b = veins[int(rng.integers(len(veins)))]
        cx, cy = b.points[int(rng.integers(3, len(b.points) - 2))]
        radius = layout.scale(0.05, 3.0)
    width = max(1, int(round(layout.size / 300)))
    for _ in range(int(rng.integers(10, 18))):
        p = np.array([cx, cy]) + rng.normal(0, radius * 0.4, 2)
        ang = rng.uniform(0, 2 * np.pi)
        pts = [tuple(p)]
        for _ in range(6):
            ang += rng.normal(0, 0.9)
            p = p + radius * 0.2 * np.array([np.cos(ang), np.sin(ang)])
            pts.append(tuple(p))
        draw.line(pts, fill=255, width=width, joint="curve")
    canvas.counts["neovascularisation"] += 1


def draw_preretinal_haemorrhage(canvas: LesionCanvas, rng: np.random.Generator) -> None:
    """A boat-shaped haemorrhage (flat top: blood settling under gravity), inferior to the disc."""
    layout = canvas.layout
    draw = canvas.draw("red")
    x, y = layout.to_px(np.array([rng.uniform(-0.4, 0.4), rng.uniform(0.25, 0.55)]))
    r = layout.scale(rng.uniform(0.04, 0.07), 3.0)
    draw.chord((x - r, y - r, x + r, y + r), 0, 180, fill=255)
    canvas.counts["neovascularisation"] += 1  # preretinal blood makes an eye proliferative under ICDR


def draw_dr(canvas: LesionCanvas, rng: np.random.Generator, grade: int) -> None:
    """Lesions for a target ICDR grade; the label is re-derived from what was drawn."""
    if grade <= 0:
        return
    if grade == 1:
        draw_microaneurysms(canvas, rng, int(rng.integers(3, 9)))
        return
    draw_microaneurysms(canvas, rng, int(rng.integers(5, 15)))
    if grade == 2:
        n = int(rng.integers(2, 10))
        counts = np.bincount(rng.integers(0, 4, n), minlength=4)
        draw_haemorrhages(canvas, rng, [int(c) for c in counts])
        if rng.random() < 0.6:
            draw_exudates(canvas, rng, int(rng.integers(3, 14)), _random_pole_point(canvas, rng), 0.12)
        if rng.random() < 0.2:
            draw_cotton_wool(canvas, rng, 1)
        return
    draw_haemorrhages(canvas, rng, [int(rng.integers(6, 11)) for _ in range(4)])
    draw_cotton_wool(canvas, rng, int(rng.integers(2, 6)))
    if rng.random() < 0.7:
        draw_exudates(canvas, rng, int(rng.integers(5, 20)), _random_pole_point(canvas, rng), 0.2)
    if grade >= 4:
        draw_neovascularisation(canvas, rng, at_disc=bool(rng.random() < 0.5))
        if rng.random() < 0.3:
            draw_preretinal_haemorrhage(canvas, rng)


def draw_dme(canvas: LesionCanvas, rng: np.random.Generator) -> None:
    """Hard exudates within one disc diameter of the fovea, often as a circinate ring."""
    layout = canvas.layout
    mx, my = _macula_norm(canvas)
    draw = canvas.draw("exudate")
    if rng.random() < 0.5:  # circinate ring around a leaking point near the fovea
        ox, oy = mx + rng.uniform(-0.06, 0.06), my + rng.uniform(-0.06, 0.06)
        n = int(rng.integers(10, 22))
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        rr = rng.uniform(0.07, 0.11) * rng.uniform(0.85, 1.15, n)
        pts = layout.to_px(np.stack([ox + rr * np.cos(a), oy + rr * np.sin(a)], axis=1))
        for x, y in pts:
            r = layout.scale(rng.uniform(0.004, 0.008), 0.8)
            ellipse(draw, x, y, r, r)
        canvas.counts["exudate"] += n
    else:
        draw_exudates(canvas, rng, int(rng.integers(8, 20)), (mx, my), 0.12)
    canvas.counts["dme"] += 1


def draw_amd(canvas: LesionCanvas, rng: np.random.Generator) -> None:
    """Drusen around the fovea; advanced cases add pigment clumps and a patch of geographic atrophy."""
    layout = canvas.layout
    center = _macula_norm(canvas)
    draw = canvas.draw("drusen")
    pts = random_points(rng, layout, int(rng.integers(15, 40)), 0.0, 0.22, center=center, avoid_disc=False)
    for x, y in pts:
        r = layout.scale(rng.uniform(0.005, 0.012), 0.9)
        ellipse(draw, x, y, r, r * rng.uniform(0.8, 1.2))
    if rng.random() < 0.5:
        mx, my = layout.to_px(np.array(center))
        r = layout.scale(rng.uniform(0.03, 0.06), 2.5)
        ellipse(canvas.draw("atrophy"), mx, my, r * rng.uniform(0.8, 1.3), r)
        pig = canvas.draw("pigment")
        for x, y in random_points(rng, layout, int(rng.integers(4, 12)), 0.0, 0.1, center=center,
                                  avoid_disc=False):
            ellipse(pig, x, y, layout.scale(0.004, 0.8), layout.scale(0.004, 0.8))
    canvas.counts["drusen"] += len(pts)


def draw_rvo(canvas: LesionCanvas, rng: np.random.Generator) -> None:
    """Flame haemorrhages fanning along one branch vein distal to an occlusion, plus cotton-wool spots."""
    layout = canvas.layout
    # Branch occlusions happen at arteriovenous crossings on the main veins: pick a trunk (the
    # first generation, grown first) and start a few steps out from the disc.
    veins = [b for b in layout.branches if b.vein and len(b.points) > 10][:4]
    branch = veins[int(rng.integers(len(veins)))]
    start = int(rng.integers(3, max(4, len(branch.points) // 3)))
    draw = canvas.draw("red")
    n = 0
    for i in range(start, len(branch.points) - 1):
        p, q = branch.points[i], branch.points[i + 1]
        direction = q - p
        angle = float(np.arctan2(direction[1], direction[0]))
        normal = np.array([-direction[1], direction[0]]) / (np.hypot(*direction) + 1e-9)
        for _ in range(int(rng.integers(2, 5))):
            off = normal * rng.normal(0, layout.scale(0.035, 2.0))
            length = layout.scale(rng.uniform(0.012, 0.025), 1.5)
            rotated_ellipse(draw, *(p + off), length, length * 0.35, angle + rng.normal(0, 0.2),
                            fill=int(rng.integers(190, 256)))
            n += 1
    canvas.counts["rvo_haemorrhage"] += n


def draw_laser_scars(canvas: LesionCanvas, rng: np.random.Generator) -> None:
    """Panretinal photocoagulation: rows of round scars outside the arcades, pigmented rim, pale centre."""
    layout = canvas.layout
    pig, pale = canvas.draw("pigment"), canvas.draw("atrophy")
    n = int(rng.integers(40, 90))
    rings = rng.uniform(0.62, 0.9, n)
    a = rng.uniform(0, 2 * np.pi, n)
    pts = layout.to_px(np.stack([rings * np.cos(a), rings * np.sin(a)], axis=1))
    for x, y in pts:
        r = layout.scale(rng.uniform(0.008, 0.013), 1.2)
        ellipse(pig, x, y, r, r)
        ellipse(pale, x, y, r * 0.55, r * 0.55)
    canvas.counts["laser_scar"] += n


def _macula_norm(canvas: LesionCanvas) -> tuple[float, float]:
    layout = canvas.layout
    return ((layout.macula[0] - layout.center) / layout.fov_radius,
            (layout.macula[1] - layout.center) / layout.fov_radius)


def _random_pole_point(canvas: LesionCanvas, rng: np.random.Generator) -> tuple[float, float]:
    mx, my = _macula_norm(canvas)
    return mx + rng.uniform(-0.2, 0.2), my + rng.uniform(-0.2, 0.2)
