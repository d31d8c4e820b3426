"""English clinical captions built from labels: varied wording and order, deterministic per sample.

The wording comes from the taxonomy's phrase sets; this module only arranges them. Pass the same
seeded generator and the same labels and you get the same caption, on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedclip.synth.taxonomy import (
    CONDITIONS,
    DR_GRADE_FINDINGS,
    DR_GRADE_PHRASES,
    QUALITY_ISSUES,
)

_MODALITY = ("colour fundus photograph", "fundus photograph", "retinal photograph", "fundus image",
             "colour retinal image")
_NORMAL = ("a normal fundus", "no abnormality", "a healthy retina", "no pathological findings")
_TEMPLATES = (
    "{Modality} of the {eye} showing {diagnoses}.{findings}{cdr}{quality}",
    "{Eye}, {modality}: {diagnoses}.{findings}{cdr}{quality}",
    "{Modality} ({eye}).{findings} Impression: {diagnoses}.{cdr}{quality}",
    "{Diagnoses} in the {eye} on this {modality}.{findings}{cdr}{quality}",
)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(
    labels: Mapping[str, int], meta: Mapping[str, Any], rng: np.random.Generator,
    diabetic: bool = True, cup_to_disc: float | None = None,
) -> str:
    """Describe one image from the labels it has (unknown labels are simply not mentioned).

    `diabetic` decides whether a grade-0 eye mentions DR at all.
    """
    grade = int(labels.get("dr_grade", 0))
    diagnoses: list[str] = []
    findings: list[str] = []
    if "dr_grade" not in labels and labels.get("dr"):
        diagnoses.append(_pick(rng, ("diabetic retinopathy", "signs of diabetic retinopathy")))
    elif grade > 0 or (diabetic and "dr_grade" in labels and rng.random() < 0.5):
        diagnoses.append(_pick(rng, DR_GRADE_PHRASES[grade]))
    if grade > 0:
        pool = list(DR_GRADE_FINDINGS[grade])
        for i in rng.permutation(len(pool))[: int(rng.integers(1, 3))]:
            findings.append(pool[int(i)])
    for cond in CONDITIONS:
        if labels.get(cond.name):
            diagnoses.append(_pick(rng, cond.phrases))
            findings.append(_pick(rng, cond.findings))
    if not diagnoses:
        diagnoses.append(_pick(rng, _NORMAL))
    order = rng.permutation(len(diagnoses))
    diagnoses = [diagnoses[int(i)] for i in order]
    findings = [findings[int(i)] for i in rng.permutation(len(findings))]

    issues = [name for name in QUALITY_ISSUES if labels.get(name)]
    quality = ""
    if issues:
        quality = " " + " ".join(_pick(rng, QUALITY_ISSUES[n]).capitalize() + "." for n in issues)
    if not labels.get("readable", 1):
        quality += " " + _pick(rng, ("The image is ungradable.", "Image quality is insufficient for grading."))

    findings_text = ""
    if findings:
        lead = _pick(rng, ("There are", "Visible are", "Findings include", "Note"))
        findings_text = f" {lead} {_join(findings)}."
    cdr = ""
    if cup_to_disc is not None and rng.random() < 0.35:
        cdr = f" Cup-to-disc ratio about {cup_to_disc:.1f}."

    modality = _pick(rng, _MODALITY)
    eye = f"{meta['eye']} eye" if meta.get("eye") in ("right", "left") else "retina"
    text = _pick(rng, _TEMPLATES).format(
        modality=modality, Modality=modality.capitalize(), eye=eye, Eye=eye.capitalize(),
        diagnoses=_join(diagnoses), Diagnoses=_join(diagnoses)[:1].upper() + _join(diagnoses)[1:],
        findings=findings_text, cdr=cdr, quality=quality,
    )
    return " ".join(text.split())
