"""Membership-inference metrics: ROC, AUC, TPR at low FPR, each with a bootstrap confidence interval.

Scores are "higher = more likely a member". TPR at a given FPR is read off scikit-learn's ROC curve at
the largest threshold whose FPR does not exceed it (no interpolation: an attack is credited only with
operating points it actually has).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

FPRS = (0.01, 0.001)


def tpr_at(member: np.ndarray, score: np.ndarray, fpr: float) -> float:
    fprs, tprs, _ = roc_curve(member, score)
    ok = fprs <= fpr
    return float(tprs[ok].max()) if ok.any() else 0.0


def point(member: np.ndarray, score: np.ndarray, fprs: Sequence[float] = FPRS) -> dict[str, float]:
    out = {"auc": float(roc_auc_score(member, score))}
    for f in fprs:
        out[f"tpr@{f:g}"] = tpr_at(member, score, f)
    return out


def percentile_interval(draws: Sequence[float] | np.ndarray, confidence: float) -> list[float]:
    """The central `confidence` interval of bootstrap draws (percentile method)."""
    lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
    return [float(np.quantile(draws, lo)), float(np.quantile(draws, hi))]


def summarise(member: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray, *, n_boot: int = 1000,
              seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """AUC and TPR@FPR with percentile bootstrap CIs (members and non-members resampled separately)."""
    member, score = np.asarray(member, dtype=int), np.asarray(score, dtype=float)
    if member.min() == member.max():
        raise ValueError("need both members and non-members to score an attack")
    out: dict[str, Any] = {**point(member, score), "n_members": int(member.sum()),
                           "n_nonmembers": int((1 - member).sum())}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(member == 1), np.flatnonzero(member == 0)
    boots: dict[str, list[float]] = {k: [] for k in out if k.startswith(("auc", "tpr"))}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        for k, v in point(member[idx], score[idx]).items():
            boots[k].append(v)
    out["ci"] = {k: percentile_interval(v, confidence) for k, v in boots.items()}
    out["ci_level"] = confidence
    return out


def roc(member: Sequence[int], score: Sequence[float]) -> tuple[list[float], list[float]]:
    fprs, tprs, _ = roc_curve(np.asarray(member), np.asarray(score))
    return fprs.tolist(), tprs.tolist()
