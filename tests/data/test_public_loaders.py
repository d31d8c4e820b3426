"""Each loader on a fixture the test writes in that dataset's exact on-disk layout."""

import csv
from pathlib import Path

import pytest
from PIL import Image

from fedclip.data.images import load_rgb
from fedclip.data.public import import_dataset, load
from fedclip.data.records import read_metadata
from fedclip.errors import DataError
from fedclip.synth import CohortSpec, sample

SPEC = CohortSpec(seed=21, size=32)


def _img(path: Path, i: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample(SPEC, i).image).save(path)
    return path


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _images_load(records, n):
    assert len(records) == n
    for r in records:
        assert Path(r.filepath).is_absolute()
        assert load_rgb(r.filepath).size == (32, 32)
        assert r.caption


def test_synfundus(tmp_path):
    for i in range(4):
        _img(tmp_path / f"{i // 2:02d}" / f"{i:07d}.png", i)
    _csv(tmp_path / "SynFundus-1M_annotation.csv",
         ["image", "dr_grade", "is_amd", "is_glaucoma", "is_pm", "is_rvo", "is_hr", "is_readable", "text"],
         [[f"{i:07d}.png", i, 1, 0, 0, 0, i % 2, 1, f"original caption {i}"] for i in range(4)])
    recs = load("synfundus", tmp_path)
    _images_load(recs, 4)
    assert [r.labels["dr_grade"] for r in recs] == [0, 1, 2, 3]
    assert recs[2].labels["dr"] == 1 and recs[0].labels["amd"] == 1 and recs[1].labels["hypertensive_retinopathy"]
    assert "macular degeneration" in recs[0].caption.lower() or "amd" in recs[0].caption.lower()
    orig = load("synfundus", tmp_path, original_text=True)
    assert orig[3].caption == "original caption 3"


def test_synfundus_unknown_flag_and_bad_value(tmp_path):
    _img(tmp_path / "0" / "a.png")
    _csv(tmp_path / "ann.csv", ["image", "dr_grade", "is_cataract"], [["a.png", 0, 1]])
    with pytest.raises(DataError, match="is_cataract match no condition"):
        load("synfundus", tmp_path)
    assert load("synfundus", tmp_path, ignore=("is_cataract",))[0].labels["dr_grade"] == 0
    _csv(tmp_path / "ann.csv", ["image", "dr_grade"], [["a.png", 9]])
    with pytest.raises(DataError, match=r"ann.csv:2: label dr_grade=9 out of range"):
        load("synfundus", tmp_path)
    _csv(tmp_path / "ann.csv", ["image", "dr_grade"], [["missing.png", 1]])
    with pytest.raises(DataError, match="'missing.png' not found"):
        load("synfundus", tmp_path)


def test_flair_style_csv(tmp_path):
    _img(tmp_path / "01_EYEPACS" / "a.jpeg")
    _img(tmp_path / "02_REFUGE" / "b.jpeg", 1)
    _csv(tmp_path / "assembly.csv", ["image", "atributes", "categories"], [
        ["01_EYEPACS/a.jpeg", "['microaneurysms']", "['moderate non proliferative diabetic retinopathy']"],
        ["02_REFUGE/b.jpeg", "[]", "['glaucoma', 'cataract']"],
    ])
    recs = load("flair", tmp_path)
    _images_load(recs, 2)
    assert recs[0].labels == {"dr_grade": 2, "dr": 1}
    assert recs[1].labels["glaucoma"] == 1 and recs[1].meta["other_findings"] == "cataract"
    _csv(tmp_path / "assembly.csv", ["image", "atributes", "categories"], [["01_EYEPACS/a.jpeg", "[]", "glaucoma"]])
    with pytest.raises(DataError, match="list"):
        load("flair", tmp_path)


def test_messidor2(tmp_path):
    for i, name in enumerate(["20051019_38557_0100_PP.png", "IM002385.JPG"]):
        _img(tmp_path / "IMAGES" / name, i)
    _csv(tmp_path / "messidor_data.csv",
         ["image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable"],
         [["20051019_38557_0100_PP.png", 3, 1, 1], ["IM002385.JPG", "", "", 0]])
    recs = load("messidor2", tmp_path)
    _images_load(recs, 2)
    assert recs[0].labels == {"dr_grade": 3, "dr": 1, "dme": 1, "readable": 1}
    assert recs[1].labels == {"readable": 0}  # ungradable: grade unknown, not invented


def test_fives(tmp_path):
    for split, names in {"train": ["1_A.png", "2_D.png"], "test": ["3_G.png", "4_N.png"]}.items():
        for i, n in enumerate(names):
            _img(tmp_path / split / "Original" / n, i)
            _img(tmp_path / split / "Ground truth" / n, i)  # vessel masks: not fundus images
    recs = load("fives", tmp_path)
    _images_load(recs, 4)
    by = {Path(r.filepath).name: r for r in recs}
    assert by["1_A.png"].labels == {"amd": 1, "dr": 0, "glaucoma": 0}
    assert by["2_D.png"].labels["dr"] == 1 and "dr_grade" not in by["2_D.png"].labels
    assert by["4_N.png"].labels == {"amd": 0, "dr": 0, "glaucoma": 0} and by["3_G.png"].meta["split"] == "test"


def test_refuge(tmp_path):
    _img(tmp_path / "Training400" / "Glaucoma" / "g0001.jpg")
    _img(tmp_path / "Training400" / "Non-Glaucoma" / "n0001.jpg", 1)
    recs = load("refuge", tmp_path)
    _images_load(recs, 2)
    assert sorted(r.labels["glaucoma"] for r in recs) == [0, 1]


def test_odir(tmp_path):
    for n in ("0_left.jpg", "0_right.jpg", "1_left.jpg", "1_right.jpg"):
        _img(tmp_path / "ODIR-5K" / "Training Images" / n)
    _csv(tmp_path / "full_df.csv",
         ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
          "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"],
         [[0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", 0, 0, 0, 1, 0, 0, 0, 0],
          [1, 57, "Male", "1_left.jpg", "1_right.jpg", "moderate non proliferative retinopathy，laser spot",
           "glaucoma，lens dust", 0, 1, 1, 0, 0, 0, 0, 1]])
    recs = load("odir", tmp_path)
    _images_load(recs, 4)
    left0, right0, left1, right1 = recs
    assert left0.meta["other_findings"] == "cataract" and left0.meta["eye"] == "left"
    assert right0.labels == {"dr": 0}
    assert left1.labels == {"dr_grade": 2, "dr": 1, "laser_scars": 1}
    assert right1.labels == {"glaucoma": 1, "artefact": 1} and right1.meta["patient_id"] == "ODIR-1"


def test_aptos(tmp_path):
    for i, code in enumerate(["000c1434d8d7", "001639a390f0"]):
        _img(tmp_path / "train_images" / f"{code}.png", i)
    _csv(tmp_path / "train.csv", ["id_code", "diagnosis"], [["000c1434d8d7", 2], ["001639a390f0", 4]])
    recs = load("aptos", tmp_path)
    _images_load(recs, 2)
    assert [r.labels["dr_grade"] for r in recs] == [2, 4]
    _csv(tmp_path / "train.csv", ["id_code", "diagnosis"], [["000c1434d8d7", "two"]])
    with pytest.raises(DataError, match="diagnosis='two' is not a number"):
        load("aptos", tmp_path)


def test_idrid(tmp_path):
    base = tmp_path / "B. Disease Grading"
    _img(base / "1. Original Images" / "a. Training Set" / "IDRiD_001.jpg")
    _img(base / "1. Original Images" / "b. Testing Set" / "IDRiD_002.jpg", 1)
    gt = base / "2. Groundtruths"
    hdr = ["Image name", "Retinopathy grade", "Risk of macular edema "]  # IDRiD's header has that trailing space
    _csv(gt / "a. IDRiD_Disease Grading_Training Labels.csv", hdr, [["IDRiD_001", 3, 2]])
    _csv(gt / "b. IDRiD_Disease Grading_Testing Labels.csv", hdr, [["IDRiD_002", 0, 0]])
    recs = load("idrid", tmp_path)
    _images_load(recs, 2)
    assert recs[0].labels == {"dr_grade": 3, "dr": 1, "dme": 1}
    assert {r.meta["split"] for r in recs} == {"train", "test"}


def test_import_writes_a_readable_dataset_dir(tmp_path):
    _img(tmp_path / "src" / "train_images" / "x.png")
    _csv(tmp_path / "src" / "train.csv", ["id_code", "diagnosis"], [["x", 1]])
    import_dataset("aptos", tmp_path / "src", tmp_path / "out")
    recs = read_metadata(tmp_path / "out")
    assert recs[0].labels == {"dr_grade": 1, "dr": 1} and recs[0].meta["source"] == "aptos"


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load("imagenet", tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load("fives", tmp_path / "nope")
    with pytest.raises(DataError, match="missing column"):
        _csv(tmp_path / "m" / "messidor_data.csv", ["adjudicated_dr_grade"], [[1]])
        load("messidor2", tmp_path / "m")
