"""Every kind of file a user hands fedclip, broken or merely unusual, through the real commands.

A broken one gives one line naming the file or field and what to do, exit code 2, no traceback, and
nothing half-written; an unusual but valid one works.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedclip import models
from fedclip.cli.main import app
from fedclip.data.images import load_rgb
from fedclip.data.records import METADATA_FILE, read_metadata
from fedclip.errors import DataError

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path_factory.mktemp("ck") / "ckpt")


def _rgb(w: int = 64, h: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ image files
def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _jpeg_bytes(Image.fromarray(_rgb(64, 32)), exif=exif)


BROKEN_IMAGES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "corrupt": ("img.png", lambda: b"\x89PNG\r\n\x1a\n" + b"garbage" * 20),
    "truncated": ("img.png", lambda: _png_bytes(Image.fromarray(_rgb()))[:300]),
    "zero-byte": ("img.png", lambda: b""),
    "not an image": ("img.jpg", lambda: b"%PDF-1.4 a document, not a photograph"),
}

VALID_IMAGES: dict[str, tuple[str, Callable[[], bytes], tuple[int, int]]] = {
    "greyscale PNG": ("g.png", lambda: _png_bytes(Image.fromarray(_rgb()[..., 0])), (64, 48)),
    "16-bit PNG": ("s.png", lambda: _png_bytes(Image.fromarray(_rgb()[..., 0].astype(np.uint16) * 257)),
                   (64, 48)),
    "palette PNG": ("p.png", lambda: _png_bytes(Image.fromarray(_rgb()).quantize(16)), (64, 48)),
    "RGBA PNG": ("a.png", lambda: _png_bytes(Image.fromarray(_rgb()).convert("RGBA")), (64, 48)),
    "CMYK JPEG": ("c.jpg", lambda: _jpeg_bytes(Image.fromarray(_rgb()).convert("CMYK")), (64, 48)),
    "progressive JPEG": ("q.jpg", lambda: _jpeg_bytes(Image.fromarray(_rgb()), progressive=True), (64, 48)),
    "EXIF-rotated JPEG": ("r.jpg", _exif_rotated, (32, 64)),  # shown upright: 64x32 stored, rotated
    "odd size": ("o.png", lambda: _png_bytes(Image.fromarray(_rgb(7, 301))), (7, 301)),
}


@pytest.mark.parametrize("kind", list(BROKEN_IMAGES))
def test_a_broken_image_is_named_with_what_to_do(tmp_path, kind):
    name, make = BROKEN_IMAGES[kind]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(DataError, match=f"{name} cannot be decoded.*re-export or re-download it"):
        load_rgb(path)


def test_a_broken_image_given_to_a_command_is_one_clear_line(tmp_path, ckpt):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(_png_bytes(Image.fromarray(_rgb())))
    bad.write_bytes(BROKEN_IMAGES["truncated"][1]())
    res = runner.invoke(app, ["predict", str(good), str(bad), "--checkpoint", str(ckpt)])
    assert res.exit_code == 2, res.output
    assert "bad.png cannot be decoded" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 2  # one message (rich may wrap it once)


@pytest.mark.parametrize("kind", list(VALID_IMAGES))
def test_an_unusual_but_valid_image_loads_upright_as_8_bit_rgb(tmp_path, kind):
    name, make, size = VALID_IMAGES[kind]
    path = tmp_path / name
    path.write_bytes(make())
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == size
    assert 20 < np.asarray(img).mean() < 235  # not saturated (16-bit scaled, CMYK converted), not blank


def test_every_unusual_but_valid_image_goes_through_a_command(tmp_path, ckpt):
    paths = []
    for name, make, _ in VALID_IMAGES.values():
        (tmp_path / name).write_bytes(make())
        paths.append(str(tmp_path / name))
    res = runner.invoke(app, ["predict", *paths, "--checkpoint", str(ckpt)])
    assert res.exit_code == 0, res.output
    assert all(Path(p).name in res.output for p in paths)


# ---------------------------------------------------------------------------- dataset dirs
def _dataset(root: Path, header: list[str], rows: list[list[str]], images: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in (images or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    with open(root / METADATA_FILE, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return root


GOOD = {"images/a.png": _png_bytes(Image.fromarray(_rgb())), "images/b.png": _png_bytes(Image.fromarray(_rgb()))}

BAD_DATASETS: dict[str, tuple[list[str], list[list[str]], str]] = {
    "missing filepath column": (["image", "caption"], [["images/a.png", "x"]], "missing column(s) filepath"),
    "renamed caption column": (["filepath", "text"], [["images/a.png", "x"]], "missing column(s) caption"),
    "duplicated column": (["filepath", "caption", "dr_grade", "dr_grade"], [["images/a.png", "x", "1", "2"]],
                          "column dr_grade appears twice"),
    "unknown label value": (["filepath", "caption", "dr_grade"], [["images/a.png", "x", "7"]],
                            "metadata.csv:2: label dr_grade='7' out of range"),
    "non-integer label": (["filepath", "caption", "amd"], [["images/a.png", "x", "maybe"]], "not an integer"),
    "duplicated row": (["filepath", "caption"], [["images/a.png", "x"], ["images/b.png", "y"], ["images/a.png", "x"]],
                       "metadata.csv:4: images/a.png is listed again (first at line 2)"),
    "empty dataset": (["filepath", "caption"], [], "lists no images; the dataset is empty"),
    "path escaping the dataset dir": (["filepath", "caption"], [["../outside.png", "x"]],
                                      "metadata.csv:2: filepath ../outside.png leaves the dataset dir"),
    "missing image": (["filepath", "caption"], [["images/nope.png", "x"]], "nope.png does not exist"),
}


@pytest.mark.parametrize("kind", list(BAD_DATASETS))
def test_a_bad_dataset_dir_is_one_clear_line_and_nothing_is_written(tmp_path, ckpt, kind):
    header, rows, message = BAD_DATASETS[kind]
    (tmp_path / "outside.png").write_bytes(GOOD["images/a.png"])
    data = _dataset(tmp_path / "ds", header, rows, GOOD)
    for args in (["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(tmp_path / "r.json")],
                 ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--workers", "0"],
                 ["data", "check", str(data)]):
        res = runner.invoke(app, ["--quiet", *args])
        flat = " ".join(res.output.split())
        assert res.exit_code == 2 and message in flat and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "run").exists()


def test_data_check_names_every_undecodable_image(tmp_path):
    images = {**GOOD, "images/c.png": b"", "images/d.png": GOOD["images/a.png"][:200]}
    data = _dataset(tmp_path / "ds", ["filepath", "caption"], [[k, "x"] for k in images], images)
    res = runner.invoke(app, ["--quiet", "data", "check", str(data), "--workers", "2"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "2 of 4 images cannot be decoded" in " ".join(res.output.split())
    assert "images/c.png" in res.output and "images/d.png" in res.output and "images/a.png" not in res.output
    ok = _dataset(tmp_path / "ok", ["filepath", "caption"], [[k, "x"] for k in GOOD], GOOD)
    res = runner.invoke(app, ["--quiet", "data", "check", str(ok)])
    assert res.exit_code == 0 and "all 2 images decode" in res.output


def test_training_skips_a_few_undecodable_images_and_stops_past_the_threshold(tmp_path, small_dataset):
    """A 1M-image set should not die at hour five for one bad file, nor train on a broken copy."""
    data = tmp_path / "ds"
    shutil.copytree(small_dataset, data)
    records = read_metadata(data)
    records[0].path(data).write_bytes(b"")  # 1 of 48 images
    args = ["--quiet", "pretrain", "--data", str(data), "--steps", "3", "--batch-size", "16", "--workers", "2",
            "--set", "pretrain.warmup=1"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "tolerant"), "--set", "pretrain.max_undecodable=0.05"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 undecodable image" in " ".join(res.output.split())
    provenance = json.loads((tmp_path / "tolerant" / "checkpoints" / "last" / "config.json").read_text())
    assert provenance["provenance"]["undecodable_skipped"] == 1
    for r in records[1:24]:
        r.path(data).write_bytes(b"")  # half of them: past 5% within the first steps
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "strict"), "--set", "pretrain.max_undecodable=0.05"])
    flat = " ".join(res.output.split())
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "cannot be decoded" in flat and "fedclip data check" in flat
    assert not (tmp_path / "strict" / "checkpoints").exists()  # no checkpoint of a run that stopped


# ------------------------------------------------------------------ configs, checkpoints, audits
def _config(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "c.toml").write_text(text)
    return ["pretrain", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run")]


def _other_architecture(tmp_path: Path, ckpt: Path) -> list[str]:
    small = models.save_checkpoint(models.create("visionclip-small", seed=0), tmp_path / "small")
    return ["pretrain", "--init", str(small), "--model", "visionclip-tiny", "--synth", "n=32 size=64",
            "--out", str(tmp_path / "run")]


def _tampered(tmp_path: Path, ckpt: Path) -> list[str]:
    shutil.copytree(ckpt, tmp_path / "t")
    weights = tmp_path / "t" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    return ["eval", "--checkpoint", str(tmp_path / "t"), "--data", str(tmp_path), "--json", str(tmp_path / "r.json")]


def _pickle_checkpoint(tmp_path: Path, ckpt: Path) -> list[str]:
    import hashlib
    import pickle  # noqa: S403 - the test writes the pickle the package must refuse to load

    shutil.copytree(ckpt, tmp_path / "p")
    payload = pickle.dumps({"visual.proj": [1.0]})
    (tmp_path / "p" / "model.safetensors").write_bytes(payload)
    config = json.loads((tmp_path / "p" / "config.json").read_text())  # a forger updates the hash too
    config["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    return ["eval", "--checkpoint", str(tmp_path / "p"), "--data", str(tmp_path), "--json", str(tmp_path / "r.json")]


def _overlapping_audit(tmp_path: Path, ckpt: Path) -> list[str]:
    rows = [["images/a.png", "x", "P1"], ["images/b.png", "y", "P2"]]
    members = _dataset(tmp_path / "m", ["filepath", "caption", "patient_id"], rows, GOOD)
    nonmembers = _dataset(tmp_path / "n", ["filepath", "caption", "patient_id"], rows[1:], GOOD)
    return ["audit", "mia", "--target", str(ckpt), "--members", str(members), "--nonmembers", str(nonmembers),
            "--out", str(tmp_path / "run")]


BAD_FILES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "config: unknown key": (lambda t, c: _config(t, "[pretrain]\nstepz = 3\n"),
                            "[pretrain] has no setting(s) stepz"),
    "config: wrong type": (lambda t, c: _config(t, "[pretrain]\nsteps = \"many\"\n"),
                           "pretrain.steps: 'many' is not a valid int"),
    "config: unknown section": (lambda t, c: _config(t, "[pretrian]\nsteps = 3\n"),
                                "unknown section(s) [pretrian]"),
    "config: not TOML": (lambda t, c: _config(t, "steps = = 3"), "is not valid TOML"),
    "checkpoint of another architecture": (_other_architecture,
                                           "holds a 'visionclip-small' model, not 'visionclip-tiny'"),
    "checkpoint whose weights do not match its hash": (_tampered, "does not match the SHA-256"),
    "pickle posing as a checkpoint": (_pickle_checkpoint, "not a safetensors file"),
    "audit with overlapping members and non-members": (_overlapping_audit, "members and non-members share 1 patient"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_config_checkpoint_or_audit_input_is_one_clear_line(tmp_path, ckpt, kind):
    build, message = BAD_FILES[kind]
    args = build(tmp_path, ckpt)
    res = runner.invoke(app, ["--quiet", *args])
    flat = " ".join(res.output.split())
    assert res.exit_code == 2 and message in flat and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "r.json").exists()
