"""The label taxonomy: the one place that lists every condition, what draws it and what describes it.

It follows SynFundus-1M: a diabetic-retinopathy grade 0-4 (ICDR), binary disease labels and
image-quality labels. Adding a lesion condition means adding one `Condition` here (with its renderer from
`lesions`) and nothing else: captions, metadata columns, the cohort's draw, the Med-AIGC estimate, the
public loaders' free-text matching and the preview sheet read this list. (An `anatomical` condition also
needs its change of anatomy in `cohort`, the anatomy renderer's one place.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedclip.errors import DataError
from fedclip.synth import lesions


@dataclass(frozen=True)
class Condition:
    """A binary disease label.

    `render` draws the condition's lesions onto an eye's lesion layers; `anatomical` conditions change
    the eye's anatomy (cup, choroid, vessels) instead and are drawn by the anatomy renderer.
    `phrases` are interchangeable caption wordings; `findings` are the visible signs a caption may
    list; `descriptions` are expert knowledge used for zero-shot prompts (FLAIR-style); `keywords` are
    further words that name it in public datasets' free-text diagnoses (ODIR, FLAIR).
    `prevalence` is per patient; `bilateral` the chance that a patient's condition is in both eyes. A
    condition that `follows_dr_grade` g is drawn per eye with DR grade >= g instead, at rate `prevalence`.
    """

    name: str
    phrases: tuple[str, ...]
    findings: tuple[str, ...]
    descriptions: tuple[str, ...]
    prevalence: float
    render: Callable[..., None] | None = None
    anatomical: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)
    keywords: tuple[str, ...] = field(default_factory=tuple)
    bilateral: float = 0.0
    follows_dr_grade: int | None = None


DR_GRADE_PHRASES: Mapping[int, tuple[str, ...]] = {
    0: ("no diabetic retinopathy", "no signs of diabetic retinopathy", "no apparent retinopathy"),
    1: ("mild non-proliferative diabetic retinopathy", "mild NPDR", "minimal diabetic retinopathy"),
    2: ("moderate non-proliferative diabetic retinopathy", "moderate NPDR",
        "moderate diabetic retinopathy"),
    3: ("severe non-proliferative diabetic retinopathy", "severe NPDR", "severe diabetic retinopathy"),
    4: ("proliferative diabetic retinopathy", "PDR", "proliferative retinopathy"),
}

DR_GRADE_FINDINGS: Mapping[int, tuple[str, ...]] = {
    0: (),
    1: ("microaneurysms",),
    2: ("dot and blot haemorrhages", "hard exudates", "microaneurysms"),
    3: ("haemorrhages in all four quadrants", "cotton wool spots", "extensive intraretinal haemorrhages"),
    4: ("neovascularisation", "new vessels", "preretinal haemorrhage"),
}

DR_GRADE_DESCRIPTIONS: Mapping[int, tuple[str, ...]] = {
    0: ("healthy retina without lesions", "normal vessels and no haemorrhages"),
    1: ("few microaneurysms only", "small red dots"),
    2: ("haemorrhages and hard exudates", "more than microaneurysms only"),
    3: ("many haemorrhages in every quadrant", "cotton wool spots and venous changes"),
    4: ("new abnormal vessels", "neovascularisation of the disc or elsewhere"),
}

CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "amd", ("age-related macular degeneration", "AMD", "macular degeneration"),
        ("drusen at the macula", "macular pigment changes", "yellow deposits around the fovea"),
        ("yellow drusen deposits in the macula", "pigment mottling and atrophy at the macula"),
        0.08, render=lesions.draw_amd, keywords=("macular degeneration", "drusen"), bilateral=0.6,
    ),
    Condition(
        "glaucoma", ("glaucoma", "glaucomatous optic neuropathy", "suspected glaucoma"),
        ("an enlarged optic cup", "thinning of the neuroretinal rim", "increased cup-to-disc ratio"),
        ("abnormal size of the optic cup", "large cup-to-disc ratio", "thin neuroretinal rim"),
        0.08, anatomical=True, bilateral=1.0,
    ),
    Condition(
        "pathological_myopia", ("pathological myopia", "high myopia", "myopic maculopathy"),
        ("a tessellated fundus", "peripapillary atrophy", "a tilted optic disc"),
        ("tessellated fundus with visible choroidal vessels", "peripapillary atrophy around the disc"),
        0.07, anatomical=True, aliases=("pm", "myopia"), keywords=("myopi",), bilateral=1.0,
    ),
    Condition(
        "rvo", ("retinal vein occlusion", "branch retinal vein occlusion", "RVO"),
        ("flame haemorrhages along one vein", "sectoral haemorrhages", "a dilated tortuous vein"),
        ("haemorrhages in one sector following a vein", "flame-shaped haemorrhages along a vein"),
        0.04, render=lesions.draw_rvo, aliases=("brvo", "crvo"), keywords=("vein occlusion",),
    ),
    Condition(
        "hypertensive_retinopathy", ("hypertensive retinopathy", "hypertensive changes", "HR"),
        ("arteriolar narrowing", "arteriovenous nicking", "narrowed arteries"),
        ("narrow arteries and arteriovenous nicking", "thin straight arterioles"),
        0.06, anatomical=True, aliases=("hr", "hypertension"), bilateral=1.0,
    ),
    Condition(
        "dme", ("diabetic macular oedema", "macular oedema", "DME"),
        ("hard exudates near the fovea", "a circinate ring of exudates at the macula"),
        ("exudates close to the fovea", "macular thickening with lipid exudates"),
        0.35, render=lesions.draw_dme, aliases=("me", "macular_edema", "risk_of_macular_edema"),
        keywords=("macular edema", "macular oedema"), follows_dr_grade=2,
    ),
    Condition(
        "laser_scars", ("laser photocoagulation scars", "panretinal photocoagulation", "laser scars"),
        ("laser scars in the periphery", "pigmented photocoagulation spots"),
        ("rows of round pigmented laser spots", "scars from panretinal photocoagulation"),
        0.4, render=lesions.draw_laser_scars, aliases=("laser", "prp"), keywords=("laser",), follows_dr_grade=3,
    ),
)
"""DME and laser scars follow from DR: their prevalence is a rate among eyes of a high enough grade."""

QUALITY_ISSUES: Mapping[str, tuple[str, ...]] = {
    "blur": ("the image is blurred", "the photograph is out of focus", "there is defocus blur"),
    "uneven_illumination": ("illumination is uneven", "one side of the image is darker",
                            "there is uneven lighting"),
    "haze": ("the image is hazy", "media opacity gives a hazy view", "there is a haze over the fundus"),
    "overexposure": ("the image is overexposed", "the photograph is too bright"),
    "underexposure": ("the image is underexposed", "the photograph is too dark"),
    "artefact": ("there are artefacts", "dust spots and an eyelash shadow are visible",
                 "the image has artefacts"),
}

CONDITION_NAMES: tuple[str, ...] = tuple(c.name for c in CONDITIONS)
QUALITY_NAMES: tuple[str, ...] = tuple(QUALITY_ISSUES)
LABEL_COLUMNS: tuple[str, ...] = ("dr_grade", "dr", *CONDITION_NAMES, *QUALITY_NAMES, "readable")
"""Label columns of a dataset dir's metadata.csv, in order. `dr` (any diabetic retinopathy) follows from
`dr_grade` where the grade is known; some public sets (FIVES) only say "DR" without a grade."""

SEVERE_HAEMORRHAGES_PER_QUADRANT = 6
"""Stand-in for ICDR's "> 20 intraretinal haemorrhages in each of 4 quadrants": the renderer draws a
sample of the lesions a real eye has, so the count that makes an eye severe is scaled down with it."""


def condition(name: str) -> Condition:
    """Look a condition up by name or alias; unknown names are a user error."""
    key = name.strip().lower()
    for c in CONDITIONS:
        if key == c.name or key in c.aliases:
            return c
    raise DataError(f"unknown condition {name!r}; known conditions: {', '.join(CONDITION_NAMES)}")


def icdr_grade(
    microaneurysms: int,
    haemorrhages_per_quadrant: tuple[int, int, int, int],
    exudates: int,
    cotton_wool_spots: int,
    neovascularisation: int,
) -> int:
    """ICDR severity from the lesions actually drawn, so a label can never disagree with its image."""
    if neovascularisation > 0:
        return 4
    if min(haemorrhages_per_quadrant) >= SEVERE_HAEMORRHAGES_PER_QUADRANT:
        return 3
    if sum(haemorrhages_per_quadrant) > 0 or exudates > 0 or cotton_wool_spots > 0:
        return 2
    if microaneurysms > 0:
        return 1
    return 0


def empty_labels() -> dict[str, int]:
    """Every label column at its healthy, readable value."""
    labels = {name: 0 for name in LABEL_COLUMNS}
    labels["readable"] = 1
    return labels


def validate_labels(labels: Mapping[str, Any], where: str) -> dict[str, int]:
    """Check a label dict against the taxonomy; `where` names the file/row for the error message."""
    out = empty_labels()
    for key, value in labels.items():
        if key not in out:
            raise DataError(f"{where}: unknown label {key!r}; expected one of {', '.join(LABEL_COLUMNS)}")
        try:
            v = int(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: label {key}={value!r} is not an integer; fix the value") from None
        allowed = range(5) if key == "dr_grade" else range(2)
        if v not in allowed:
            raise DataError(
                f"{where}: label {key}={value!r} out of range {allowed.start}..{allowed.stop - 1}; fix the value"
            )
        out[key] = v
    return out
