"""A labelled contact sheet, one tile per condition, so a person can judge realism at a glance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fedclip.errors import FedclipError
from fedclip.synth.cohort import CohortSpec, Sample, sample
from fedclip.synth.taxonomy import CONDITIONS, QUALITY_NAMES

_NO_DISEASE = tuple((c.name, 0.0) for c in CONDITIONS)


def _tiles(base: CohortSpec) -> list[tuple[str, CohortSpec, str, int]]:
    """(title, spec that makes the finding common, label to look for, value wanted)."""
    healthy = replace(base, diabetic_rate=0.0, prevalence=_NO_DISEASE)
    out = [("normal", healthy, "dr_grade", 0)]
    for g in range(1, 5):
        grades = tuple(1.0 if i == g else 0.0 for i in range(5))
        out.append((f"DR grade {g}", replace(healthy, diabetic_rate=1.0, dr_grades=grades), "dr_grade", g))
    for c in CONDITIONS:
        prevalence = tuple((n, 1.0 if n == c.name else p) for n, p in _NO_DISEASE)
        spec = replace(healthy, prevalence=prevalence)
        if c.follows_dr_grade is not None:  # follows from DR: ask for DR severe enough to carry it
            spec = replace(spec, diabetic_rate=1.0, dr_grades=(0, 0, 0, 1.0, 0))
        out.append((c.name.replace("_", " "), spec, c.name, 1))
    for q in QUALITY_NAMES:
        out.append((q.replace("_", " "), replace(healthy, hospital="lakeshore"), q, 1))
    return out


def find(spec: CohortSpec, label: str, value: int, limit: int = 4000) -> Sample:
    """The first sample of `spec` whose `label` equals `value` (searching at most `limit` indices)."""
    for i in range(limit):
        s = sample(spec, i)
        if s.labels.get(label) == value and (label == "dr_grade" or value == 0 or s.labels["readable"]
                                              or label in QUALITY_NAMES):
            return s
    raise FedclipError(f"no sample with {label}={value} in the first {limit} images of {spec}")


def contact_sheet(out: str | Path, size: int = 224, seed: int = 0, columns: int = 6) -> Path:
    """Write the sheet as a PNG; each tile is titled with the condition it shows."""
    base = CohortSpec(seed=seed, size=size, visits=1)
    tiles = _tiles(base)
    title_h = max(14, size // 12)
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * size, rows * (size + title_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(10, title_h - 4))
    for k, (title, spec, label, value) in enumerate(tiles):
        s = find(spec, label, value)
        x, y = (k % columns) * size, (k // columns) * (size + title_h)
        draw.text((x + 4, y + 1), title, fill=(0, 0, 0), font=font)
        sheet.paste(Image.fromarray(s.image), (x, y + title_h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
