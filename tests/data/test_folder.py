"""`fedclip data import folder`: a hospital's own images in the layouts they come in, through the real command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from fedclip.cli.main import app
from fedclip.data.public import UNGRADED_CAPTION
from fedclip.data.records import read_metadata
from fedclip.synth import CohortSpec

runner = CliRunner()


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), shade, dtype=np.uint8)).save(path)


def _run(*args: str):
    return runner.invoke(app, ["data", "import", "folder", *map(str, args)])


def test_a_hugging_face_imagefolder_is_taken_as_it_is(tmp_path):
    root = tmp_path / "hf"
    for i in range(3):
        _image(root / "train" / f"{i}.jpg", 40 * i)
    (root / "metadata.csv").write_text("file_name,text\ntrain/0.jpg,a fundus\ntrain/1.jpg,another\ntrain/2.jpg,\n")
    res = _run(root, "--out", tmp_path / "ds")
    assert res.exit_code == 0, res.output
    assert "no patient id" in res.output and "per image" in res.output  # says what the privacy figures mean
    records = read_metadata(tmp_path / "ds")
    assert [r.caption for r in records] == ["a fundus", "another", UNGRADED_CAPTION]  # no label, no claim
    assert all(Path(r.filepath).is_absolute() and r.meta["source"] == "folder" for r in records)
    assert not (root / "train" / "metadata.csv").exists() and (root / "metadata.csv").read_text().startswith("file")


def test_a_labels_csv_with_mapped_columns_and_patient_ids(tmp_path):
    root = tmp_path / "clinic"
    for name in ("a.png", "b.png", "sub/c.png"):
        _image(root / name, 100)
    sheet = tmp_path / "grades.csv"
    sheet.write_text("image,grade,pid,referable_dr,hospital\na.png,2,P1,1,north\nb.png,0,P1,0,north\nc.png,4,P2,1,north\n")
    res = _run(root, "--out", tmp_path / "ds", "--labels", sheet, "--map", "grade=dr_grade", "--patient-id", "pid")
    assert res.exit_code == 0, res.output
    assert "referable_dr not imported" in res.output and "no patient id" not in res.output
    records = read_metadata(tmp_path / "ds")
    assert [r.labels["dr_grade"] for r in records] == [2, 0, 4] and [r.labels["dr"] for r in records] == [1, 0, 1]
    assert [r.meta["patient_id"] for r in records] == ["P1", "P1", "P2"] and records[0].meta["hospital"] == "north"
    assert records[2].caption != UNGRADED_CAPTION and "new vessels" in records[2].caption  # from the labels
    check = runner.invoke(app, ["data", "check", str(tmp_path / "ds")])
    assert check.exit_code == 0 and "warning" not in check.output


def test_sub_folder_names_as_one_label(tmp_path):
    root = tmp_path / "byclass"
    _image(root / "0" / "x.png", 10)
    _image(root / "1" / "y.png", 20)
    res = _run(root, "--out", tmp_path / "ds", "--folder-label", "glaucoma")
    assert res.exit_code == 0, res.output
    assert [r.labels["glaucoma"] for r in read_metadata(tmp_path / "ds")] == [0, 1]


def test_bad_input_gets_one_line_and_writes_nothing(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "a.png", 10)
    cases = [
        ([root, "--out", tmp_path / "o1", "--map", "grade"], "write COLUMN=FIELD"),
        ([root, "--out", tmp_path / "o2", "--map", "grade=severity"], "'severity' is not a fedclip field"),
        ([root, "--out", tmp_path / "o3", "--patient-id", "pid"], "pass --labels"),
        ([root, "--out", tmp_path / "o4", "--folder-label", "dr_grade"], "sits in a sub-folder"),
        ([tmp_path / "nothing", "--out", tmp_path / "o5"], "is not a directory"),
    ]
    for args, message in cases:
        res = _run(*args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
        assert not Path(args[2]).exists()
    sheet = tmp_path / "s.csv"
    sheet.write_text("file_name,dr_grade\na.png,7\n")
    res = _run(root, "--out", tmp_path / "o6", "--labels", sheet)
    assert res.exit_code == 2 and "s.csv:2" in res.output and not (tmp_path / "o6").exists()
    sheet.write_text("file_name\nmissing.png\n")
    res = _run(root, "--out", tmp_path / "o7", "--labels", sheet)
    assert res.exit_code == 2 and "'missing.png' not found" in res.output


def test_data_check_warns_about_unknown_columns_and_missing_patient_ids(tmp_path):
    ds = tmp_path / "ds"
    _image(ds / "images" / "a.png", 10)
    (ds / "metadata.csv").write_text("filepath,caption,referable_dr\nimages/a.png,x,1\n")
    res = runner.invoke(app, ["data", "check", str(ds)])
    assert res.exit_code == 0
    assert "referable_dr are not fedclip fields" in res.output and "no patient_id" in res.output
    missing = runner.invoke(app, ["data", "check", str(tmp_path / "plain")])
    assert missing.exit_code == 2 and "data import folder" in missing.output


def _clinic_folder(tmp_path: Path, name: str, seed: int, n: int) -> tuple[Path, Path]:
    """A hospital's export as it arrives: JPEGs in nested folders and a grading sheet, no metadata.csv."""
    import csv
    import shutil

    from fedclip.data.synthetic import export

    src = tmp_path / f"{name}-src"
    export(CohortSpec(seed=seed, size=64, hospital="riverside", diabetic_rate=0.7), src, n, fmt="jpg")
    root, sheet = tmp_path / name, tmp_path / f"{name}-grades.csv"
    with sheet.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "grade", "pid"])
        for r in read_metadata(src):
            target = root / "exports" / Path(r.filepath).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(r.path(src), target)
            w.writerow([f"exports/{target.name}", r.labels["dr_grade"], r.meta["patient_id"]])
    return root, sheet


def test_own_jpegs_and_a_grading_sheet_to_pretrain_eval_and_audit(tmp_path):
    """The README's "Your own images" commands, in order, on generated JPEGs with a labels CSV."""
    for name, seed in (("members", 31), ("fresh", 32)):
        root, sheet = _clinic_folder(tmp_path, name, seed, 24)
        res = _run(root, "--out", tmp_path / f"ds-{name}", "--labels", sheet, "--map", "grade=dr_grade",
                   "--patient-id", "pid")
        assert res.exit_code == 0, res.output
    check = runner.invoke(app, ["data", "check", str(tmp_path / "ds-members")])
    assert check.exit_code == 0 and "warning" not in check.output, check.output
    steps = ["pretrain", "--data", str(tmp_path / "ds-members"), "--out", str(tmp_path / "run"), "--steps", "3",
             "--batch-size", "8", "--set", "pretrain.workers=0"]
    res = runner.invoke(app, steps)
    assert res.exit_code == 0, res.output
    ckpt = str(tmp_path / "run" / "checkpoints" / "last")
    res = runner.invoke(app, ["eval", "--checkpoint", ckpt, "--data", str(tmp_path / "ds-fresh"),
                              "--task", "referable_dr"])
    assert res.exit_code == 0 and "referable_dr" in res.output, res.output
    res = runner.invoke(app, ["audit", "mia", "--target", ckpt, "--members", str(tmp_path / "ds-members"),
                              "--nonmembers", str(tmp_path / "ds-fresh"), "--attack", "loss",
                              "--out", str(tmp_path / "audit")])
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert doc["level"] == "patient"  # the sheet's patient ids made every figure per patient
