"""The dataset-dir format: `images/` + `metadata.csv` (filepath, caption, labels, meta).

It is the one format every stage reads, and `open_clip_train` reads it as is
(`--csv-img-key filepath --csv-caption-key caption --csv-separator ,`). Paths in `filepath` are
relative to the dataset dir; a blank label cell means "not known for this image" (public datasets
rarely carry every label), which is why `Record.labels` holds only the known ones.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from fedclip import io
from fedclip.errors import DataError
from fedclip.synth.taxonomy import LABEL_COLUMNS, validate_labels

METADATA_FILE = "metadata.csv"
IMAGES_DIR = "images"
META_COLUMNS: tuple[str, ...] = (
    "patient_id", "eye", "visit", "hospital", "camera", "seed", "index", "source", "split", "other_findings",
)
REQUIRED_COLUMNS = ("filepath", "caption")


@dataclass
class Record:
    """One image on disk with its caption, the labels known for it and where it came from."""

    filepath: str
    caption: str
    labels: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def path(self, root: str | Path) -> Path:
        p = Path(self.filepath)
        return p if p.is_absolute() else Path(root) / p


def checked_labels(labels: Mapping[str, Any], where: str) -> dict[str, int]:
    """Validate known labels and add the derived ones (`dr` = any diabetic retinopathy)."""
    known = {k: v for k, v in labels.items() if v is not None and v != ""}
    full = validate_labels(known, where)
    out = {k: full[k] for k in known}
    if "dr_grade" in out:
        derived = int(out["dr_grade"] > 0)
        if out.setdefault("dr", derived) != derived:
            raise DataError(f"{where}: dr={out['dr']} contradicts dr_grade={out['dr_grade']}; fix one of them")
    return out


def write_metadata(root: str | Path, records: Iterable[Record]) -> Path:
    """Write `metadata.csv` atomically (`fedclip.io`): readers never see half a file."""
    root = Path(root)
    columns = ["filepath", "caption", *LABEL_COLUMNS, *META_COLUMNS]
    buf = StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        row = {"filepath": r.filepath, "caption": r.caption}
        row.update({k: v for k, v in r.labels.items() if k in LABEL_COLUMNS})
        row.update({k: v for k, v in r.meta.items() if k in META_COLUMNS})
        writer.writerow(row)
    return io.write_text(root / METADATA_FILE, buf.getvalue())


def read_metadata(root: str | Path, check_files: bool = True) -> list[Record]:
    """Read a dataset dir, with errors that name the file, row and column to fix."""
    root = Path(root)
    path = root / METADATA_FILE
    if not path.is_file():
        hint = " (an interrupted export? run it again to finish)" if (root / IMAGES_DIR).is_dir() else ""
        raise DataError(f"{path} not found{hint}; a dataset dir needs metadata.csv (README, Formats) — index "
                        "your images with `fedclip data import folder ROOT --out DIR`, or generate a set with "
                        "`fedclip synth --out DIR`")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the header must start with "
                            f"filepath,caption (found: {','.join(header) or 'nothing'})")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise DataError(f"{path}: column {', '.join(twice)} appears twice in the header; keep one of each")
        label_cols = [c for c in header if c in LABEL_COLUMNS]
        records, first_line = [], {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            if not row.get("filepath"):
                raise DataError(f"{where}: empty filepath; every row needs an image path")
            relative = Path(row["filepath"])
            if not relative.is_absolute() and not (root / relative).resolve().is_relative_to(root.resolve()):
                # absolute paths are a deliberate choice (an index of images kept elsewhere); a relative one
                # that climbs out is a mistake or an attack on whoever reads the dataset
                raise DataError(f"{where}: filepath {row['filepath']} leaves the dataset dir; use a path inside "
                                f"{root} or an absolute path")
            if row["filepath"] in first_line:
                # one image twice is one record counted twice: it breaks the unit of privacy and the audits
                raise DataError(f"{where}: {row['filepath']} is listed again (first at line "
                                f"{first_line[row['filepath']]}); remove the duplicate row")
            first_line[row["filepath"]] = line
            labels = checked_labels({c: row.get(c) for c in label_cols}, where)
            meta = {c: row[c] for c in META_COLUMNS if row.get(c) not in (None, "")}
            rec = Record(row["filepath"], row.get("caption") or "", labels, meta)
            if check_files and not rec.path(root).is_file():
                raise DataError(f"{where}: image {rec.path(root)} does not exist; restore it or remove the row")
            records.append(rec)
    if not records:
        raise DataError(f"{path} lists no images; the dataset is empty — generate or load some data first")
    return records


def normalise_patient_id(value: Any) -> str:
    """A patient id as the unit of privacy compares it: case and surrounding or repeated whitespace do not
    make two patients (" P-17" and "p-17" are one person); "" for a missing id."""
    return " ".join(str(value or "").split()).casefold()


def patient_key(record: Record) -> str:
    """The privacy unit a record belongs to: its normalised patient id, or the image itself
    (`image:<filepath>`) when it has none — one rule for every grouping (partitions, DP sampling, audits),
    so a patient counted once in training is counted once in its audit."""
    return normalise_patient_id(record.meta.get("patient_id")) or f"image:{record.filepath}"


def fingerprint(records: Iterable[Record]) -> str:
    """SHA-256 of the rows (path, caption, labels, meta) in order: which data a model or ledger is about."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.filepath, r.caption, r.labels, r.meta], sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


MANIFEST_COLUMNS = ("filepath", "patient_id", "hospital")


def manifest_text(records: Iterable[Record]) -> str:
    """`members.csv`: which records (and patients, hospitals) trained a model. Its SHA-256 goes into provenance."""
    buf = StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(MANIFEST_COLUMNS)
    for r in records:
        w.writerow([r.filepath, r.meta.get("patient_id", ""), r.meta.get("hospital", "")])
    return buf.getvalue()


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and set(MANIFEST_COLUMNS) - set(rows[0]):
        raise DataError(f"{path} is not a member manifest: it needs the columns {', '.join(MANIFEST_COLUMNS)}")
    return rows
