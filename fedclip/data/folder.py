"""`fedclip data import folder`: a hospital's own image folder as a dataset dir, images left in place.

Three layouts are understood, in this order:

1. a labels CSV (`--labels FILE`, or `metadata.csv` inside the folder as a Hugging Face imagefolder
   writes it): one row per image, found by its `file_name` / `filepath` / `image` column (relative to
   the folder, or a bare file name); columns named like fedclip's labels and metadata are taken as
   they are, others through `--map COLUMN=FIELD`; a `text` or `caption` column is kept as the caption;
2. sub-folder names as one label's values (`--folder-label dr_grade`: `ROOT/0/…`, `ROOT/2/…`);
3. neither: images without labels (pretraining on captions is then impossible, but audits of copying
   and the generator still run).

Captions missing from the CSV are written from the labels by the renderer's caption code. Patient ids
come from `--patient-id COLUMN` (or a `patient_id` column); without them every image counts as its own
patient, and every privacy figure is then per image — the import says so.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedclip.data.public import IMAGE_EXTS, labelled_record
from fedclip.data.records import META_COLUMNS, METADATA_FILE, Record, write_metadata
from fedclip.errors import DataError
from fedclip.synth.taxonomy import LABEL_COLUMNS

IMAGE_KEYS = ("file_name", "filepath", "image", "filename", "path")  # a row's image, first found wins
CAPTION_KEYS = ("caption", "text")
FIELDS = frozenset(LABEL_COLUMNS) | frozenset(META_COLUMNS)


@dataclass(frozen=True)
class FolderImport:
    records: list[Record]
    warnings: list[str] = field(default_factory=list)


def parse_map(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`COLUMN=FIELD` pairs from the command line, each FIELD one of fedclip's labels or metadata."""
    out = {}
    for pair in pairs:
        column, sep, target = pair.partition("=")
        if not sep or not column or not target:
            raise DataError(f"--map {pair!r}: write COLUMN=FIELD, e.g. --map referable=referable_dr")
        if target not in FIELDS:
            raise DataError(f"--map {pair!r}: {target!r} is not a fedclip field; choose a label "
                            f"({', '.join(LABEL_COLUMNS)}) or metadata ({', '.join(META_COLUMNS)})")
        out[column] = target
    return out


def _images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        found += [Path(dirpath) / f for f in sorted(files) if f.lower().endswith(IMAGE_EXTS)]
    return found


def _from_csv(root: Path, sheet: Path, mapping: dict[str, str], patient_id: str | None,
              warnings: list[str]) -> list[Record]:
    with open(sheet, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    key = next((k for k in IMAGE_KEYS if k in header), None)
    if key is None:
        raise DataError(f"{sheet}: no column names the image; name it one of {', '.join(IMAGE_KEYS)}")
    for column in list(mapping) + ([patient_id] if patient_id else []):
        if column not in header:
            raise DataError(f"{sheet}: no column {column!r} (columns: {', '.join(header)}); fix --map / --patient-id")
    columns = {c: c for c in header if c in FIELDS} | mapping | ({patient_id: "patient_id"} if patient_id else {})
    caption_key = next((k for k in CAPTION_KEYS if k in header), None)
    ignored = [c for c in header if c not in columns and c not in (key, caption_key)]
    if ignored:
        warnings.append(f"{sheet.name}: column(s) {', '.join(ignored)} not imported (not fedclip fields); map one "
                        "with --map COLUMN=FIELD")
    by_name: dict[str, Path] = {}
    for p in _images(root):
        by_name.setdefault(p.name, p)
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{sheet}:{line}"
        name = (row.get(key) or "").strip()
        path = root / name if name and (root / name).is_file() else by_name.get(Path(name).name)
        if path is None:
            raise DataError(f"{where}: image {name!r} not found under {root}; fix the row or restore the image")
        labels = {columns[c]: row[c] for c in columns if columns[c] in LABEL_COLUMNS and row.get(c) not in (None, "")}
        meta = {columns[c]: row[c].strip() for c in columns
                if columns[c] in META_COLUMNS and row.get(c) not in (None, "")}
        caption = (row.get(caption_key) or "").strip() if caption_key else ""
        records.append(labelled_record(path.resolve(), labels, where, "folder", meta, caption or None))
    return records


def _from_folders(root: Path, label: str) -> list[Record]:
    if label not in LABEL_COLUMNS:
        raise DataError(f"--folder-label {label!r} is not a label; choose one of {', '.join(LABEL_COLUMNS)}")
    records = []
    for path in _images(root):
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise DataError(f"{path}: with --folder-label every image sits in a sub-folder named by its {label} "
                            f"value (e.g. {root}/1/{path.name})")
        records.append(labelled_record(path.resolve(), {label: parts[0]}, f"{path} (folder {parts[0]!r})", "folder"))
    return records


def index_folder(root: str | Path, *, labels: str | Path | None = None, mapping: dict[str, str] | None = None,
                 patient_id: str | None = None, folder_label: str | None = None) -> FolderImport:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass the folder that holds your images")
    warnings: list[str] = []
    sheet = Path(labels) if labels else (root / METADATA_FILE if (root / METADATA_FILE).is_file() else None)
    if sheet is not None and not sheet.is_file():
        raise DataError(f"--labels {sheet}: no such file")
    if sheet is not None and folder_label:
        raise DataError("pass either a labels CSV or --folder-label, not both")
    if sheet is None and (mapping or patient_id):
        raise DataError("--map and --patient-id name columns of a labels CSV; pass --labels FILE.csv")
    if sheet is not None:
        records = _from_csv(root, sheet, mapping or {}, patient_id, warnings)
    elif folder_label:
        records = _from_folders(root, folder_label)
    else:
        records = [labelled_record(p.resolve(), {}, str(p), "folder") for p in _images(root)]
        warnings.append("no labels CSV and no --folder-label: the images carry no labels (captions say nothing "
                        "about them)")
    if not records:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) found, recursively")
    missing = sum(1 for r in records if not r.meta.get("patient_id"))
    if missing:
        warnings.append(f"{missing} of {len(records)} image(s) have no patient id: each counts as its own patient, "
                        "so every privacy figure on them is per image, not per patient (pass --patient-id COLUMN)")
    return FolderImport(records, warnings)


def import_folder(root: str | Path, out: str | Path, **kwargs: object) -> tuple[Path, FolderImport]:
    """Write `out/metadata.csv` indexing the folder (absolute image paths); refuses to overwrite one."""
    out = Path(out)
    if (out / METADATA_FILE).exists():
        raise DataError(f"{out / METADATA_FILE} exists; choose a new --out (a folder's own metadata.csv is read, "
                        "never overwritten)")
    result = index_folder(root, **kwargs)  # type: ignore[arg-type]
    return write_metadata(out, result.records), result
