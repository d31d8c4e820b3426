"""Attacks, metrics and bounds on constructed cases with known answers."""

import math

import numpy as np
import pytest
from scipy.stats import binom, norm

from fedclip.audits import attacks, bounds, metrics


def test_auc_of_two_known_gaussians_and_of_unseen_vs_unseen():
    rng = np.random.default_rng(0)
    d = 1.0
    score = np.r_[rng.normal(d, 1, 2000), rng.normal(0, 1, 2000)]
    member = np.r_[np.ones(2000), np.zeros(2000)]
    res = metrics.summarise(member, score, n_boot=200)
    expected = norm.cdf(d / math.sqrt(2))  # P[X_in > X_out]
    assert res["ci"]["auc"][0] < expected < res["ci"]["auc"][1]
    same = metrics.summarise(member, np.r_[rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)], n_boot=200)
    assert same["ci"]["auc"][0] < 0.5 < same["ci"]["auc"][1]


def test_tpr_at_low_fpr_takes_only_operating_points_the_attack_has():
    member = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    score = np.array([9, 8, 1, 7, 2, 2, 2, 2, 2, 2])
    assert metrics.tpr_at(member, score, 0.0) == pytest.approx(2 / 3)
    assert metrics.tpr_at(member, score, 0.1) == pytest.approx(2 / 3)  # the next point costs fpr 1/7 > 0.1


def test_lira_matches_hand_computed_likelihood_ratios():
    refs = np.array([[1.0, 2.0, 3.0, 0.0, 0.5, 1.0]])
    ref_in = np.array([[True, True, True, False, False, False]])
    s = np.array([2.5])
    mu_in, sd_in = 2.0, 1.0  # sample std of 1, 2, 3
    mu_out, sd_out = 0.5, 0.5
    online = attacks.lira(s, refs, ref_in, online=True)
    assert online[0] == pytest.approx(norm.logpdf(2.5, mu_in, sd_in) - norm.logpdf(2.5, mu_out, sd_out))
    offline = attacks.lira(s, refs, ref_in, online=False)
    assert offline[0] == pytest.approx(-norm.logsf(2.5, mu_out, sd_out))
    with pytest.raises(ValueError, match="IN and OUT"):
        attacks.lira(s, refs, np.zeros_like(ref_in), online=True)


def test_rmia_matches_hand_computed_pairwise_ratios():
    target_p, prior_x = np.array([0.9, 0.2]), np.array([0.5, 0.4])  # ratios 1.8, 0.5
    pop_p, prior_z = np.array([0.5, 0.6, 0.3, 0.8]), np.array([0.5, 0.4, 0.6, 0.4])  # ratios 1.0, 1.5, 0.5, 2.0
    assert attacks.rmia(target_p, prior_x, pop_p, prior_z, gamma=1.0).tolist() == [0.75, 0.0]  # 1.8 > 1.0, 1.5, 0.5
    assert attacks.rmia(target_p, prior_x, pop_p, prior_z, gamma=0.5).tolist() == [1.0, 0.25]
    refs = np.array([[0.2, 0.6], [0.4, 0.4]])
    assert attacks.prior_online(refs).tolist() == [0.4, 0.4]
    out = np.array([[True, False], [True, True]])
    assert attacks.prior_offline(refs, out, a=0.3).tolist() == pytest.approx([(1.3 * 0.2 + 0.7) / 2,
                                                                               (1.3 * 0.4 + 0.7) / 2])


def test_patient_score_is_the_mean_of_their_images():
    ids, s = attacks.patient_scores(np.array([1.0, 3.0, 5.0]), ["b", "a", "b"])
    assert ids == ["a", "b"] and s.tolist() == [3.0, 3.0]


def test_clopper_pearson_against_closed_forms():
    lo, hi = bounds.clopper_pearson(0, 10, 0.05)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = bounds.clopper_pearson(10, 10, 0.05)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))


def test_trials_bound_for_perfectly_separated_scores_matches_the_hand_computed_value():
    n = 500
    res = bounds.epsilon_from_trials(np.ones(n), np.zeros(n), delta=0.0, confidence=0.95)
    alpha = 0.05 / (4 * 3)  # 3 distinct decile thresholds (0, 0.5, 1) x (TPR lower, FPR upper) x 2 directions
    tpr_lo = alpha ** (1 / n)  # CP lower bound for n of n
    fpr_hi = 1 - alpha ** (1 / n)  # CP upper bound for 0 of n
    assert res["epsilon_lb"] == pytest.approx(math.log(tpr_lo / fpr_hi), rel=1e-6)
    same = bounds.epsilon_from_trials(np.r_[np.ones(n // 2), np.zeros(n // 2)],
                                      np.r_[np.ones(n // 2), np.zeros(n // 2)], delta=0.0)
    assert same["epsilon_lb"] == 0.0


def test_one_run_bound_against_hand_computed_values():
    # all r guesses right, delta = 0: the bound solves q^r = 1 - confidence with q = e^eps / (1 + e^eps)
    r, m = 200, 1000
    q = 0.05 ** (1 / r)
    assert bounds.one_run_epsilon(m, r, r, delta=0.0, confidence=0.95) == pytest.approx(math.log(q / (1 - q)),
                                                                                          rel=1e-4)
    assert bounds.one_run_epsilon(m, r, r // 2, delta=0.0) == 0.0  # coin flipping refutes nothing
    # the p-value at epsilon = 0 is the binomial tail of a fair coin
    assert bounds.one_run_p_value(m, 100, 70, 0.0, 0.0) == pytest.approx(binom.sf(69, 100, 0.5))
    # delta only makes it harder to refute
    assert bounds.one_run_epsilon(m, r, 180, delta=1e-3) < bounds.one_run_epsilon(m, r, 180, delta=0.0)


def test_one_run_audit_of_perfect_and_of_random_guesses():
    rng = np.random.default_rng(1)
    included = rng.random(1000) < 0.5
    perfect = bounds.one_run_audit(included.astype(float) + rng.normal(0, 0.01, 1000), included, delta=0.0)
    assert perfect["epsilon_lb"] > 2.0 and perfect["correct"] == perfect["guesses"]
    noise = bounds.one_run_audit(rng.normal(0, 1, 1000), included, delta=1e-5, confidence=0.999)
    assert noise["epsilon_lb"] == 0.0


def test_gdp_conversions_against_closed_forms():
    # at epsilon 0, delta is the total variation between N(0,1) and N(mu,1): 2 Phi(mu/2) - 1
    for mu in (0.3, 1.0, 2.5):
        assert bounds.gdp_delta(mu, 0.0) == pytest.approx(2 * norm.cdf(mu / 2) - 1, rel=1e-9)
        eps = bounds.gdp_epsilon(mu, 1e-5)
        assert bounds.gdp_delta(mu, eps) == pytest.approx(1e-5, rel=1e-6)
    assert bounds.gdp_epsilon(1.0, 1e-5) == pytest.approx(4.36, abs=0.02)  # Dong et al.'s tables: mu 1 ~ (4.4, 1e-5)
    assert bounds.gdp_epsilon(0.0, 1e-5) == 0.0


def test_gdp_one_run_bound_is_calibrated_on_a_gaussian_mechanism_and_has_power():
    """Scores of an exactly mu-GDP mechanism (N(mu, 1) for included canaries, N(0, 1) otherwise): the
    bound exceeds the true mu in at most 1 - confidence of runs, and recovers a good part of it."""
    rng = np.random.default_rng(7)
    mu, over, found = 1.0, 0, []
    for _ in range(150):
        included = rng.random(300) < 0.5
        b = bounds.gdp_one_run_audit(mu * included + rng.normal(size=300), included, delta=1e-5)
        over += b["mu_lb"] > mu
        found.append(b["mu_lb"])
    assert over <= 12  # 5% of 150 is 7.5; a broken bound overshoots in most runs
    assert 0.25 < np.mean(found) < mu
    # the bound refutes weaker claims more easily (monotone in mu) and nothing on coin flips
    assert bounds.gdp_refuted(0.1, 1000, 200, 150, alpha=0.05)
    assert not bounds.gdp_refuted(3.0, 1000, 200, 150, alpha=0.05)
    included = rng.random(1000) < 0.5
    assert bounds.gdp_one_run_audit(rng.normal(size=1000), included, delta=1e-5, confidence=0.999)["mu_lb"] == 0.0
    # on the same guesses the Gaussian analysis is tighter than the (epsilon, delta) one
    s = 1.0 * included + rng.normal(size=1000)
    assert bounds.gdp_one_run_audit(s, included, delta=1e-5)["epsilon_lb"] > \
        bounds.one_run_audit(s, included, delta=1e-5)["epsilon_lb"]


def test_the_dp_auc_ceiling_against_closed_forms():
    # pure DP: the envelope's kink at FPR 1 / (1 + e^eps), TPR e^eps / (1 + e^eps); area 1 - ... by hand
    for eps in (0.5, 1.0, 3.0):
        k = 1 / (1 + math.exp(eps))
        area = math.exp(eps) * k**2 / 2 + (1 - k) - math.exp(-eps) * (1 - k) ** 2 / 2
        assert bounds.dp_auc_ceiling(eps, 0.0) == pytest.approx(area, abs=1e-6)
    assert bounds.dp_auc_ceiling(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)  # no attack beats chance
    assert bounds.dp_auc_ceiling(1.0, 1e-5) == pytest.approx(0.731, abs=1e-3)
    assert bounds.dp_auc_ceiling(1.0, 1e-2) > bounds.dp_auc_ceiling(1.0, 0.0)


def test_the_vectorised_bootstrap_figures_equal_scikit_learn_on_each_resampled_draw():
    from fedclip.audits.metrics import _raw, _weighted_figures

    rng = np.random.default_rng(3)
    member = np.r_[np.ones(30, int), np.zeros(70, int)]
    score = np.round(rng.normal(size=100) + 0.5 * member, 1)  # rounded: many ties
    draws = np.stack([np.bincount(np.r_[rng.integers(0, 30, 30), rng.integers(30, 100, 70)], minlength=100)
                      for _ in range(25)])
    fast = _weighted_figures(member, score, draws, (0.1, 0.05))
    for b, w in enumerate(draws):
        idx = np.repeat(np.arange(100), w)
        slow = _raw(member[idx], score[idx], (0.1, 0.05))
        assert {k: fast[k][b] for k in slow} == pytest.approx(slow, abs=1e-12)
