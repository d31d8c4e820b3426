"""Empirical epsilon lower bounds with stated confidence: Clopper-Pearson over many trainings, and the
one-run audit of Steinke, Nasr and Jagielski (2023).

A lower bound at confidence c may exceed the true epsilon with probability at most 1 - c, by design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

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


GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.3)
"""Abstention rule: guess on the top and bottom k = f·m scores for each f, Bonferroni over the five. In
simulations of a Gaussian mechanism (m = 500 to 2,000, μ = 0.24 to 2) the best f was 0.05 to 0.3; 0.02
pays off for strong signals with many canaries. Fixed in advance, so the choice costs a known factor."""


def _guesses(scores: Sequence[float], included: Sequence[bool],
             fractions: Sequence[float]) -> list[tuple[int, int]]:
    """(guesses r, correct v) for each abstention fraction: "in" for the top k scores, "out" for the bottom k."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    order = np.argsort(-scores, kind="stable")
    out = []
    for f in fractions:
        k = max(1, int(f * len(scores)))
        out.append((2 * k, int(included[order[:k]].sum() + (~included[order[-k:]]).sum())))
    return out


def one_run_audit(scores: Sequence[float], included: Sequence[bool], *, delta: float, confidence: float = 0.95,
                  guess_fractions: Sequence[float] = GUESS_FRACTIONS) -> dict[str, float]:
    """The (ε, δ)-DP one-run bound (Steinke et al. 2023) for the best abstention fraction, its confidence
    split over the fractions (Bonferroni), so picking the best k does not void the stated confidence."""
    m, level = len(scores), 1 - (1 - confidence) / len(guess_fractions)
    best = {"epsilon_lb": 0.0, "guesses": 0, "correct": 0}
    for r, v in _guesses(scores, included, guess_fractions):
        eps = one_run_epsilon(m, r, v, delta=delta, confidence=level)
        if eps > best["epsilon_lb"]:
            best = {"epsilon_lb": eps, "guesses": r, "correct": v}
    return {**best, "canaries": m, "confidence": confidence}


# --------------------------------------------------------------------------- f-DP (Gaussian) in one run
_N = NormalDist()


def _gdp_inverse_blow_up(x: float, mu: float) -> float:
    """Φ(Φ⁻¹(x) − μ): how small a set's probability can be under one neighbour of a μ-GDP mechanism when
    it is x under the other (the trade-off curve read the other way round)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return _N.cdf(_N.inv_cdf(x) - mu)


def gdp_refuted(mu: float, m: int, r: int, v: int, *, alpha: float) -> bool:
    """Whether v correct of r guesses on m canaries refutes μ-GDP at level alpha (Mahloujifar, Melis and
    Chaudhuri 2024, the guessing game with abstention, k = 2).

    Their argument runs backwards over the number of correct guesses: the mass that can sit on "i correct"
    is limited by the mass on "i + 1 correct" through the trade-off curve, and if the total the curve
    allows for reaching v correct with probability alpha exceeds what r guesses among m canaries can
    carry (r / m), the mechanism cannot be μ-GDP. Written from the paper's recursion (not its code); the
    one-run ε bound above is the same game under (ε, δ)-DP.
    """
    if r == 0 or v == 0:
        return False
    tail = alpha * r / m
    rest, h = tail * v / r, tail * (r - v) / r
    for i in range(v - 1, -1, -1):
        h_next = max(h, _gdp_inverse_blow_up(rest, mu))
        rest += i / (r - i) * (h_next - h)
        h = h_next
        if rest + h > r / m:
            return True
    return rest + h > r / m


def gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of μ-GDP (Dong, Roth and Su 2019, Cor. 2.13)."""
    if mu <= 0:
        return 0.0
    return _N.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * _N.cdf(-epsilon / mu - mu / 2)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The ε at which μ-GDP is (ε, δ)-DP."""
    if mu <= 0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gdp_delta(mu, mid) > delta else (lo, mid)
    return hi


def gdp_mu_lower_bound(m: int, r: int, v: int, *, confidence: float = 0.95) -> float:
    """The largest μ that v correct of r guesses refute at `confidence` (0 if none): the mechanism is not
    μ'-GDP for any μ' below it, except with probability 1 - confidence."""
    alpha = 1 - confidence
    if not gdp_refuted(1e-9, m, r, v, alpha=alpha):
        return 0.0
    lo, hi = 0.0, 1.0
    while gdp_refuted(hi, m, r, v, alpha=alpha):
        hi *= 2
        if hi > 64:
            return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gdp_refuted(mid, m, r, v, alpha=alpha) else (lo, mid)
    return lo


def gdp_one_run_audit(scores: Sequence[float], included: Sequence[bool], *, delta: float, confidence: float = 0.95,
                      guess_fractions: Sequence[float] = GUESS_FRACTIONS) -> dict[str, float]:
    """The μ-GDP one-run bound (Mahloujifar et al. 2024) for the best abstention fraction (Bonferroni over
    them), and the ε that μ implies at δ. That ε is a lower bound on the mechanism's ε only if its privacy
    curve is Gaussian-shaped, as many composed subsampled Gaussian steps approach (Dong et al. 2019's
    central limit theorem); μ itself needs no such assumption against a μ-GDP claim."""
    m, level = len(scores), 1 - (1 - confidence) / len(guess_fractions)
    best = {"mu_lb": 0.0, "guesses": 0, "correct": 0}
    for r, v in _guesses(scores, included, guess_fractions):
        mu = gdp_mu_lower_bound(m, r, v, confidence=level)
        if mu > best["mu_lb"]:
            best = {"mu_lb": mu, "guesses": r, "correct": v}
    return {**best, "epsilon_lb": gdp_epsilon(best["mu_lb"], delta), "canaries": m, "confidence": confidence}


def dp_auc_ceiling(epsilon: float, delta: float) -> float:
    """The largest membership AUC any attack can reach against an (ε, δ)-DP mechanism, for records of its
    unit: the area under the ROC envelope TPR ≤ min(e^ε·FPR + δ, 1 − e^(−ε)·(1 − δ − FPR), 1) (Kairouz et
    al. 2015's hypothesis-testing view). An averaged ROC over many records obeys it too, since each record's
    does. ε = 1, δ = 1e-5: 0.731; ε = 4: 0.982; ε = 8: 0.9997."""
    fpr = np.linspace(0.0, 1.0, 20001)
    tpr = np.minimum.reduce([np.exp(epsilon) * fpr + delta, 1 - np.exp(-epsilon) * (1 - delta - fpr),
                             np.ones_like(fpr)])
    return float(np.trapezoid(np.clip(tpr, 0.0, 1.0), fpr))


def dp_claim_ceiling(epsilon: float, delta: float, unit: str) -> dict[str, Any]:
    """What a verdict quotes about a DP claim: the largest AUC it allows and the claim in words."""
    return {"auc": dp_auc_ceiling(epsilon, delta), "claim": f"ε = {epsilon:.3g}, δ = {delta:g} per {unit}"}
