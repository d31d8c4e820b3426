"""Empirical epsilon lower bounds with stated confidence: Clopper-Pearson over many trainings, and the
one-run audit of Steinke, Nasr and Jagielski (2023).

A lower bound at confidence c may exceed the true epsilon with probability at most 1 - c, by design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import beta as beta_dist
from scipy.stats import binom


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) Clopper-Pearson interval for a binomial proportion k / n."""
    lo = 0.0 if k == 0 else float(beta_dist.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def epsilon_from_trials(scores_in: Sequence[float], scores_out: Sequence[float], *, delta: float,
                        confidence: float = 0.95, thresholds: int = 9) -> dict[str, float]:
    """Jagielski et al. (2020): max over thresholds and both directions of ln((TPR_lo - delta) / FPR_hi).

    `scores_in`: the canary's score in trainings that included it; `scores_out`: in trainings without.
    The thresholds are a fixed grid of quantiles of the pooled scores (deciles by default: few enough
    that the Bonferroni split stays cheap); the confidence is split over the 4 one-sided bounds of each
    (TPR lower and FPR upper, both directions), so the maximum over thresholds keeps its stated confidence.
    """
    s_in, s_out = np.asarray(scores_in, float), np.asarray(scores_out, float)
    pooled = np.concatenate([s_in, s_out])
    grid = np.unique(np.quantile(pooled, np.linspace(0, 1, thresholds + 2)[1:-1]))
    alpha = (1 - confidence) / (4 * len(grid))  # one-sided level of each bound
    best = {"epsilon_lb": 0.0, "threshold": float("nan"), "tpr": float("nan"), "fpr": float("nan")}
    for t in grid:
        for a, b, sign in ((s_in, s_out, 1), (s_out, s_in, -1)):
            tp, fp = int((a >= t).sum()) if sign > 0 else int((a <= t).sum()), \
                int((b >= t).sum()) if sign > 0 else int((b <= t).sum())
            tpr_lo = clopper_pearson(tp, len(a), 2 * alpha)[0]
            fpr_hi = clopper_pearson(fp, len(b), 2 * alpha)[1]
            if tpr_lo - delta > 0 and fpr_hi > 0:
                eps = math.log((tpr_lo - delta) / fpr_hi)
                if eps > best["epsilon_lb"]:
                    best = {"epsilon_lb": eps, "threshold": float(t), "tpr": tp / len(a), "fpr": fp / len(b)}
    return {**best, "trials_in": len(s_in), "trials_out": len(s_out), "confidence": confidence}


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] for an (epsilon, delta)-DP mechanism (Steinke et al. 2023, Thm 3).

    m canaries, each included with probability 1/2; the guesses are randomized response at best.
    """
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += float(binom.pmf(v - i, r, q))
        alpha = max(alpha, acc / i)
    return min(1.0, tail + alpha * delta * 2 * m)


def one_run_epsilon(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon the guesses refute at `confidence` (0 if none)."""
    p = 1 - confidence
    if r == 0 or one_run_p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < p:
        hi *= 2
        if hi > 1e3:
            return hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) < p else (lo, mid)
    return lo


def one_run_audit(scores: Sequence[float], included: Sequence[bool], *, delta: float, confidence: float = 0.95,
                  guess_fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.3)) -> dict[str, float]:
    """Guess "in" for the top-k and "out" for the bottom-k scores, abstain on the rest.

    k is tried over a fixed set of fractions of m; the confidence is split over them (Bonferroni), so
    picking the best k does not void the stated confidence.
    """
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    level = 1 - (1 - confidence) / len(guess_fractions)
    best = {"epsilon_lb": 0.0, "guesses": 0, "correct": 0, "k": 0}
    for f in guess_fractions:
        k = max(1, int(f * m))
        top, bottom = order[:k], order[-k:]
        v = int(included[top].sum() + (~included[bottom]).sum())
        eps = one_run_epsilon(m, 2 * k, v, delta=delta, confidence=level)
        if eps > best["epsilon_lb"]:
            best = {"epsilon_lb": eps, "guesses": 2 * k, "correct": v, "k": k}
    return {**best, "canaries": m, "confidence": confidence}
