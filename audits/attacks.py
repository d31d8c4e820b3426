"""Membership-inference attacks as pure functions of signals: loss/threshold, LiRA, RMIA.

Each takes the target's per-record signal (higher = more member-like, e.g. LiRA's logit margin or a
CLIP image-caption similarity) and, where it uses reference models, a (records x references) matrix of
the same signal on reference models with an in/out mask, and returns one score per record (higher =
more likely a member).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

MIN_STD = 1e-6


def loss_attack(target: np.ndarray) -> np.ndarray:
    """Threshold on the signal itself (Yeom et al. 2018): no references."""
    return np.asarray(target, dtype=float)


def _fit(values: np.ndarray, mask: np.ndarray, global_std: bool) -> tuple[np.ndarray, np.ndarray]:
    counts = mask.sum(1)
    mean = np.where(counts > 0, (values * mask).sum(1) / np.maximum(counts, 1), np.nan)
    var = ((values - mean[:, None]) ** 2 * mask).sum(1) / np.maximum(counts - 1, 1)
    if global_std:  # few references: one variance for all records (Carlini et al. 2022, sec. VI)
        pooled = ((values - mean[:, None]) ** 2 * mask).sum() / max(mask.sum() - np.isfinite(mean).sum(), 1)
        var = np.full_like(var, pooled)
    return mean, np.sqrt(np.maximum(var, MIN_STD**2))


def lira(target: np.ndarray, refs: np.ndarray, ref_in: np.ndarray, *, online: bool = True,
         global_std: bool = False) -> np.ndarray:
    """Likelihood-ratio attack (Carlini et al. 2022) on per-record Gaussian fits of reference signals.

    Online: log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out). Offline (references never trained on
    the record): the one-sided p-value of s under the OUT fit, as log P[OUT >= s] negated.
    """
    target, refs, ref_in = np.asarray(target, float), np.asarray(refs, float), np.asarray(ref_in, bool)
    mu_out, sd_out = _fit(refs, ~ref_in, global_std)
    if not online:
        return -norm.logsf(target, loc=mu_out, scale=sd_out)
    mu_in, sd_in = _fit(refs, ref_in, global_std)
    if np.isnan(mu_in).any() or np.isnan(mu_out).any():
        raise ValueError("online LiRA needs every record both IN and OUT of some reference model")
    return norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)


def prior_online(refs_p: np.ndarray) -> np.ndarray:
    """Pr(x): the mean likelihood over reference models, half of which trained on x (online RMIA)."""
    return np.asarray(refs_p, float).mean(1)


def prior_offline(refs_p: np.ndarray, out_mask: np.ndarray, a: float = 0.3) -> np.ndarray:
    """Pr(x) from OUT references only, corrected for the missing IN half: ((1 + a) mean_out + (1 - a)) / 2."""
    refs_p, out_mask = np.asarray(refs_p, float), np.asarray(out_mask, bool)
    mean_out = (refs_p * out_mask).sum(1) / np.maximum(out_mask.sum(1), 1)
    return ((1 + a) * mean_out + (1 - a)) / 2


def rmia(target_p: np.ndarray, prior_x: np.ndarray, pop_target_p: np.ndarray, prior_z: np.ndarray, *,
         gamma: float = 1.0) -> np.ndarray:
    """Robust membership inference (Zarifzadeh et al. 2024): pairwise likelihood ratios against population.

    Score(x) = the fraction of population records z with [Pr(x|target)/Pr(x)] / [Pr(z|target)/Pr(z)] > gamma.
    """
    ratio_x = np.asarray(target_p, float) / np.maximum(np.asarray(prior_x, float), 1e-30)
    ratio_z = np.sort(np.asarray(pop_target_p, float) / np.maximum(np.asarray(prior_z, float), 1e-30))
    # ratio_x / ratio_z > gamma  <=>  ratio_z < ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z)


def patient_scores(record_scores: np.ndarray, patients: list[str]) -> tuple[list[str], np.ndarray]:
    """A patient's score: the mean of their images' scores (membership = any image trained on)."""
    order = sorted(set(patients))
    index = {p: i for i, p in enumerate(order)}
    sums, counts = np.zeros(len(order)), np.zeros(len(order))
    for s, p in zip(record_scores, patients, strict=True):
        sums[index[p]] += s
        counts[index[p]] += 1
    return order, sums / counts
