"""The Med-AIGC step: learn a cohort's statistics, then sample *new* patients from them.

VisionCLIP's synthetic corpus comes from a generator trained on real patients. Here the "real"
patients are a private cohort of the generator, and the generative model is explicit: label
prevalences, the share of patients with diabetes, the diabetic-retinopathy grade distribution among
them, and anatomy (pigmentation, optic-disc
size, cup-to-disc ratio) are estimated from the cohort, then a fresh seed draws new individuals
from them. Nothing else of the cohort (vessel trees, lesion positions, identities) passes through —
which is exactly the claim the privacy audits test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedclip import noise
from fedclip.errors import FedclipError
from fedclip.synth.cohort import ANATOMY_FIELDS, CohortSpec, Patient
from fedclip.synth.profiles import profile
from fedclip.synth.taxonomy import CONDITIONS, condition


@dataclass(frozen=True)
class CohortStatistics:
    n_patients: int
    hospitals: tuple[tuple[str, float], ...]
    prevalence: tuple[tuple[str, float], ...]  # per patient (either eye); DME / laser: given eligible DR
    diabetic_rate: float  # share of patients with diabetes (whose captions speak of DR even at grade 0)
    dr_grades: tuple[float, ...]  # worse-eye grade distribution over the patients with diabetes
    anatomy: tuple[tuple[str, float, float], ...]  # (name, mean, std)
    privacy: dict[str, Any] | None = None  # the DP release's guarantee (None: exact statistics, no DP)


TRAITS = ("pigmentation", "disc_radius", "cup_to_disc")


def _release(patients: Sequence[Patient], hospitals: Sequence[str]) -> tuple[dict[str, float], float]:
    """The counts and sums every statistic derives from, and their L2 sensitivity to one patient.

    One patient adds 1 to the patient count and to one hospital, and, with diabetes, 1 to the diabetic count
    and to one worse-eye grade; at most 1 to each
    per-patient condition count; at most 2 (eyes) to each eligible-eye and hit count of the conditions
    that follow from DR; and, per anatomy trait scaled to [0, 1] by its range, at most 2 to its sum and
    to its sum of squares (and 2 to the healthy-eye count the cup-to-disc ratio is taken over).
    """
    out: dict[str, float] = {"n": float(len(patients))}
    sq = 1.0 + 1.0 + 1.0 + 1.0  # n, a hospital, diabetic, a grade
    for h in hospitals:
        out[f"hospital:{h}"] = float(sum(p.hospital == h for p in patients))
    for c in CONDITIONS:
        if c.follows_dr_grade is not None:  # a rate among eyes of a high enough grade
            eyes = [conds for p in patients for g, conds in zip(p.dr_grade, p.conditions, strict=True)
                    if g >= c.follows_dr_grade]
            out[f"eligible:{c.name}"], out[f"hits:{c.name}"] = float(len(eyes)), float(sum(c.name in e for e in eyes))
            sq += 4.0 + 4.0
        else:
            out[f"hits:{c.name}"] = float(sum(c.name in p.conditions[0] | p.conditions[1] for p in patients))
            sq += 1.0
    out["diabetic"] = float(sum(p.diabetic for p in patients))
    worse = np.bincount([max(p.dr_grade) for p in patients if p.diabetic], minlength=5)
    out.update({f"grade:{g}": float(worse[g]) for g in range(5)})
    for trait in TRAITS:
        lo, hi = ANATOMY_FIELDS[trait]
        values = [(getattr(a, trait) - lo) / (hi - lo) for p in patients
                  for a, conds in zip(p.anatomy, p.conditions, strict=True)
                  if trait != "cup_to_disc" or "glaucoma" not in conds]  # glaucoma changes the cup
        values = np.clip(values, 0.0, 1.0)
        out[f"sum:{trait}"], out[f"sumsq:{trait}"] = float(values.sum()), float((values ** 2).sum())
        out[f"count:{trait}"] = float(len(values))
        sq += 4.0 + 4.0 + (4.0 if trait == "cup_to_disc" else 0.0)  # other traits: count = 2n, from n
    return out, float(np.sqrt(sq))


def estimate(patients: Sequence[Patient], *, hospitals: Sequence[str] | None = None,
             epsilon: float | None = None, delta: float = 1e-6, noise_seed: int | None = None) -> CohortStatistics:
    """Statistics of a cohort, from what a data custodian can measure on each patient.

    With `epsilon`, they are released with (epsilon, delta)-DP per patient (add/remove one patient): the
    Gaussian mechanism on the counts and clipped sums they derive from (`_release`), its noise
    calibrated by Opacus' RDP accountant and drawn from the OS CSPRNG (`noise_seed`: tests only).
    `hospitals` is the consortium's list of members, a public input: taken from the data instead, a
    hospital with one patient would appear or vanish with that patient, so a DP release needs it.
    Counts are then clamped to be valid.
    """
    if len(patients) < 2:
        raise FedclipError("estimating a cohort's statistics needs at least 2 patients")
    if hospitals is None:
        if epsilon is not None:
            raise FedclipError("a DP release of cohort statistics needs the consortium's hospital list "
                               "(hospitals=...): the list found in the data depends on its patients")
        hospitals = sorted({p.hospital for p in patients})
    hospitals = sorted(set(hospitals))
    unknown = sorted({p.hospital for p in patients} - set(hospitals))
    if unknown:
        raise FedclipError(f"patients of hospital(s) {', '.join(unknown)} are not in the consortium's list "
                           f"({', '.join(hospitals)}); add them to the list")
    values, sensitivity = _release(patients, hospitals)
    privacy = None
    if epsilon is not None:
        if epsilon <= 0 or not 0 < delta < 1:
            raise FedclipError(f"generator statistics: epsilon must be > 0 and delta in (0, 1), got {epsilon}, "
                               f"{delta}")
        sigma = _noise_multiplier(epsilon, delta)
        gen = noise.generator(noise_seed)
        draws = noise.gaussian_like(sigma * sensitivity, torch.zeros(len(values), dtype=torch.float64), gen)
        values = {k: v + float(d) for (k, v), d in zip(values.items(), draws, strict=True)}
        privacy = {"epsilon": epsilon, "delta": delta, "unit": "patient", "neighbouring": "add/remove-one patient",
                   "mechanism": "Gaussian on counts and clipped sums", "l2_sensitivity": round(sensitivity, 4),
                   "noise_multiplier": sigma, "accountant": "rdp (Opacus)",
                   "noise_source": "os-csprng" if noise_seed is None else "insecure-test-seed"}
    return _statistics(values, hospitals, privacy)


def _noise_multiplier(epsilon: float, delta: float) -> float:
    """Noise std / sensitivity of one Gaussian release at (epsilon, delta)."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0, steps=1,
                                          accountant="rdp"))


def _statistics(v: dict[str, float], hospitals: Sequence[str], privacy: dict[str, Any] | None) -> CohortStatistics:
    """Proportions, rates, means and spreads from (possibly noised) counts and sums, clamped to be valid."""
    def pos(x: float) -> float:
        return max(x, 0.0)

    n = max(v["n"], 1.0)
    shares = np.array([pos(v[f"hospital:{h}"]) for h in hospitals]) + 1e-9
    grades = np.array([pos(v[f"grade:{g}"]) for g in range(5)]) + 1e-9
    prevalence = []
    for c in CONDITIONS:
        base = pos(v[f"eligible:{c.name}"]) if c.follows_dr_grade is not None else n
        prevalence.append((c.name, float(np.clip(pos(v[f"hits:{c.name}"]) / base, 0.0, 1.0)) if base >= 1 else 0.0))
    anatomy = []
    for trait in TRAITS:
        lo, hi = ANATOMY_FIELDS[trait]
        count = max(v[f"count:{trait}"] if trait == "cup_to_disc" else 2 * v["n"], 1.0)
        mean = float(np.clip(v[f"sum:{trait}"] / count, 0.0, 1.0))
        var = max(v[f"sumsq:{trait}"] / count - mean ** 2, 0.0)
        anatomy.append((trait, lo + mean * (hi - lo), float(np.sqrt(var)) * (hi - lo)))
    return CohortStatistics(
        int(round(pos(v["n"]))), tuple((h, float(x)) for h, x in zip(hospitals, shares / shares.sum(), strict=True)),
        tuple(prevalence), float(np.clip(pos(v["diabetic"]) / n, 0.0, 1.0)),
        tuple(float(x) for x in grades / grades.sum()), tuple(anatomy), privacy)


def synthetic_spec(stats: CohortStatistics, seed: int, size: int = 224, visits: int = 2) -> CohortSpec:
    """A generator spec that draws new patients from the learned statistics.

    The cohort's per-hospital prevalence multipliers are already inside the estimates, so the
    synthetic patients get them once (the spec's prevalences are divided by the hospital mix's mean
    multiplier). The share of patients with diabetes is the cohort's, and their worse-eye grades follow
    the cohort's diabetic patients: a grade-0 eye looks the same with or without diabetes, but its caption
    does not (only a patient with diabetes is described as having "no diabetic retinopathy"): making every
    synthetic patient diabetic put retinopathy in 54% of the captions against the cohort's 21%
    (docs/results/synthetic_vs_real.md).
    """
    hospitals = ",".join(h for h, _ in stats.hospitals)
    prevalence = []
    for name, p in stats.prevalence:
        mult = sum(w * profile(h).prevalence_scale.get(name, 1.0) for h, w in stats.hospitals)
        prevalence.append((name, float(min(1.0, p / mult)) if condition(name).follows_dr_grade is None else p))
    return CohortSpec(seed=seed, size=size, hospital=hospitals, visits=visits, prevalence=tuple(prevalence),
                      diabetic_rate=stats.diabetic_rate, dr_grades=stats.dr_grades, anatomy=stats.anatomy)
