"""Patients, cohorts and the pure function `sample(spec, index)`.

Index layout: consecutive indices belong to one patient (right eye visits, then left eye visits),
so `index // spec.images_per_patient` is the patient. A patient's identity (vessel tree, disc,
pigmentation, systemic disease) is a function of `(spec.seed, patient)` alone; each eye is rendered
once and reused across visits, which differ by framing, exposure and image quality. Every random
draw comes from a generator seeded by `SeedSequence` entropy that names what it is for, so the same
spec and index give byte-identical images on any run, in any process, in any order.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from fedclip.errors import FedclipError
from fedclip.synth import quality
from fedclip.synth.anatomy import EyeAnatomy, render_eye
from fedclip.synth.canvas import LesionCanvas
from fedclip.synth.captions import make_caption
from fedclip.synth.lesions import draw_dr
from fedclip.synth.profiles import PROFILES, apply_camera, apply_optics, profile
from fedclip.synth.taxonomy import CONDITION_NAMES, CONDITIONS, empty_labels, icdr_grade

ANATOMY_FIELDS = {"pigmentation": (0.0, 1.0), "disc_radius": (0.08, 0.16), "cup_to_disc": (0.1, 0.6)}
"""Anatomy a cohort spec can give a distribution for, with the range values are clipped to."""

DR_GRADE_DISTRIBUTION = (0.45, 0.22, 0.18, 0.08, 0.07)
FOLLOW_DR = tuple(c for c in CONDITIONS if c.follows_dr_grade is not None)
"""Grade of a diabetic patient's worse eye; the other eye is within one grade of it."""

# Purposes mixed into the seed so that unrelated draws never share a random stream.
_PATIENT, _EYE, _LESIONS, _VISIT, _CAPTION = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class CohortSpec:
    """Everything that determines a generated cohort; hashable, so it can key caches.

    `hospital` is one profile name, several separated by commas (patients spread evenly over them),
    or None for every profile. `prevalence` overrides a condition's base prevalence (before the
    hospital's multiplier); for the conditions that follow from DR (DME, laser scars) it is the
    probability given a DR grade that allows them. `diabetic_rate` and `dr_grades` override the
    hospital's diabetes statistics, and `anatomy` the distribution of (name, mean, std) for
    `pigmentation`, `disc_radius` and `cup_to_disc`: together they are what `synth.estimate` learns
    from a cohort.
    """

    seed: int = 0
    size: int = 224
    hospital: str | None = None
    eyes: int = 2
    visits: int = 2
    prevalence: tuple[tuple[str, float], ...] = ()
    diabetic_rate: float | None = None
    dr_grades: tuple[float, ...] | None = None
    anatomy: tuple[tuple[str, float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.size < 32:
            raise FedclipError(f"image size {self.size} is too small; use --size 32 or more (64 for CPU runs)")
        if self.eyes not in (1, 2) or self.visits < 1:
            raise FedclipError("a cohort needs eyes in {1, 2} and at least one visit per eye")
        for name in self.hospitals:
            profile(name)
        for name, _, std in self.anatomy:
            if name not in ANATOMY_FIELDS or std < 0:
                raise FedclipError(f"anatomy entry {name!r} must be one of {ANATOMY_FIELDS} with std >= 0")
        for name, p in self.prevalence:
            if name not in CONDITION_NAMES:
                raise FedclipError(f"prevalence given for unknown condition {name!r}; known: {CONDITION_NAMES}")
            if not 0.0 <= p <= 1.0:
                raise FedclipError(f"prevalence of {name} must be within [0, 1], got {p}")
        if self.dr_grades is not None and (len(self.dr_grades) != 5 or abs(sum(self.dr_grades) - 1) > 1e-6):
            raise FedclipError("dr_grades must be 5 probabilities (grades 0..4) that sum to 1")

    @property
    def hospitals(self) -> tuple[str, ...]:
        if self.hospital is None:
            return ()
        return tuple(h.strip() for h in self.hospital.split(",") if h.strip())

    @property
    def images_per_patient(self) -> int:
        return self.eyes * self.visits


@dataclass(frozen=True)
class Patient:
    """A persistent individual: what every image of them shares."""

    index: int
    patient_id: str
    hospital: str
    diabetic: bool
    dr_grade: tuple[int, int]  # right, left
    conditions: tuple[frozenset[str], frozenset[str]]  # per eye
    anatomy: tuple[EyeAnatomy, EyeAnatomy]


@dataclass
class Sample:
    image: np.ndarray  # H x W x 3 uint8
    caption: str
    labels: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


@lru_cache(maxsize=4096)
def patient(spec: CohortSpec, index: int) -> Patient:
    """The `index`-th patient of a cohort."""
    rng = _rng(spec.seed, _PATIENT, index)
    names = spec.hospitals or tuple(sorted(PROFILES))
    hospital = names[int(rng.integers(len(names)))] if len(names) > 1 else names[0]
    prof = profile(hospital)
    overrides = dict(spec.prevalence)

    diabetic_rate = prof.diabetic_rate if spec.diabetic_rate is None else spec.diabetic_rate
    diabetic = bool(rng.random() < diabetic_rate)
    worse = int(rng.choice(5, p=spec.dr_grades or DR_GRADE_DISTRIBUTION)) if diabetic else 0
    other = max(0, worse - int(rng.random() < 0.4)) if diabetic else 0
    grades = (worse, other) if rng.random() < 0.5 else (other, worse)

    eye_conditions: tuple[set[str], set[str]] = (set(), set())
    for cond in CONDITIONS:
        if cond.follows_dr_grade is not None:
            continue  # a consequence of DR, drawn below
        p = overrides.get(cond.name, cond.prevalence) * prof.prevalence_scale.get(cond.name, 1.0)
        if rng.random() < min(1.0, p):
            bilateral = cond.bilateral >= 1.0 or (cond.bilateral > 0 and rng.random() < cond.bilateral)
            eyes = (0, 1) if bilateral else (int(rng.integers(2)),)
            for e in eyes:
                eye_conditions[e].add(cond.name)
    for e in (0, 1):
        for cond in FOLLOW_DR:
            if grades[e] >= cond.follows_dr_grade and rng.random() < overrides.get(cond.name, cond.prevalence):
                eye_conditions[e].add(cond.name)

    traits = {"pigmentation": float(rng.beta(2.0, 2.5)), "disc_radius": float(rng.uniform(0.105, 0.135)),
              "cup_to_disc": float(rng.uniform(0.2, 0.45))}
    for name, mean, std in spec.anatomy:  # learned statistics replace the built-in priors
        traits[name] = float(np.clip(rng.normal(mean, std), *ANATOMY_FIELDS[name]))
    pigmentation, disc_radius, cdr = traits["pigmentation"], traits["disc_radius"], traits["cup_to_disc"]
    anatomy = []
    for e in (0, 1):
        conds = eye_conditions[e]
        glaucoma = "glaucoma" in conds
        myopia = "pathological_myopia" in conds
        hyper = "hypertensive_retinopathy" in conds
        anatomy.append(EyeAnatomy(
            right_eye=(e == 0),
            pigmentation=float(np.clip(pigmentation + rng.normal(0, 0.03), 0, 1)),
            disc_radius=disc_radius * float(rng.uniform(0.97, 1.03)),
            disc_offset=(float(rng.normal(0, 0.02)), float(rng.normal(0, 0.03))),
            cup_to_disc=float(rng.uniform(0.68, 0.88)) if glaucoma else cdr + float(rng.normal(0, 0.02)),
            cup_elongation=float(rng.uniform(1.15, 1.35)) if glaucoma else float(rng.uniform(1.0, 1.08)),
            tessellation=float(rng.uniform(0.6, 1.0)) if myopia else float(rng.uniform(0, 0.15)),
            peripapillary_atrophy=float(rng.uniform(0.4, 1.0)) if myopia else 0.0,
            artery_scale=float(rng.uniform(0.5, 0.65)) if hyper else float(rng.uniform(0.92, 1.05)),
            av_nicking=int(rng.integers(2, 6)) if hyper else 0,
            vessel_seed=int(rng.integers(2**31)),
            texture_index=int(rng.integers(1 << 16)),
        ))
    return Patient(index, f"{hospital[:3].upper()}{spec.seed}-{index:07d}", hospital, diabetic, grades,
                   (frozenset(eye_conditions[0]), frozenset(eye_conditions[1])), (anatomy[0], anatomy[1]))


class _EyeCache:
    """A small per-process LRU of rendered eyes (anatomy + lesions): visits of one eye reuse it."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self.items: OrderedDict[tuple, tuple[Image.Image, dict[str, int]]] = OrderedDict()

    def get(self, key: tuple, make) -> tuple[Image.Image, dict[str, int]]:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return value


_EYES = _EyeCache()


def _render_eye_with_lesions(spec: CohortSpec, pat: Patient, eye: int) -> tuple[Image.Image, dict[str, int]]:
    """An eye's persistent appearance and its lesion-derived labels."""
    image, layout = render_eye(pat.anatomy[eye], spec.size)
    canvas = LesionCanvas(layout)
    rng = _rng(spec.seed, _LESIONS, pat.index, eye)
    conds = pat.conditions[eye]
    draw_dr(canvas, rng, pat.dr_grade[eye])
    for cond in CONDITIONS:
        if cond.name in conds and cond.render is not None:
            cond.render(canvas, rng)
    image = apply_optics(canvas.composite_onto(image), profile(pat.hospital))
    c = canvas.counts
    grade = icdr_grade(c["microaneurysm"], tuple(c[f"haemorrhage_q{q}"] for q in range(4)),
                       c["exudate"], c["cotton_wool"], c["neovascularisation"])
    labels = {"dr_grade": grade, "dr": int(grade > 0)}
    for cond in CONDITIONS:
        labels[cond.name] = int(cond.name in conds)
    return image, labels


def sample(spec: CohortSpec, index: int) -> Sample:
    """The `index`-th image of the cohort: pure and deterministic."""
    if index < 0:
        raise FedclipError(f"sample index must be non-negative, got {index}")
    ipp = spec.images_per_patient
    pat = patient(spec, index // ipp)
    eye, visit = divmod(index % ipp, spec.visits)
    prof = profile(pat.hospital)
    eye_image, eye_labels = _EYES.get(
        (spec, pat.index, eye), lambda: _render_eye_with_lesions(spec, pat, eye))

    rng = _rng(spec.seed, _VISIT, index)
    issues = quality.sample_issues(rng, prof.degrade_rate)
    # Re-framing between visits; nearest-neighbour keeps it ~15x cheaper than bilinear, and the
    # camera's optics and compression below smooth what little aliasing a few degrees leave.
    angle = float(rng.uniform(-4, 4))
    shift = tuple(int(v) for v in rng.uniform(-0.025, 0.025, 2) * spec.size)
    image = eye_image.rotate(angle, resample=Image.NEAREST, translate=shift)
    image = quality.degrade(image, issues, rng)
    exposure = quality.exposure_factor(issues) * float(rng.uniform(0.94, 1.06))
    noise_shift = (int(rng.integers(spec.size)), int(rng.integers(spec.size)))
    image = apply_camera(image, prof, exposure, noise_shift)

    labels = empty_labels()
    labels.update(eye_labels)
    for name in issues:
        labels[name] = 1
    labels["readable"] = int(quality.readable(issues))
    meta = {
        "patient_id": pat.patient_id, "eye": "right" if eye == 0 else "left", "visit": visit,
        "hospital": pat.hospital, "camera": prof.camera, "seed": spec.seed, "index": index,
    }
    caption = make_caption(labels, meta, _rng(spec.seed, _CAPTION, index), diabetic=pat.diabetic,
                           cup_to_disc=pat.anatomy[eye].cup_to_disc)
    return Sample(np.asarray(image if image.mode == "RGB" else image.convert("RGB")), caption, labels, meta)
