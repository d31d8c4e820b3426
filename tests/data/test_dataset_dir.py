import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fedclip.data.images import load_rgb
from fedclip.data.records import METADATA_FILE, read_metadata, write_metadata
from fedclip.data.synthetic import SHARDS_DIR, ensure_exported, export
from fedclip.errors import DataError
from fedclip.synth import CohortSpec, sample


def test_export_roundtrip_matches_the_generator(small_dataset):
    records = read_metadata(small_dataset)
    assert len(records) == 48
    with open(small_dataset / METADATA_FILE, newline="") as fh:
        header = next(csv.reader(fh))
    assert header[:2] == ["filepath", "caption"]  # open_clip_train --csv-img-key filepath --csv-caption-key caption
    spec = CohortSpec(seed=3, size=64, hospital="riverside")
    for r in records[:5]:
        s = sample(spec, int(r.meta["index"]))
        assert r.caption == s.caption
        assert r.labels["dr_grade"] == s.labels["dr_grade"]
        assert (load_rgb(r.path(small_dataset)).tobytes() == s.image.tobytes())  # PNG is lossless
    assert not (small_dataset / SHARDS_DIR).exists()


def test_parallel_export_equals_serial(tmp_path):
    spec = CohortSpec(seed=9, size=48)
    export(spec, tmp_path / "a", 20, workers=1, chunk=8)
    export(spec, tmp_path / "b", 20, workers=2, chunk=8)
    a, b = (tmp_path / "a" / METADATA_FILE).read_text(), (tmp_path / "b" / METADATA_FILE).read_text()
    assert a == b


def test_interrupted_export_leaves_nothing_half_written_and_resumes(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "fedclip.cli.main", "--quiet", "synth", "--out", str(out), "--n", "3000",
           "--size", "96", "--seed", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / SHARDS_DIR).glob("*.csv"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / METADATA_FILE).exists()  # an interrupted export never looks complete
    with pytest.raises(DataError, match="interrupted export"):
        read_metadata(out)
    written = list((out / "images").rglob("[!.]*.png"))
    assert written
    for p in written:
        with Image.open(p) as img:
            img.load()  # every visible image is whole (a SIGKILL can only leave a hidden .tmp behind)
    # Resume with the same command: completes, and equals what the generator gives.
    subprocess.run(cmd, check=True)
    records = read_metadata(out)
    assert not list((out / "images").rglob(".*.tmp"))
    assert len(records) == 3000
    assert [int(r.meta["index"]) for r in records] == list(range(3000))
    spec = CohortSpec(seed=1, size=96)
    for r in records[::150]:  # images written before and after the kill are the generator's, byte for byte
        assert load_rgb(r.path(out)).tobytes() == sample(spec, int(r.meta["index"])).image.tobytes()


def test_export_refuses_to_overwrite_or_mix_cohorts(tmp_path, small_dataset):
    with pytest.raises(DataError, match="already holds a dataset"):
        export(CohortSpec(seed=3, size=64), small_dataset, 4)
    (tmp_path / "x" / SHARDS_DIR).mkdir(parents=True)
    (tmp_path / "x" / SHARDS_DIR / "cohort.json").write_text('{"spec": {}, "n": 1}')
    with pytest.raises(DataError, match="different cohort"):
        export(CohortSpec(seed=3, size=64), tmp_path / "x", 4)


def test_ensure_exported_writes_once_then_reuses_the_finished_dataset(tmp_path):
    spec = CohortSpec(seed=3, size=32)
    out = ensure_exported(spec, tmp_path / "d", 4)
    written = (out / METADATA_FILE).stat().st_mtime_ns
    assert ensure_exported(spec, out, 4) == out and (out / METADATA_FILE).stat().st_mtime_ns == written
    assert len(read_metadata(out)) == 4


def _copy_dataset(src: Path, dst: Path) -> Path:
    records = read_metadata(src)
    for r in records:
        target = dst / r.filepath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(r.path(src).read_bytes())
    write_metadata(dst, records)
    return dst


def test_corrupt_and_truncated_images_name_the_file(tmp_path, small_dataset):
    ds = _copy_dataset(small_dataset, tmp_path / "ds")
    records = read_metadata(ds)
    bad = records[0].path(ds)
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=f"{bad.name}.*cannot be decoded"):
        load_rgb(bad)
    trunc = records[1].path(ds)
    trunc.write_bytes(trunc.read_bytes()[:200])
    with pytest.raises(DataError, match=f"{trunc.name}.*corrupt or truncated"):
        load_rgb(trunc)


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / METADATA_FILE, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_missing_column_unknown_label_and_empty_dataset(tmp_path, small_dataset):
    img = read_metadata(small_dataset)[0].path(small_dataset)
    _write_csv(tmp_path / "a", ["image", "caption"], [[str(img), "x"]])
    with pytest.raises(DataError, match="missing column.*filepath"):
        read_metadata(tmp_path / "a")
    _write_csv(tmp_path / "b", ["filepath", "caption", "dr_grade"], [[str(img), "x", "7"]])
    with pytest.raises(DataError, match=r"metadata.csv:2: label dr_grade='7' out of range"):
        read_metadata(tmp_path / "b")
    _write_csv(tmp_path / "c", ["filepath", "caption", "glaucoma"], [[str(img), "x", "maybe"]])
    with pytest.raises(DataError, match="not an integer"):
        read_metadata(tmp_path / "c")
    _write_csv(tmp_path / "d", ["filepath", "caption"], [])
    with pytest.raises(DataError, match="empty"):
        read_metadata(tmp_path / "d")
    _write_csv(tmp_path / "e", ["filepath", "caption"], [["images/nope.png", "x"]])
    with pytest.raises(DataError, match="nope.png does not exist"):
        read_metadata(tmp_path / "e")
    with pytest.raises(DataError, match="not found"):
        read_metadata(tmp_path / "nowhere")
