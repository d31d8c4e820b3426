"""Loaders for public retina datasets, each in its real on-disk layout, all yielding `Record`s.

Every loader returns records with absolute image paths, the labels the dataset actually provides
(nothing invented: FIVES says "DR" without a grade, so `dr_grade` stays unknown), and a caption
built from those labels with the taxonomy's wording (deterministic per image). Findings a dataset
names that the taxonomy has no label for (cataract, drusen-free "other" codes, ...) are kept in
`meta["other_findings"]` rather than dropped or guessed.

Layouts (what a user downloads, unchanged):
  synfundus   annotation CSV (image path/name, dr_grade, is_* flags, optional text) + numbered image folders
  flair       CSV with image,atributes,categories (list-valued strings), images under the root
  messidor2   messidor_data.csv (image_id, adjudicated_dr_grade, adjudicated_dme, adjudicated_gradable)
  fives       {train,test}/Original/{n}_{A|D|G|N}.png
  refuge      .../Glaucoma/*.jpg and .../Non-Glaucoma/*.jpg
  odir        full_df.csv-style sheet: ID, Left-/Right-Fundus, Left-/Right-Diagnostic Keywords
  aptos       train.csv (id_code, diagnosis) + train_images/{id_code}.png
  idrid       "Image name","Retinopathy grade","Risk of macular edema" CSVs + IDRiD_*.jpg
"""

from __future__ import annotations

import ast
import csv
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedclip.data.records import Record, checked_labels, write_metadata
from fedclip.errors import DataError
from fedclip.synth.captions import make_caption
from fedclip.synth.taxonomy import CONDITIONS, condition

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ------------------------------------------------------------------------------------------ helpers
def _index_images(root: Path) -> dict[str, Path]:
    """Every image under `root` by file name and by stem (one directory walk for the whole set)."""
    index: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_EXTS):
                p = Path(dirpath) / f
                index.setdefault(f, p)
                index.setdefault(Path(f).stem, p)
    return index


def _find(index: dict[str, Path], name: str, where: str) -> Path:
    key = Path(name.strip()).name
    p = index.get(key) or index.get(Path(key).stem)
    if p is None:
        raise DataError(f"{where}: image {name!r} not found under the dataset root; check the download is "
                        "complete (or remove the row)")
    return p


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in reader.fieldnames]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames)})"
                            "; is this the right file for this dataset?")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise DataError(f"{path} has a header but no rows; the dataset is empty")
    return rows


def _one_csv(root: Path, pattern: str, must_have: str) -> Path:
    """The CSV under `root` matching `pattern` whose header names `must_have`."""
    for p in sorted(root.rglob(pattern)):
        with open(p, newline="", encoding="utf-8-sig") as fh:
            header = [h.strip() for h in next(csv.reader(fh), [])]
        if must_have in header:
            return p
    raise DataError(f"no {pattern} with a {must_have!r} column under {root}; point at the dataset's root folder")


def _sheet(root: Path, must_have: str, required: list[str]) -> tuple[Path, list[dict[str, str]], dict[str, Path]]:
    """The dataset's label sheet (found by a column it must have), its rows, and its images by name."""
    path = _one_csv(root, "*.csv", must_have)
    return path, _read_csv(path, required), _index_images(root)


DIAGNOSTIC_LABELS = ("dr_grade", "dr", *(c.name for c in CONDITIONS))
UNGRADED_CAPTION = "Fundus image (retina)."
"""The caption of an image no diagnosis is known for: it states nothing about disease."""


def labelled_record(path: Path, labels: dict[str, Any], where: str, source: str,
                    meta: dict[str, Any] | None = None, caption: str | None = None) -> Record:
    """A record with checked labels and, unless given, a caption written from them by the renderer's caption
    code (seeded by the file name, so a re-import writes the same caption)."""
    labels = checked_labels(labels, where)
    meta = {"source": source, **(meta or {})}
    if caption is None and not any(k in labels for k in DIAGNOSTIC_LABELS):
        caption = UNGRADED_CAPTION  # the caption code would say "no pathological findings": a claim nobody made
    if caption is None:
        seed = int.from_bytes(hashlib.sha256(str(path.name).encode()).digest()[:8], "little")
        caption = make_caption(labels, meta, np.random.default_rng(seed), diabetic="dr_grade" in labels)
    return Record(str(path), caption, labels, meta)


def number_cell(value: str, where: str, column: str) -> int | None:
    if value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        raise DataError(f"{where}: {column}={value!r} is not a number; fix the value") from None


# ----------------------------------------------------------------------------------------- loaders
SYNFUNDUS_IMAGE_COLUMNS = ("image", "img_name", "image_name", "filename", "path", "image_path")
SYNFUNDUS_QUALITY = {"readable": "readable", "gradable": "readable", "clear": "readable"}


def load_synfundus(root: str | Path, annotation: str | Path | None = None, original_text: bool = False,
                   ignore: Iterable[str] = ()) -> list[Record]:
    """SynFundus-1M: `dr_grade` + `is_<condition>` flags; `original_text=True` keeps its captions."""
    root = Path(root)
    ann = Path(annotation) if annotation else _one_csv(root, "*.csv", "dr_grade")
    with open(ann, newline="", encoding="utf-8-sig") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    image_col = next((c for c in SYNFUNDUS_IMAGE_COLUMNS if c in header), None)
    if image_col is None:
        raise DataError(f"{ann}: no image column; expected one of {', '.join(SYNFUNDUS_IMAGE_COLUMNS)}")
    flags: dict[str, str] = {}
    unknown = []
    for col in header:
        if not col.startswith("is_") or col in ignore:
            continue
        name = col[3:]
        if name in SYNFUNDUS_QUALITY:
            flags[col] = SYNFUNDUS_QUALITY[name]
            continue
        try:
            flags[col] = condition(name).name
        except DataError:
            unknown.append(col)
    if unknown:
        raise DataError(f"{ann}: flag column(s) {', '.join(unknown)} match no condition of the taxonomy; "
                        "pass ignore=(...) / --ignore to skip them, or add the condition to fedclip.synth.taxonomy")
    rows = _read_csv(ann, [image_col, "dr_grade"])
    index = _index_images(root)
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{ann}:{line}"
        labels: dict[str, Any] = {"dr_grade": number_cell(row["dr_grade"], where, "dr_grade")}
        for col, label in flags.items():
            labels[label] = number_cell(row[col], where, col)
        rel = root / row[image_col]
        path = rel if rel.is_file() else _find(index, row[image_col], where)
        text = row.get("text") or row.get("caption") if original_text else None
        records.append(labelled_record(path, labels, where, "synfundus-1m", caption=text or None))
    return records


_DR_WORDS = (("proliferative", 4), ("severe", 3), ("moderate", 2), ("mild", 1))


def _labels_from_terms(terms: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Map free-text diagnosis terms (FLAIR categories, ODIR keywords) onto the taxonomy."""
    labels: dict[str, int] = {}
    other = []
    for raw in terms:
        t = raw.strip().lower().replace("-", " ")
        if not t:
            continue
        if t in ("normal", "normal fundus", "healthy", "no diabetic retinopathy", "no dr"):
            labels.setdefault("dr", 0)
            continue
        if "retinopathy" in t and "hypertensive" not in t:
            grade = next((g for word, g in _DR_WORDS if word in t and not t.startswith("non" + word)), None)
            if "non proliferative" in t or "nonproliferative" in t:
                grade = next((g for word, g in _DR_WORDS[1:] if word in t), None)
            if grade is not None:
                labels["dr_grade"] = max(grade, labels.get("dr_grade", 0))
            else:
                labels["dr"] = 1
            continue
        hit = next((c.name for c in CONDITIONS if c.follows_dr_grade and any(k in t for k in c.keywords)), None)
        for c in CONDITIONS if hit is None else ():  # its names first, then its further keywords
            names = {c.name.replace("_", " "), *(p.lower() for p in c.phrases), *c.aliases}
            if any(n in t for n in names if len(n) > 3) or t in names:
                hit = c.name
                break
        if hit is None:
            hit = next((c.name for c in CONDITIONS if any(k in t for k in c.keywords)), None)
        if hit:
            labels[hit] = 1
        else:
            other.append(raw.strip())
    return labels, other


def load_flair_csv(root: str | Path, csv_path: str | Path | None = None) -> list[Record]:
    """A FLAIR-style assembly CSV: `image,atributes,categories` with list-valued strings."""
    root = Path(root)
    path = Path(csv_path) if csv_path else _one_csv(root, "*.csv", "categories")
    rows = _read_csv(path, ["image", "categories"])
    index = _index_images(root)
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        try:
            categories = ast.literal_eval(row["categories"]) if row["categories"] else []
            attributes = ast.literal_eval(row.get("atributes") or "[]")
        except (ValueError, SyntaxError):
            raise DataError(f"{where}: categories/atributes must be Python-style lists like ['glaucoma']; "
                            f"got {row['categories']!r}") from None
        labels, other = _labels_from_terms([*categories, *attributes])
        rel = root / row["image"]
        img = rel if rel.is_file() else _find(index, row["image"], where)
        meta = {"other_findings": "; ".join(other)} if other else {}
        records.append(labelled_record(img, labels, where, "flair", meta))
    return records


def load_messidor2(root: str | Path) -> list[Record]:
    """MESSIDOR-2 with the adjudicated grades (Krause et al.): blank grade = ungradable."""
    root = Path(root)
    path, rows, index = _sheet(root, "adjudicated_dr_grade", ["image_id", "adjudicated_dr_grade"])
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        labels = {"dr_grade": number_cell(row["adjudicated_dr_grade"], where, "adjudicated_dr_grade"),
                  "dme": number_cell(row.get("adjudicated_dme", ""), where, "adjudicated_dme"),
                  "readable": number_cell(row.get("adjudicated_gradable", ""), where, "adjudicated_gradable")}
        records.append(labelled_record(_find(index, row["image_id"], where), labels, where, "messidor-2"))
    return records


FIVES_CODES = {"A": "amd", "D": "dr", "G": "glaucoma", "N": None}
_FIVES_NAME = re.compile(r"^(\d+)_([ADGN])\.png$", re.IGNORECASE)


def load_fives(root: str | Path) -> list[Record]:
    """FIVES: the class is in the file name, `{n}_{A|D|G|N}.png`; split from the folder (train/test)."""
    root = Path(root)
    records = []
    for p in sorted(root.rglob("*.png")):
        m = _FIVES_NAME.match(p.name)
        if not m or "ground truth" in str(p.parent).lower():
            continue
        code = FIVES_CODES[m.group(2).upper()]
        labels = {"amd": 0, "dr": 0, "glaucoma": 0}
        if code:
            labels[code] = 1
        split = next((s for s in ("train", "test") if s in (x.lower() for x in p.parts)), "")
        records.append(labelled_record(p, labels, str(p), "fives", {"split": split}))
    if not records:
        raise DataError(f"no FIVES images ({{n}}_{{A|D|G|N}}.png) under {root}; point at the FIVES root folder")
    return records


def load_refuge(root: str | Path) -> list[Record]:
    """REFUGE training layout: class folders `Glaucoma/` and `Non-Glaucoma/`."""
    root = Path(root)
    records = []
    for dirpath, _, files in os.walk(root):
        folder = Path(dirpath).name.lower()
        if folder not in ("glaucoma", "non-glaucoma"):
            continue
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTS):
                p = Path(dirpath) / f
                records.append(labelled_record(p, {"glaucoma": int(folder == "glaucoma")}, str(p), "refuge"))
    if not records:
        raise DataError(f"no Glaucoma/ or Non-Glaucoma/ image folders under {root}; point at the REFUGE root")
    return sorted(records, key=lambda r: r.filepath)


ODIR_QUALITY = {"low image quality": "blur", "lens dust": "artefact", "image offset": "artefact",
                "optic disk photographically invisible": "artefact", "no fundus image": "artefact"}


def load_odir(root: str | Path) -> list[Record]:
    """ODIR-5K: one row per patient, keywords per eye; one record per eye."""
    root = Path(root)
    columns = ["ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords"]
    path, rows, index = _sheet(root, "Left-Diagnostic Keywords", columns)
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        for side in ("Left", "Right"):
            keywords = re.split(r"[，,;]", row[f"{side}-Diagnostic Keywords"])
            quality = {ODIR_QUALITY[k.strip()] for k in keywords if k.strip() in ODIR_QUALITY}
            labels, other = _labels_from_terms(k for k in keywords if k.strip() not in ODIR_QUALITY)
            for q in quality:
                labels[q] = 1
            meta = {"patient_id": f"ODIR-{row['ID']}", "eye": side.lower()}
            if other:
                meta["other_findings"] = "; ".join(other)
            img = _find(index, row[f"{side}-Fundus"], where)
            records.append(labelled_record(img, labels, where, "odir-5k", meta))
    return records


def load_aptos(root: str | Path) -> list[Record]:
    """APTOS 2019: train.csv (id_code, diagnosis 0-4) + train_images/{id_code}.png."""
    root = Path(root)
    path, rows, index = _sheet(root, "diagnosis", ["id_code", "diagnosis"])
    return [labelled_record(_find(index, row["id_code"], f"{path}:{line}"),
                            {"dr_grade": number_cell(row["diagnosis"], f"{path}:{line}", "diagnosis")},
                            f"{path}:{line}", "aptos")
            for line, row in enumerate(rows, start=2)]


def load_idrid(root: str | Path) -> list[Record]:
    """IDRiD disease grading: every grading CSV under the root (training and testing)."""
    root = Path(root)
    sheets = [p for p in sorted(root.rglob("*.csv")) if "Retinopathy grade" in p.read_text(encoding="utf-8-sig")[:300]]
    if not sheets:
        raise DataError(f"no IDRiD grading CSV ('Retinopathy grade' column) under {root}; point at the IDRiD root")
    index = _index_images(root)
    records = []
    for path in sheets:
        for line, row in enumerate(_read_csv(path, ["Image name", "Retinopathy grade"]), start=2):
            where = f"{path}:{line}"
            risk = number_cell(row.get("Risk of macular edema", ""), where, "Risk of macular edema")
            labels = {"dr_grade": number_cell(row["Retinopathy grade"], where, "Retinopathy grade"),
                      "dme": None if risk is None else int(risk > 0)}
            split = "test" if "test" in path.name.lower() else "train"
            records.append(labelled_record(_find(index, row["Image name"], where), labels, where, "idrid",
                                           {"split": split}))
    return records


LOADERS: dict[str, Callable[..., list[Record]]] = {
    "synfundus": load_synfundus, "flair": load_flair_csv, "messidor2": load_messidor2, "fives": load_fives,
    "refuge": load_refuge, "odir": load_odir, "aptos": load_aptos, "idrid": load_idrid,
}


def load(name: str, root: str | Path, **kwargs: Any) -> list[Record]:
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if not Path(root).is_dir():
        raise DataError(f"dataset root {root} is not a directory; point at the folder you downloaded")
    return LOADERS[name](root, **kwargs)


def import_dataset(name: str, root: str | Path, out: str | Path, **kwargs: Any) -> Path:
    """Write a dataset dir (metadata.csv with absolute image paths) for a public set, images left in place."""
    return write_metadata(out, load(name, root, **kwargs))
