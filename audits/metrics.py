"""Membership-inference metrics: AUC and TPR at fixed FPRs, each only as fine as the data resolve, with
bootstrap confidence intervals that resample patients when images are clustered by patient.

Scores are "higher = more likely a member". TPR at a given FPR is read off scikit-learn's ROC curve at
the largest threshold whose FPR does not exceed it (no interpolation: an attack is credited only with
operating points it actually has). With n non-members the smallest non-zero FPR an audit can observe is
1/n, so a TPR at an FPR below it is recorded as None ("not resolvable with n non-members"); TPR at zero
false positives (`tpr@0fp`, the share of members scored above every non-member) is reported instead.

Images of one patient score alike (within-patient correlation 0.25-0.56 in our audits), so resampling
images as if independent gives intervals that exclude 0.5 in 13-23% of null audits; `groups=` makes the
bootstrap draw whole patients (a stratified cluster bootstrap: member and non-member patients apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from fedclip.bootstrap import clusters, percentile_interval, resample

FPRS = (0.1, 0.01, 0.001)  # the fixed-FPR table (as LeakPro's); each cell only where resolvable


def tpr_key(fpr: float) -> str:
    return f"tpr@{fpr:g}"


def resolvable(fpr: float, n_nonmembers: int) -> bool:
    """Can `n_nonmembers` non-members resolve a false-positive rate of `fpr`? (1/n is the finest step.)"""
    return n_nonmembers > 0 and fpr * n_nonmembers >= 1 - 1e-9


def tpr_at(member: np.ndarray, score: np.ndarray, fpr: float) -> float:
    fprs, tprs, _ = roc_curve(member, score)
    return _tpr_on_curve(fprs, tprs, fpr)


def _tpr_on_curve(fprs: np.ndarray, tprs: np.ndarray, fpr: float) -> float:
    ok = fprs <= fpr + 1e-12
    return float(tprs[ok].max()) if ok.any() else 0.0


def _raw(member: np.ndarray, score: np.ndarray, fprs: Sequence[float]) -> dict[str, float]:
    curve_fpr, curve_tpr, _ = roc_curve(member, score)
    out = {"auc": float(roc_auc_score(member, score)), "tpr@0fp": _tpr_on_curve(curve_fpr, curve_tpr, 0.0)}
    out.update({tpr_key(f): _tpr_on_curve(curve_fpr, curve_tpr, f) for f in fprs})
    return out


def point(member: np.ndarray, score: np.ndarray, fprs: Sequence[float] = FPRS) -> dict[str, float | None]:
    """AUC, TPR at zero false positives, and TPR at each resolvable FPR (None where it is not)."""
    member, score = np.asarray(member), np.asarray(score)
    n_neg = int((member == 0).sum())
    ok = [f for f in fprs if resolvable(f, n_neg)]
    return {**_raw(member, score, ok), **{tpr_key(f): None for f in fprs if f not in ok}}


def _weighted_figures(member: np.ndarray, score: np.ndarray, weights: np.ndarray,
                      fprs: Sequence[float]) -> dict[str, np.ndarray]:
    """`_raw`'s figures for many bootstrap draws at once, each draw given as how often it took each item
    (rows of `weights`).

    A draw's ROC curve is the cumulative weight of members and non-members above each distinct score, so all
    draws' curves are one cumulative sum over the items sorted once; the AUC is their trapezoid area (what
    `roc_auc_score` computes, ties included) and a TPR the largest one whose FPR does not exceed the rate.
    Calling scikit-learn per draw cost ~2 ms a draw, which made null simulations (and 1,000-draw audits of
    several attacks, levels and hospitals) slow; `tests/audits/test_scoring.py` checks the two agree.
    """
    order = np.argsort(-score, kind="stable")
    ends = np.r_[score[order][1:] != score[order][:-1], True]  # the last item of each run of tied scores
    pos = member[order].astype(float)
    w = weights[:, order].astype(float)
    tp, fp = np.cumsum(w * pos, axis=1)[:, ends], np.cumsum(w * (1 - pos), axis=1)[:, ends]
    tpr, fpr = np.pad(tp / tp[:, -1:], ((0, 0), (1, 0))), np.pad(fp / fp[:, -1:], ((0, 0), (1, 0)))  # from (0, 0)
    out = {"auc": (np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(1)}
    for key, f in [("tpr@0fp", 0.0), *((tpr_key(f), f) for f in fprs)]:
        out[key] = np.where(fpr <= f + 1e-12, tpr, 0.0).max(1)
    return out


def summarise(member: Sequence[int] | np.ndarray, score: Sequence[float] | np.ndarray, *, n_boot: int = 1000,
              seed: int = 0, confidence: float = 0.95, groups: Sequence[Any] | None = None,
              family: int = 1) -> dict[str, Any]:
    """AUC, TPR@0fp and TPR at each resolvable FPR, with percentile bootstrap CIs.

    Members and non-members are resampled apart; with `groups` (a patient id per score) whole patients are
    drawn. `family` > 1 widens every interval by Bonferroni (each at 1 - (1 - confidence) / family), so that
    a verdict taking the strongest of `family` attacks with that attack's interval still holds at
    `confidence` (with 3-5 attacks and unadjusted intervals, null audits said "leaks" 8-18% of the time).
    """
    member, score = np.asarray(member, dtype=int), np.asarray(score, dtype=float)
    if member.min() == member.max():
        raise ValueError("need both members and non-members to score an attack")
    g = None if groups is None else np.asarray([str(x) for x in groups], dtype=object)
    n_neg = int((1 - member).sum())
    out: dict[str, Any] = {**point(member, score), "n_members": int(member.sum()), "n_nonmembers": n_neg,
                           "min_fpr": 1 / n_neg}
    level = 1 - (1 - confidence) / max(1, family)
    rng = np.random.default_rng(seed)
    pos = clusters(np.flatnonzero(member == 1), g)
    neg = clusters(np.flatnonzero(member == 0), g)
    ok = [f for f in FPRS if out[tpr_key(f)] is not None]  # resolution is judged on the observed data
    boots: dict[str, list[np.ndarray]] = {}
    per_chunk = max(1, 4_000_000 // len(score))  # draws held at once: bounded memory for large audits
    for start in range(0, n_boot, per_chunk):
        draws = np.stack([np.bincount(np.concatenate([resample(pos, rng), resample(neg, rng)]),
                                      minlength=len(score)) for _ in range(min(per_chunk, n_boot - start))])
        for k, v in _weighted_figures(member, score, draws, ok).items():
            boots.setdefault(k, []).append(v)
    out["ci"] = {k: percentile_interval(np.concatenate(v), level) for k, v in boots.items()}
    out["ci"].update({tpr_key(f): None for f in FPRS if out[tpr_key(f)] is None})
    out["ci_level"] = level
    out["confidence"] = confidence
    out["family"] = max(1, family)
    out["bootstrap"] = "patients" if groups is not None else "records"
    return out


def roc(member: Sequence[int], score: Sequence[float]) -> tuple[list[float], list[float]]:
    fprs, tprs, _ = roc_curve(np.asarray(member), np.asarray(score))
    return fprs.tolist(), tprs.tolist()


def describe_tpr(entry: dict[str, Any], fpr: float) -> str:
    """A TPR cell: the value with its CI, or why there is none."""
    v = entry.get(tpr_key(fpr))
    if v is None:
        return f"not resolvable with {entry['n_nonmembers']} non-members"
    ci = (entry.get("ci") or {}).get(tpr_key(fpr))
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def finest_fpr(entry: dict[str, Any]) -> float | None:
    """The smallest fixed FPR this entry resolves (the one a verdict may quote), or None."""
    ok = [f for f in FPRS if entry.get(tpr_key(f)) is not None]
    return min(ok) if ok else None
