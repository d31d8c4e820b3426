"""`fedclip data check`: decode every image of a dataset dir before hours of training depend on it."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from fedclip.data.images import load_rgb
from fedclip.data.records import META_COLUMNS, METADATA_FILE, REQUIRED_COLUMNS, read_metadata
from fedclip.errors import DataError
from fedclip.progress import progress_bar
from fedclip.synth.taxonomy import LABEL_COLUMNS


def _check_chunk(root: str, filepaths: list[str]) -> list[tuple[str, str]]:
    bad = []
    for rel in filepaths:
        path = Path(rel) if Path(rel).is_absolute() else Path(root) / rel
        try:
            load_rgb(path)
        except DataError as e:
            bad.append((rel, str(e)))
    return bad


def undecodable(root: str | Path, workers: int = 1, chunk: int = 256) -> tuple[int, list[tuple[str, str]]]:
    """(images checked, [(filepath, reason)] of those that do not decode), in metadata order.

    The metadata itself is checked first (columns, labels, paths, duplicates): its errors are raised.
    """
    records = read_metadata(root)
    paths = [r.filepath for r in records]
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    bad: list[tuple[str, str]] = []
    with progress_bar(f"check {Path(root).name}", len(paths)) as advance:
        if workers <= 1:
            for c in chunks:
                bad += _check_chunk(str(root), c)
                advance(len(c))
        else:  # spawn, not fork: the caller may have torch loaded
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for c, found in zip(chunks, pool.map(_check_chunk, [str(root)] * len(chunks), chunks), strict=True):
                    bad += found
                    advance(len(c))
    return len(paths), bad


def metadata_warnings(root: str | Path) -> list[str]:
    """What a consistent dataset dir may still get wrong: columns no stage reads (a misspelt label is
    silently unknown) and images without a patient id (every privacy figure is then per image)."""
    import csv

    path = Path(root) / METADATA_FILE
    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    known = set(REQUIRED_COLUMNS) | set(LABEL_COLUMNS) | set(META_COLUMNS)
    out = []
    unknown = [c for c in header if c not in known]
    if unknown:
        out.append(f"{path}: column(s) {', '.join(unknown)} are not fedclip fields and are ignored; rename them "
                   "(README, Formats) or re-import with `fedclip data import folder --map COLUMN=FIELD`")
    records = read_metadata(root, check_files=False)
    missing = sum(1 for r in records if not r.meta.get("patient_id"))
    if missing:
        out.append(f"{missing} of {len(records)} image(s) have no patient_id: each counts as its own patient, so "
                   "DP and audit figures on this set are per image, not per patient")
    return out
