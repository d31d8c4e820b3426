"""Does a synthetic image set copy the records its generator was fitted on?

A generator that memorised its training patients produces images closer to them than any fresh patient
from the same population is. Three figures answer the question in an embedding space (a fedclip
checkpoint's image embeddings, or a model-free pixel embedding when no model is trusted):

- distance to closest record (DCR): each synthetic image's distance to the nearest training record and to
  the nearest holdout record (same population, never seen by the generator); the share of synthetic
  images closer to train than to holdout is 1/2 for a generator that does not copy (train and holdout are
  subsampled to one size for this share, so that 1/2 is the null);
- the three-sample test C_T of Meehan, Chaudhuri and Dasgupta (2020): the space is cut into k-means cells
  of the training set; in each cell a Mann-Whitney U test asks whether synthetic images are closer to
  their nearest training record than holdout records are (Z-scored); C_T is the cells' average weighted
  by their share of holdout records. C_T << 0 is copying, ~0 is fine, >> 0 is underfitting;
- suspected copies: a synthetic image is flagged when it is closer to a training record than all but
  `alpha` of the holdout records are *and* its ratio (distance to train / distance to the nearest
  holdout record) is below all but `alpha` of the holdout records' own ratios (against train / against
  the other holdout patients): both thresholds come from fresh patients, so a fresh patient is flagged
  with probability at most alpha.

Pure functions take embedding matrices; `run_copying` reads dataset dirs and writes the audit dir.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy.stats import binomtest, mannwhitneyu
from sklearn.cluster import KMeans

from fedclip import __version__, io, models
from fedclip.audits.results import AuditError, data_fingerprint, write_results
from fedclip.data.images import load_rgb
from fedclip.data.records import Record, normalise_patient_id, patient_key, read_metadata, write_metadata
from fedclip.progress import progress_bar

COPIES_FILE = "copies.csv"
PIXELS = "pixels"
ANATOMY = "anatomy"


@dataclass(frozen=True)
class CopyingConfig:
    embed: str = PIXELS  # "pixels", "anatomy" (vessels and disc, colour-free) or a fedclip checkpoint dir
    alpha: float = 0.005  # the quantile of fresh patients (the holdout) at which the flag thresholds sit
    cells: int = 0  # k-means cells for C_T; 0: one per 40 holdout records, between 2 and 20
    min_cell: int = 5  # synthetic images a cell needs to enter C_T
    seed: int = 0  # k-means initialisation and the train/holdout subsample for the DCR share


# ------------------------------------------------------------------------------------- embeddings
FULL = 54  # the whole image is resized to FULL x FULL px ...
PIXEL_SIZE = 32  # ... and its central PIXEL_SIZE x PIXEL_SIZE (60%) embedded: the rim's edge would dominate
MARGIN = (FULL - PIXEL_SIZE) // 2
SHIFTS = (-2, -1, 0, 1, 2)  # px of FULL: up to 4% of the image
ROTATIONS = (-4.0, -2.0, 0.0, 2.0, 4.0)  # degrees
IDENTITY_VIEW = (len(ROTATIONS) * len(SHIFTS) ** 2) // 2  # the unmoved view (angle 0, no shift)


def anatomy_map(img: Image.Image) -> Image.Image:
    """What identifies a retina whatever the camera's colours: the vessel tree and the disc.

    A retina is a biometric: a copy of a patient's vessel tree under another colour profile is still that
    patient. The green channel (where vessels contrast most) is contrast-normalised, vessels are the dark
    thin structures a morphological black top-hat keeps (closing minus image, 7 px at FULL size), and the
    disc is the bright blob of a heavy blur; the two maps side by side as a 2-channel image."""
    from scipy import ndimage

    g = np.asarray(img.convert("RGB").resize((FULL, FULL), Image.Resampling.BOX), dtype=np.float32)[..., 1]
    g = (g - g.mean()) / (g.std() + 1e-6)
    vessels = ndimage.grey_closing(g, size=(7, 7)) - g
    disc = ndimage.gaussian_filter(g, 3.0)
    stack = np.stack([vessels, disc, np.zeros_like(g)], -1)
    stack = (stack - stack.min((0, 1))) / (np.ptp(stack, (0, 1)) + 1e-6) * 255
    return Image.fromarray(stack.astype(np.uint8))


def _views(img: Image.Image, aligned: bool) -> np.ndarray:
    """(views, d): standardised central crops, for every rotation and shift when `aligned`."""
    out = []
    for angle in ROTATIONS if aligned else (0.0,):
        turned = img.rotate(angle, resample=Image.Resampling.BILINEAR) if angle else img
        small = turned.resize((FULL, FULL), Image.Resampling.BOX).filter(ImageFilter.GaussianBlur(0.7))
        x = np.asarray(small, dtype=np.float32)
        for dy in SHIFTS if aligned else (0,):
            for dx in SHIFTS if aligned else (0,):
                out.append(x[MARGIN + dy:MARGIN + dy + PIXEL_SIZE, MARGIN + dx:MARGIN + dx + PIXEL_SIZE])
    v = np.stack(out)
    v = (v - v.mean((1, 2), keepdims=True)) / (v.std((1, 2), keepdims=True) + 1e-6)
    return v.reshape(len(v), -1)


def pixel_embedding(paths: Sequence[str | Path], *, aligned: bool = False, anatomy: bool = False) -> np.ndarray:
    """A model-free embedding: the central 60% of the image as a blurred 32 px thumbnail, each colour channel
    standardised (brightness, contrast and colour casts drop out), as a unit vector.

    Pixel distances are not invariant to small shifts and rotations, so a query set is embedded `aligned`:
    25 shifts (up to 4% of the image) x 5 rotations (up to 4 degrees) per image, shape (n, 125, d); its
    distance to a reference row is the smallest over those views (`nearest`). References stay (n, d).
    With `anatomy`, the same is done on `anatomy_map` (vessels and disc) instead of the colours."""
    out: np.ndarray | None = None
    name = "anatomy" if anatomy else "pixels"
    with progress_bar(f"embed images ({name}" + (", aligned)" if aligned else ")"), len(paths)) as advance:
        for i, p in enumerate(paths):
            img = load_rgb(p)
            v = _unit(_views(anatomy_map(img) if anatomy else img, aligned))
            if out is None:  # filled in place: 1,200 aligned images are 1.8 GB; a list + stack would double it
                out = np.empty((len(paths), *v.shape), dtype=np.float32)
            out[i] = v
            advance(1)
    if out is None:
        raise ValueError("pixel_embedding needs at least one image")
    return out if aligned else out[:, 0]


def model_embedding(vc: models.VisionClip, paths: Sequence[str | Path]) -> np.ndarray:
    """Unit image embeddings of a fedclip model."""
    from fedclip import evaluate

    return evaluate.image_embeddings(vc, list(paths)).numpy().astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------- pure scoring
def nearest(queries: np.ndarray, reference: np.ndarray, *, groups: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance of each query to its nearest reference row, and that row's index. Queries of shape
    (n, views, d) take the smallest distance over their views. With `groups` (query groups, reference
    groups), a query never matches a reference of its own group (a patient's own other images)."""
    flat = queries.reshape(-1, queries.shape[-1]).astype(np.float32, copy=False)
    views = queries.shape[1] if queries.ndim == 3 else 1
    ref = reference.astype(np.float32, copy=False)
    ref_sq = (ref * ref).sum(1)
    dist, idx = np.empty(len(flat)), np.empty(len(flat), dtype=np.int64)
    for lo in range(0, len(flat), 4096):  # |q - r|^2 = |q|^2 - 2 q.r + |r|^2, one BLAS product per chunk
        q = flat[lo:lo + 4096]
        d2 = (q * q).sum(1)[:, None] - 2 * q @ ref.T + ref_sq[None]
        if groups is not None:
            own = groups[0][np.arange(lo, lo + len(q)) // views]
            d2[own[:, None] == groups[1][None, :]] = np.inf
        idx[lo:lo + 4096] = d2.argmin(1)
        dist[lo:lo + 4096] = np.sqrt(np.maximum(d2[np.arange(len(q)), idx[lo:lo + 4096]], 0))
    if queries.ndim == 2:
        return dist, idx
    dist, idx = dist.reshape(queries.shape[:2]), idx.reshape(queries.shape[:2])
    best = dist.argmin(1)
    rows = np.arange(len(best))
    return dist[rows, best], idx[rows, best]


def flag_copies(d_train: np.ndarray, d_holdout: np.ndarray, holdout_to_train: np.ndarray,
                holdout_to_holdout: np.ndarray, *, alpha: float) -> tuple[np.ndarray, dict[str, float]]:
    """Flags and their two thresholds, both read off fresh patients (the holdout, each against train and
    against the *other* holdout patients) at quantile alpha: a synthetic image is flagged when it is closer
    to train than that distance, and its ratio (distance to train / distance to holdout) is below theirs."""
    if alpha <= 0:
        return np.zeros(len(d_train), dtype=bool), {"distance": 0.0, "ratio": 0.0}
    distance = float(np.quantile(holdout_to_train, alpha, method="lower"))
    ratio = float(np.quantile(holdout_to_train / np.maximum(holdout_to_holdout, 1e-12), alpha, method="lower"))
    flags = (d_train < distance) & (d_train < ratio * d_holdout)
    return flags, {"distance": distance, "ratio": ratio}


def z_u(d_generated: np.ndarray, d_test: np.ndarray) -> float:
    """Meehan et al.'s Z-scored Mann-Whitney U of generated vs test distances to the training set
    (continuity-corrected mean); negative when generated samples sit closer to the training set."""
    m, n = len(d_generated), len(d_test)
    u = mannwhitneyu(d_generated, d_test, alternative="less").statistic
    return float((u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12))


def three_sample_test(train: np.ndarray, test: np.ndarray, generated: np.ndarray, *, cells: int,
                      min_cell: int = 5, seed: int = 0) -> dict[str, Any]:
    """C_T over k-means cells of the training set (Meehan, Chaudhuri, Dasgupta 2020)."""
    km = KMeans(n_clusters=cells, n_init=4, random_state=seed).fit(train)
    t_cell, p_cell, q_cell = km.labels_, km.predict(test), km.predict(generated)
    rows, num, den = [], 0.0, 0.0
    for c in range(cells):
        t, p, q = train[t_cell == c], test[p_cell == c], generated[q_cell == c]
        share = len(p) / len(test)
        row: dict[str, Any] = {"cell": c, "train": len(t), "test": len(p), "generated": len(q), "z": None}
        if len(p) and len(q) >= min_cell:
            row["z"] = z_u(nearest(q, t)[0], nearest(p, t)[0])
            num += share * row["z"]
            den += share
        rows.append(row)
    return {"c_t": num / den if den else None, "cells": rows, "k": cells, "min_cell": min_cell,
            "cells_used": sum(r["z"] is not None for r in rows)}


def dcr_share(d_train: np.ndarray, d_holdout: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Share of synthetic images strictly closer to train than to holdout, with an exact binomial test
    against 1/2 (one-sided: more than half is the copying direction) and a Clopper-Pearson interval."""
    k, n = int((d_train < d_holdout).sum()), len(d_train)
    test = binomtest(k, n, 0.5, alternative="greater")
    ci = test.proportion_ci(confidence_level=confidence, method="exact")
    return {"share": k / n, "closer_to_train": k, "n": n, "p_value": float(test.pvalue),
            "ci": [float(ci.low), float(ci.high)]}


# ------------------------------------------------------------------------------------- pipeline
def _paths(records: list[Record], root: Path) -> list[Path]:
    return [r.path(root) for r in records]


def run_copying(synthetic: str | Path, train: str | Path, holdout: str | Path, cfg: CopyingConfig,
                out: str | Path) -> dict[str, Any]:
    """Embed the three sets, score copying, write results.json and copies.csv into `out`."""
    roots = Path(synthetic), Path(train), Path(holdout)
    syn, tr, ho = (read_metadata(r) for r in roots)
    for name, root, recs in zip(("synthetic", "train", "holdout"), roots, (syn, tr, ho), strict=True):
        if len(recs) < 2:
            raise AuditError(f"the {name} set {root} has {len(recs)} image(s); the copying audit needs at least 2 "
                             "in each set")
    shared = sorted({normalise_patient_id(r.meta.get("patient_id")) for r in tr}
                    & {normalise_patient_id(r.meta.get("patient_id")) for r in ho} - {""})
    if shared:
        raise AuditError(f"train and holdout share {len(shared)} patient(s) ({', '.join(map(str, shared[:5]))}); "
                         "the holdout must be patients the generator never saw")
    if not 0 <= cfg.alpha < 1:
        raise AuditError(f"--alpha {cfg.alpha} must be in [0, 1)")
    paths = [_paths(syn, roots[0]), _paths(tr, roots[1]), _paths(ho, roots[2])]
    if cfg.embed in (PIXELS, ANATOMY):
        # synthetic and holdout images are queries (aligned views), train and holdout references
        anatomy = cfg.embed == ANATOMY
        s = pixel_embedding(paths[0], aligned=True, anatomy=anatomy)
        t = pixel_embedding(paths[1], anatomy=anatomy)
        h_views = pixel_embedding(paths[2], aligned=True, anatomy=anatomy)
        h = h_views[:, IDENTITY_VIEW]
        what = "vessel map (green-channel black top-hat) and disc map, colour-free" if anatomy else \
            "colour channels standardised"
        space = (f"{cfg.embed}: the central {PIXEL_SIZE / FULL:.0%} as {PIXEL_SIZE} px blurred thumbnails, {what}, "
                 f"unit vectors; queries aligned over {len(ROTATIONS) * len(SHIFTS) ** 2} small shifts and rotations")
    else:
        vc = models.load_checkpoint(cfg.embed)
        s, t, h = (model_embedding(vc, p) for p in paths)
        h_views = h
        space = f"image embeddings of checkpoint {cfg.embed}"
    d_train, i_train = nearest(s, t)
    d_holdout, _ = nearest(s, h)
    holdout_to_train, _ = nearest(h_views, t)
    ids = np.array([patient_key(r) for r in ho])
    holdout_to_holdout, _ = nearest(h_views, h, groups=(ids, ids))
    flags, thresholds = flag_copies(d_train, d_holdout, holdout_to_train, holdout_to_holdout, alpha=cfg.alpha)
    # equal-size train and holdout for the share, so that 1/2 is what a non-copying generator gives
    rng = np.random.default_rng(cfg.seed)
    n_eq = min(len(t), len(h))
    t_eq, h_eq = t[rng.choice(len(t), n_eq, replace=False)], h[rng.choice(len(h), n_eq, replace=False)]
    share = dcr_share(nearest(s, t_eq)[0], nearest(s, h_eq)[0])
    cells = cfg.cells or int(np.clip(len(h) // 40, 2, 20))
    s_plain = s[:, IDENTITY_VIEW] if s.ndim == 3 else s  # C_T as published: unaligned distances
    ct = three_sample_test(t, h, s_plain, cells=min(cells, len(t)), min_cell=cfg.min_cell, seed=cfg.seed)
    order = np.argsort(d_train / np.maximum(d_holdout, 1e-12))
    rows = StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["synthetic", "nearest_train", "distance", "nearest_holdout_distance", "flagged"])
    for i in order:
        writer.writerow([syn[i].filepath, tr[i_train[i]].filepath, f"{d_train[i]:.6g}", f"{d_holdout[i]:.6g}",
                         int(flags[i])])
    doc = {
        "kind": "copying", "fedclip_version": __version__, "embedding": space, "config": asdict(cfg),
        "data": {"synthetic": str(roots[0]), "train": str(roots[1]), "holdout": str(roots[2]),
                 "n_synthetic": len(syn), "n_train": len(tr), "n_holdout": len(ho)},
        "dcr": {"synthetic_to_train": _quantiles(d_train), "synthetic_to_holdout": _quantiles(d_holdout),
                "holdout_to_train": _quantiles(holdout_to_train), "share_closer_to_train": share},
        "three_sample_test": ct,
        "flags": {"threshold": thresholds["distance"], "ratio_threshold": thresholds["ratio"], "alpha": cfg.alpha,
                  "flagged": int(flags.sum()), "rate": float(flags.mean()),
                  "rule": f"closer to a training image than all but {cfg.alpha:.1%} of fresh patients' images are, "
                          f"and a ratio of distances (to train / to holdout) below all but {cfg.alpha:.1%} of "
                          "theirs"},
        "histogram": {"synthetic_to_train": d_train.tolist(), "holdout_to_train": holdout_to_train.tolist()},
        "verdict": verdict(ct["c_t"], share, int(flags.sum()), len(syn), cfg.alpha),
    }
    out = Path(out)
    io.write_text(out / COPIES_FILE, rows.getvalue())
    return write_results(out, doc, {name: data_fingerprint(root, recs) for name, root, recs in
                                    zip(("synthetic", "train", "holdout"), roots, (syn, tr, ho), strict=True)})


def _quantiles(d: np.ndarray) -> dict[str, float]:
    return {"min": float(d.min()), "p05": float(np.quantile(d, 0.05)), "median": float(np.median(d)),
            "mean": float(d.mean())}


def verdict(c_t: float | None, share: dict[str, Any], flagged: int, n: int, alpha: float) -> dict[str, Any]:
    """What a privacy officer reads first: does the set copy individuals, and by which evidence.

    Copying is decided by individual-level evidence (near-copies beyond the rate fresh patients give; C_T).
    The DCR share is reported beside it as a caution, not as copying: a generator fitted to a small cohort's
    aggregate statistics (prevalences, grade mix) already sits closer to that sample than to another sample
    of the same population, without reproducing anyone (measured on fedclip's own Med-AIGC step)."""
    reasons = []
    if c_t is not None and c_t < -3:
        reasons.append(f"C_T = {c_t:.1f} (< -3: synthetic images sit closer to training records than fresh ones)")
    p_flags = float(binomtest(flagged, n, alpha, alternative="greater").pvalue) if alpha > 0 else 1.0
    if flagged and p_flags < 0.01:
        reasons.append(f"{flagged} of {n} images flagged as near-copies, more than the {alpha:.1%} a set of fresh "
                       f"patients would give (p = {p_flags:.2g})")
    caution = None
    if share["p_value"] < 0.01:
        caution = (f"{share['share']:.1%} of synthetic images are closer to the training sample than to fresh patients "
                   f"(p = {share['p_value']:.2g} against 1/2): the generator fits its training sample more closely "
                   "than the population — from copied individuals or from the sample's aggregate statistics")
    return {"copies": bool(reasons), "reasons": reasons, "caution": caution}


# ------------------------------------------------------------------------------- positive control
PLANTED = "planted-copy"


def plant_copies(synthetic: str | Path, train: str | Path, out: str | Path, *, fraction: float = 0.02,
                 seed: int = 0) -> dict[int, str]:
    """A copy of the synthetic set in which `fraction` of the images are training images, lightly
    augmented (shift up to 3%, rotation up to 5 degrees, brightness/contrast/colour jitter up to 10%,
    JPEG at quality 75-90): the positive control an auditor runs to check that the audit catches copies
    on their data. Returns {index replaced: the training record's filepath}; the replaced rows say
    `source = planted-copy` in metadata.csv."""
    syn_root, train_root, out = Path(synthetic), Path(train), Path(out)
    syn, tr = read_metadata(syn_root), read_metadata(train_root)
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for i in rng.choice(len(syn), max(1, round(fraction * len(syn))), replace=False))
    sources: dict[int, str] = {}
    rows = [Record(str(r.path(syn_root).resolve()), r.caption, dict(r.labels), dict(r.meta)) for r in syn]
    for i in chosen:
        src = tr[int(rng.integers(len(tr)))]
        sources[i] = src.filepath
        img = _augment(load_rgb(src.path(train_root)), rng)
        buf = BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(75, 91)))
        rel = f"images/planted/{i:08d}.jpg"
        io.write_bytes(out / rel, buf.getvalue())
        rows[i] = Record(rel, src.caption, dict(src.labels), {"source": PLANTED, "patient_id": f"planted-{i}"})
    write_metadata(out, rows)
    return sources


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    dx, dy = (int(round(v)) for v in rng.uniform(-0.03, 0.03, 2) * (w, h))
    img = img.rotate(float(rng.uniform(-5, 5)), resample=Image.Resampling.BILINEAR, translate=(dx, dy))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.9, 1.1)))
    return img
