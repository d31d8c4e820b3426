import numpy as np
import pytest

from fedclip.errors import FedclipError
from fedclip.synth import CohortSpec, patient
from fedclip.synth.estimate import estimate, synthetic_spec


def test_estimate_then_sample_matches_statistics_with_new_individuals():
    cohort_spec = CohortSpec(seed=1, size=64, hospital="riverside,summit")
    cohort = [patient(cohort_spec, i) for i in range(1500)]
    stats = estimate(cohort)
    assert dict(stats.hospitals) == pytest.approx({"riverside": 0.5, "summit": 0.5}, abs=0.05)
    spec = synthetic_spec(stats, seed=2, size=64)
    synthetic = [patient(spec, i) for i in range(1500)]
    again = estimate(synthetic)
    for (name, p), (_, q) in zip(stats.prevalence, again.prevalence, strict=True):
        assert abs(p - q) < 0.05, name
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
