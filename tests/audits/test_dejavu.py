"""Deja-vu memorization: caption stripping, the neighbour vote and the paired gap on constructed embeddings
with known answers, the unseen-records control, and the command end to end (manifest checked)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedclip import models
from fedclip.audits.dejavu import controlled_gap, knn_predict, paired_gap, strip
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


def test_the_unseen_control_takes_out_what_two_models_differ_on_everyone():
    """Known answers for the control: a target better on its members *and* on records it never saw is not
    memorising (excess CI contains 0); better only on its members, it is."""
    rng = np.random.default_rng(4)

    def gap(right_target, n=80):
        y = rng.integers(0, 2, n)
        a = np.where(rng.random(n) < right_target, y, 1 - y)
        b = np.where(rng.random(n) < 0.55, y, 1 - y)
        return paired_gap(y, a, b, n_boot=400, seed=int(rng.integers(1000)), confidence=0.95)

    differ = controlled_gap(gap(0.8), gap(0.8), 0.95)
    assert differ["ci"][0] <= 0 <= differ["ci"][1]
    memorised = controlled_gap(gap(0.95), gap(0.55), 0.95)
    assert memorised["ci"][0] > 0 and memorised["excess"] > 0.2


def test_dejavu_end_to_end_with_the_control_and_the_members_manifest(tmp_path):
    from fedclip.data.synthetic import export
    from fedclip.pretrain import PretrainConfig, pretrain
    from fedclip.synth import CohortSpec
    from tests.audits.conftest import split_by_patient

    export(CohortSpec(seed=41, size=64, diabetic_rate=0.6, hospital="riverside"), tmp_path / "all", 120)
    d = split_by_patient(tmp_path / "all", tmp_path, {"members": 1 / 3, "unseen": 1 / 3, "public": 1 / 3})
    run = pretrain(PretrainConfig(data=d["members"], steps=3, batch_size=16, workers=0, warmup=1), tmp_path / "run")
    reference = models.save_checkpoint(models.create("visionclip-tiny", seed=1), tmp_path / "ref")
    args = ["-q", "audit", "dejavu", "--target", run["checkpoint"], "--reference", str(reference),
            "--public", str(d["public"])]
    result = CliRunner().invoke(app, [*args, "--members", str(d["members"]), "--unseen", str(d["unseen"]),
                                      "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert doc["manifest"]["checked"] and doc["control"]["n_unseen"] > 0
    excess = doc["control"]["members_minus_unseen"]
    assert doc["memorised"] == (excess["ci"][0] > 0)
    assert excess["excess"] == pytest.approx(doc["gap"]["gap"] - doc["control"]["gap"]["gap"])
    assert not doc["memorised"]  # three steps of pretraining memorise nothing
    html_res = CliRunner().invoke(app, ["report", str(tmp_path / "audit")])
    assert html_res.exit_code == 0 and "unseen-records control" in (tmp_path / "audit" / "report.html").read_text()
    # members that did not train the target, or an unseen set that did, are refused
    result = CliRunner().invoke(app, [*args, "--members", str(d["unseen"]), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "manifest" in result.output
    result = CliRunner().invoke(app, [*args, "--members", str(d["members"]), "--unseen", str(d["members"]),
                                      "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    # without the control the audit says what its gap may be
    result = CliRunner().invoke(app, [*args, "--members", str(d["members"]), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0 and "unseen-records control" in " ".join(result.output.split())


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
