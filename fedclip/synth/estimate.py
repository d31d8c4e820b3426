"""The Med-AIGC step: learn a cohort's statistics, then sample *new* patients from them.

VisionCLIP's synthetic corpus comes from a generator trained on real patients. Here the "real"
patients are a private cohort of the generator, and the generative model is explicit: label
prevalences, the diabetic-retinopathy grade distribution, and anatomy (pigmentation, optic-disc
size, cup-to-disc ratio) are estimated from the cohort, then a fresh seed draws new individuals
from them. Nothing else of the cohort (vessel trees, lesion positions, identities) passes through —
which is exactly the claim the privacy audits test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedclip.errors import FedclipError
from fedclip.synth.cohort import CohortSpec, Patient
from fedclip.synth.profiles import profile
from fedclip.synth.taxonomy import CONDITIONS, condition


@dataclass(frozen=True)
class CohortStatistics:
    n_patients: int
    hospitals: tuple[tuple[str, float], ...]
    prevalence: tuple[tuple[str, float], ...]  # per patient (either eye); DME / laser: given eligible DR
    dr_grades: tuple[float, ...]  # worse-eye grade distribution over all patients
    anatomy: tuple[tuple[str, float, float], ...]  # (name, mean, std)


def estimate(patients: Sequence[Patient]) -> CohortStatistics:
    """Statistics of a cohort, from what a data custodian can measure on each patient."""
    if len(patients) < 2:
        raise FedclipError("estimating a cohort's statistics needs at least 2 patients")
    n = len(patients)
    hospitals = Counter(p.hospital for p in patients)
    prevalence = []
    for c in CONDITIONS:
        if c.follows_dr_grade is not None:  # a rate among eyes of a high enough grade
            eyes = [conds for p in patients for g, conds in zip(p.dr_grade, p.conditions, strict=True)
                    if g >= c.follows_dr_grade]
            eligible, hits = eyes, sum(1 for conds in eyes if c.name in conds)
        else:
            eligible = list(patients)
            hits = sum(1 for p in patients if c.name in p.conditions[0] | p.conditions[1])
        prevalence.append((c.name, hits / len(eligible) if eligible else 0.0))
    worse = np.bincount([max(p.dr_grade) for p in patients], minlength=5) / n
    healthy_eyes = [a for p in patients for a, conds in zip(p.anatomy, p.conditions, strict=True)
                    if "glaucoma" not in conds]
    traits = {
        "pigmentation": [a.pigmentation for p in patients for a in p.anatomy],
        "disc_radius": [a.disc_radius for p in patients for a in p.anatomy],
        "cup_to_disc": [a.cup_to_disc for a in healthy_eyes] or [0.3],
    }
    return CohortStatistics(
        n, tuple(sorted((h, c / n) for h, c in hospitals.items())), tuple(prevalence),
        tuple(float(x) for x in worse),
        tuple((k, float(np.mean(v)), float(np.std(v))) for k, v in traits.items()),
    )


def synthetic_spec(stats: CohortStatistics, seed: int, size: int = 224, visits: int = 2) -> CohortSpec:
    """A generator spec that draws new patients from the learned statistics.

    The cohort's per-hospital prevalence multipliers are already inside the estimates, so the
    synthetic patients get them once (the spec's prevalences are divided by the hospital mix's mean
    multiplier). Every synthetic patient is "diabetic" with the learned worse-eye grade distribution
    (grade 0 included): a grade-0 eye of a non-diabetic and of a diabetic look the same.
    """
    hospitals = ",".join(h for h, _ in stats.hospitals)
    prevalence = []
    for name, p in stats.prevalence:
        mult = sum(w * profile(h).prevalence_scale.get(name, 1.0) for h, w in stats.hospitals)
        prevalence.append((name, float(min(1.0, p / mult)) if condition(name).follows_dr_grade is None else p))
    return CohortSpec(seed=seed, size=size, hospital=hospitals, visits=visits, prevalence=tuple(prevalence),
                      diabetic_rate=1.0, dr_grades=stats.dr_grades, anatomy=stats.anatomy)
