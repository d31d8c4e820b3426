import numpy as np
import pytest

from fedclip.errors import FedclipError
from fedclip.synth import CohortSpec, patient
from fedclip.synth.estimate import _release, estimate, synthetic_spec


def test_estimate_then_sample_matches_statistics_with_new_individuals():
    cohort_spec = CohortSpec(seed=1, size=64, hospital="riverside,summit")
    cohort = [patient(cohort_spec, i) for i in range(1500)]
    stats = estimate(cohort)
    assert dict(stats.hospitals) == pytest.approx({"riverside": 0.5, "summit": 0.5}, abs=0.05)
    spec = synthetic_spec(stats, seed=2, size=64)
    synthetic = [patient(spec, i) for i in range(1500)]
    again = estimate(synthetic)
    eligible = [_release(group, ["riverside", "summit"])[0] for group in (cohort, synthetic)]
    for (name, p), (_, q) in zip(stats.prevalence, again.prevalence, strict=True):
        # DME and laser scars are rates among the few eyes of grade >= 2 or 3: four standard errors
        n1, n2 = eligible[0].get(f"eligible:{name}", 1500), eligible[1].get(f"eligible:{name}", 1500)
        assert abs(p - q) < max(0.05, 4 * np.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))), name
    assert abs(stats.diabetic_rate - again.diabetic_rate) < 0.05
    assert np.abs(np.array(stats.dr_grades) - np.array(again.dr_grades)).max() < 0.05
    for (name, m, s), (_, m2, s2) in zip(stats.anatomy, again.anatomy, strict=True):
        assert abs(m - m2) < 0.1 * abs(m) + 0.01 and abs(s - s2) < 0.5 * s + 0.01, name
    # nobody is copied: no identity, vessel tree or anatomy of a cohort patient reappears
    assert not {p.patient_id for p in cohort} & {p.patient_id for p in synthetic}
    seeds = [{a.vessel_seed for p in group for a in p.anatomy} for group in (cohort, synthetic)]
    assert not seeds[0] & seeds[1]


def test_estimate_needs_patients():
    with pytest.raises(FedclipError, match="at least 2"):
        estimate([patient(CohortSpec(), 0)])


def _release_vector(patients, hospitals):
    values, sensitivity = _release(patients, hospitals)
    return np.array([values[k] for k in sorted(values)]), sensitivity


def test_one_patient_moves_the_released_counts_by_at_most_the_stated_sensitivity():
    """The DP release's L2 sensitivity, checked on the patients that move it most: every condition in
    both eyes, the worst DR grade (DME and laser scars then count in both eyes), extreme anatomy."""
    everything = tuple((c, 1.0) for c in ("amd", "glaucoma", "pathological_myopia", "rvo",
                                          "hypertensive_retinopathy", "dme", "laser_scars"))
    extreme = CohortSpec(seed=4, hospital="riverside", diabetic_rate=1.0, dr_grades=(0, 0, 0, 0, 1.0),
                         prevalence=everything, anatomy=(("pigmentation", 1.0, 0.0), ("disc_radius", 0.16, 0.0),
                                                         ("cup_to_disc", 0.6, 0.0)))
    base = [patient(CohortSpec(seed=3, hospital="riverside,summit"), i) for i in range(200)]
    worst = 0.0
    for who in [patient(extreme, i) for i in range(20)] + base[:20]:
        before, sensitivity = _release_vector(base, ["riverside", "summit"])
        after, _ = _release_vector([*base, who], ["riverside", "summit"])
        worst = max(worst, float(np.linalg.norm(after - before)))
    assert worst <= sensitivity
    assert worst > 0.6 * sensitivity  # the bound is not loose by construction: the extreme patients come close


def test_dp_statistics_are_noised_from_the_os_csprng_say_so_and_stay_usable():
    cohort = [patient(CohortSpec(seed=1, hospital="riverside,summit"), i) for i in range(3000)]
    exact = estimate(cohort)
    assert exact.privacy is None
    consortium = ["riverside", "summit", "northgate"]  # public; northgate brought no patient this time
    a, b = estimate(cohort, hospitals=consortium, epsilon=1.0), estimate(cohort, hospitals=consortium, epsilon=1.0)
    assert [h for h, _ in a.hospitals] == sorted(consortium)  # its share is noise, but it never vanishes
    assert a.prevalence != b.prevalence  # fresh noise each release
    assert a.privacy["unit"] == "patient" and a.privacy["neighbouring"] == "add/remove-one patient"
    assert a.privacy["noise_source"] == "os-csprng" and a.privacy["epsilon"] == 1.0
    seeded = [estimate(cohort, hospitals=consortium, epsilon=1.0, noise_seed=5) for _ in range(2)]
    assert seeded[0] == seeded[1] and seeded[0].privacy["noise_source"] == "insecure-test-seed"
    # 3,000 patients at epsilon 1: per-patient rates within a few points of the exact ones; the rates among
    # the few eyes of grade >= 2 or 3 (DME, laser scars) are noisier, but valid
    for (name, p), (_, q) in zip(exact.prevalence, a.prevalence, strict=True):
        assert abs(p - q) < 0.06 or name in ("dme", "laser_scars"), name
        assert 0 <= q <= 1
    assert abs(sum(a.dr_grades) - 1) < 1e-6 and all(x >= 0 for x in a.dr_grades)
    synthetic_spec(a, seed=2, size=64)  # usable as is
    with pytest.raises(FedclipError, match="epsilon must be > 0"):
        estimate(cohort, hospitals=consortium, epsilon=0.0)
    with pytest.raises(FedclipError, match="needs the consortium's hospital list"):
        estimate(cohort, epsilon=1.0)
    with pytest.raises(FedclipError, match="riverside are not in the consortium's list"):
        estimate(cohort, hospitals=["summit"])
