"""Generated data on disk: export a cohort to a dataset dir, in parallel, resumably.

Export works in chunks of consecutive indices (one patient's images stay in one worker, so each eye
is rendered once). Each chunk writes its images with atomic renames and then a shard of metadata;
`metadata.csv` appears only when every shard is there. An interrupted export therefore leaves no
half-written image and no dataset that looks complete; running the same command again resumes it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from io import BytesIO, StringIO
from multiprocessing import get_context
from pathlib import Path

from PIL import Image

from fedclip import io
from fedclip.data.records import IMAGES_DIR, METADATA_FILE, Record, write_metadata
from fedclip.errors import DataError
from fedclip.progress import progress_bar
from fedclip.synth import CohortSpec, sample

SHARDS_DIR = ".export-shards"
SPEC_FILE = "cohort.json"
IMAGES_PER_FOLDER = 10_000
FORMATS = {"png": "PNG", "jpg": "JPEG"}


def image_relpath(index: int, fmt: str) -> str:
    return f"{IMAGES_DIR}/{index // IMAGES_PER_FOLDER:04d}/{index:08d}.{fmt}"


def _export_chunk(root: str, spec: CohortSpec, start: int, stop: int, fmt: str) -> int:
    root_path = Path(root)
    shard = root_path / SHARDS_DIR / f"{start:09d}-{stop:09d}.csv"
    if shard.is_file():
        return stop - start
    records = []
    for index in range(start, stop):
        s = sample(spec, index)
        rel = image_relpath(index, fmt)
        target = root_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file():
            buf = BytesIO()
            Image.fromarray(s.image).save(buf, format=FORMATS[fmt], **({"quality": 95} if fmt == "jpg" else {}))
            io.write_bytes(target, buf.getvalue())
        records.append(Record(rel, s.caption, {**s.labels}, {**s.meta, "source": "fedclip-synth"}))
    _write_shard(shard, records)
    return stop - start


def _write_shard(path: Path, records: list[Record]) -> None:
    buf = StringIO(newline="")
    w = csv.writer(buf)
    for r in records:
        w.writerow([r.filepath, r.caption, json.dumps(r.labels), json.dumps(r.meta)])
    io.write_text(path, buf.getvalue())


def _remove_stale_temp_files(images: Path) -> None:
    """A killed worker can leave one hidden `.NAME.PID.tmp` per process (never a visible image)."""
    for dirpath, _, files in os.walk(images):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                (Path(dirpath) / f).unlink(missing_ok=True)


def _read_shards(shard_dir: Path) -> list[Record]:
    records = []
    for shard in sorted(shard_dir.glob("*.csv")):
        with open(shard, newline="", encoding="utf-8") as fh:
            for fp, caption, labels, meta in csv.reader(fh):
                records.append(Record(fp, caption, json.loads(labels), json.loads(meta)))
    return records


def export(spec: CohortSpec, out: str | Path, n: int, workers: int = 1, fmt: str = "png",
           chunk: int = 256) -> Path:
    """Write images 0..n-1 of the cohort to `out` (images/ + metadata.csv); returns the metadata path."""
    if n <= 0:
        raise DataError(f"asked to export {n} images; pass --n 1 or more")
    if fmt not in FORMATS:
        raise DataError(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    out = Path(out)
    spec_path = out / SHARDS_DIR / SPEC_FILE
    wanted = {"spec": asdict(spec), "n": n, "format": fmt, "chunk": chunk}
    if (out / METADATA_FILE).exists():
        raise DataError(f"{out} already holds a dataset ({METADATA_FILE}); choose a new --out or delete it")
    if spec_path.is_file():
        previous = json.loads(spec_path.read_text())
        if previous != json.loads(json.dumps(wanted)):
            raise DataError(f"{out} holds an interrupted export of a different cohort ({previous}); "
                            "resume with the same options or choose a new --out")
        _remove_stale_temp_files(out / IMAGES_DIR)
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    io.write_text(spec_path, json.dumps(wanted))

    chunk = max(spec.images_per_patient, chunk - chunk % spec.images_per_patient)
    bounds = [(a, min(n, a + chunk)) for a in range(0, n, chunk)]
    with progress_bar(f"synth {out.name}", n) as advance:
        if workers <= 1:
            for a, b in bounds:
                advance(_export_chunk(str(out), spec, a, b, fmt))
        else:
            # spawn, not fork: callers (the CLI, tests) may have torch loaded, which is not fork-safe.
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_export_chunk, str(out), spec, a, b, fmt) for a, b in bounds]
                for f in futures:
                    advance(f.result())
    records = _read_shards(out / SHARDS_DIR)
    path = write_metadata(out, records)
    shutil.rmtree(out / SHARDS_DIR)
    return path


def ensure_exported(spec: CohortSpec, out: str | Path, n: int, workers: int = 1) -> Path:
    """The dataset dir `out` holding images 0..n-1 of the cohort: exported (an interrupted export is
    finished), or reused as it is once complete — what a resumable pipeline stage wants."""
    out = Path(out)
    if not (out / METADATA_FILE).exists():
        export(spec, out, n, workers=workers)
    return out
