"""Deja-vu memorization: caption stripping, the neighbour vote and the paired gap on constructed embeddings
with known answers, and the command end to end (a model compared with itself shows no gap)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedclip import models
from fedclip.audits.dejavu import knn_predict, paired_gap, strip
from fedclip.cli.main import app
from fedclip.synth.taxonomy import DR_GRADE_PHRASES


def test_stripping_removes_every_dr_phrase_and_keeps_the_rest():
    caption = "Left eye, colour fundus photograph: moderate NPDR and drusen. There are hard exudates and drusen."
    out = strip(caption, "dr")
    assert "NPDR" not in out and "exudates" not in out
    assert "drusen" in out and "Left eye" in out
    for phrases in DR_GRADE_PHRASES.values():
        for p in phrases:
            assert p.lower() not in strip(f"Fundus photograph showing {p}.", "dr").lower()


def test_a_memorising_model_predicts_the_hidden_label_and_a_reference_does_not():
    rng = np.random.default_rng(0)
    public = rng.normal(size=(200, 16))
    public /= np.linalg.norm(public, axis=1, keepdims=True)
    labels = (rng.random(200) < 0.5).astype(int)
    members_y = labels[:60]
    # the memorising model maps each stripped caption onto "its" image (a public look-alike with its label)
    memorised = public[:60] + 0.01 * rng.normal(size=(60, 16))
    pred, agree = knn_predict(memorised, public, labels, k=1)
    assert (pred == members_y).all() and (agree == 1).all()
    unrelated = rng.normal(size=(60, 16))
    pred_ref, _ = knn_predict(unrelated, public, labels, k=1)
    gap = paired_gap(members_y, pred, pred_ref, n_boot=300, seed=0, confidence=0.95)
    assert gap["ci"][0] > 0.2
    same = paired_gap(members_y, pred_ref, pred_ref, n_boot=100, seed=0, confidence=0.95)
    assert same["gap"] == 0 and same["ci"] == [0.0, 0.0]


def test_dejavu_end_to_end_with_a_model_against_itself_finds_no_gap(tmp_path):
    from fedclip.data.synthetic import export
    from fedclip.synth import CohortSpec

    export(CohortSpec(seed=41, size=64, diabetic_rate=1.0, hospital="riverside"), tmp_path / "members", 60)
    export(CohortSpec(seed=42, size=64, diabetic_rate=1.0, hospital="riverside"), tmp_path / "public", 60)
    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "ckpt")
    result = CliRunner().invoke(app, ["-q", "audit", "dejavu", "--target", str(ckpt), "--reference", str(ckpt),
                                      "--members", str(tmp_path / "members"), "--public", str(tmp_path / "public"),
                                      "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert doc["gap"]["gap"] == 0 and not doc["memorised"]
    assert (tmp_path / "audit" / "dejavu.csv").read_text().count("\n") == doc["data"]["n_members"] + 1
    result = CliRunner().invoke(app, ["report", str(tmp_path / "audit")])
    assert result.exit_code == 0 and "Déjà-vu" in (tmp_path / "audit" / "report.html").read_text()


@pytest.mark.parametrize("attribute", ["nonsense"])
def test_an_unknown_attribute_is_a_clear_error(tmp_path, small_dataset, attribute):
    ckpt = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "ckpt")
    result = CliRunner().invoke(app, ["audit", "dejavu", "--target", str(ckpt), "--reference", str(ckpt),
                                      "--members", str(small_dataset), "--public", str(small_dataset),
                                      "--attribute", attribute, "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "unknown attribute" in result.output and "Traceback" not in result.output


def test_the_gap_interval_resamples_patients_when_their_records_repeat():
    rng = np.random.default_rng(0)
    y1 = rng.integers(0, 2, 40)
    a1 = np.where(rng.random(40) < 0.7, y1, 1 - y1)  # right 70% of the time
    b1 = np.where(rng.random(40) < 0.6, y1, 1 - y1)
    y, a, b = (np.repeat(v, 8) for v in (y1, a1, b1))  # 8 records per patient, all alike
    groups = [f"p{i}" for i in np.repeat(np.arange(40), 8)]
    naive = paired_gap(y, a, b, n_boot=300, seed=0, confidence=0.95)
    clustered = paired_gap(y, a, b, n_boot=300, seed=0, confidence=0.95, groups=groups)
    assert clustered["gap"] == naive["gap"]
    assert np.diff(clustered["ci"])[0] > 2 * np.diff(naive["ci"])[0]
