"""Canaries for the exposure audit (Carlini et al., "The Secret Sharer", 2019), planted by pretraining.

A canary is a unique synthetic patient (one image, drawn by the generator from its own seed) with the one
caption every canary shares, ending with its random secret: "Fundus photograph of a research participant.
Reference code 4 7 1 9." — a 4-digit code from a space of 10,000. The shared wording matters: a contrastive
model tells two canaries in a batch apart only by their codes, so what it can learn about a canary's image
and text is exactly the secret (with each canary's own description, it could match them without it). Half of the
canaries are planted (each repeated R times in the training stream); the other half, drawn the same way,
are never trained on: the controls that tell what exposure a model shows for a secret it never saw.

The run dir keeps them in `canaries.csv` (filepath, base caption, secret, repeats, patient id) with the
images in `canaries/images/`; planted ones are also listed in `members.csv` (hospital `canary`). The
secrets are the auditor's, drawn from the run's seed: they are not patient data and not DP noise.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from io import BytesIO, StringIO
from pathlib import Path

import numpy as np
from PIL import Image

from fedclip import io
from fedclip.data.records import Record
from fedclip.errors import DataError
from fedclip.synth import CohortSpec, sample

CANARIES_FILE = "canaries.csv"
CANARY_DIR = "canaries"
CANARY_HOSPITAL = "canary"
DIGITS = 4
SPACE = 10**DIGITS
BASE_CAPTION = "Fundus photograph of a research participant."
_COLUMNS = ("filepath", "base_caption", "secret", "repeats", "patient_id")


@dataclass(frozen=True)
class Canary:
    filepath: str  # relative to the run dir
    base_caption: str
    secret: int
    repeats: int  # 0: a control, never trained on
    patient_id: str

    @property
    def caption(self) -> str:
        return caption_with(self.base_caption, self.secret)


def caption_with(base: str, secret: int) -> str:
    """The caption a canary trains with: its own description, then the secret as separate digits."""
    return f"{base} Reference code {' '.join(f'{secret:0{DIGITS}d}')}."


def plant(run: str | Path, n: int, repeats: tuple[int, ...], *, size: int, seed: int) -> list[Canary]:
    """Draw 2n canaries (n planted, cycling through `repeats`; n controls) and write them into the run dir."""
    if n < 1 or not repeats or min(repeats) < 1:
        raise DataError(f"canaries: need n >= 1 and repeat counts >= 1, got n={n}, repeats={repeats}")
    run = Path(run)
    rng = np.random.default_rng([seed, 0xCA7A])
    codes = rng.choice(SPACE, 2 * n, replace=False)
    spec = CohortSpec(seed=int(rng.integers(2**31)), size=size, eyes=1, visits=1)
    out = []
    for i in range(2 * n):
        s = sample(spec, i)
        rel = f"{CANARY_DIR}/images/canary-{i:04d}.png"
        buf = BytesIO()
        Image.fromarray(s.image).save(buf, format="PNG")
        io.write_bytes(run / rel, buf.getvalue())
        out.append(Canary(rel, BASE_CAPTION, int(codes[i]), int(repeats[i % len(repeats)]) if i < n else 0,
                          f"canary-{i:04d}"))
    text = StringIO(newline="")
    w = csv.writer(text)
    w.writerow(_COLUMNS)
    for c in out:
        w.writerow([c.filepath, c.base_caption, c.secret, c.repeats, c.patient_id])
    io.write_text(run / CANARIES_FILE, text.getvalue())
    return out


def read(run: str | Path) -> list[Canary]:
    path = Path(run) / CANARIES_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: the run planted no canaries; pretrain with --canaries N")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(_COLUMNS) - set(rows[0]):
        raise DataError(f"{path} is not a canary list: it needs the columns {', '.join(_COLUMNS)}")
    return [Canary(r["filepath"], r["base_caption"], int(r["secret"]), int(r["repeats"]), r["patient_id"])
            for r in rows]


def training_records(run: str | Path, canaries: list[Canary]) -> list[Record]:
    """The planted canaries as training records, each repeated its number of times (absolute paths)."""
    root = Path(run).resolve()
    return [Record(str(root / c.filepath), c.caption, {}, {"patient_id": c.patient_id, "hospital": CANARY_HOSPITAL})
            for c in canaries for _ in range(c.repeats)]
