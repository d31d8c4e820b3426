"""Membership inference end to end on fedclip's own fine-tuning: it finds memory where there is some, finds
none where DP forbids it, and refuses inconsistent inputs. One image per patient, so the image is the patient
and image-level DP protects the patient (see docs/audits.md for what happens with near-duplicate images)."""

import csv
import json

import pytest

from fedclip.audits.mia import MiaConfig, run_mia
from fedclip.audits.results import AuditError
from fedclip.data.records import read_metadata, write_metadata
from fedclip.errors import FedclipError
from tests.audits.conftest import federated_target

pytestmark = pytest.mark.slow

# a deliberately overfit head: 5-class DR grade, 150 epochs of AdamW on 120 records
OVERFIT = {"task": "dr_grade", "epochs": 150, "lr": 3e-3, "optimizer": "adamw"}


def test_an_overfit_model_leaks_and_every_figure_can_be_recomputed(cohort, tmp_path):
    root, base, d = cohort
    target = federated_target(base, d["members"], tmp_path / "overfit", dp=False, **OVERFIT)
    doc = run_mia(target, d["members"], d["nonmembers"], d["population"],
                  MiaConfig(attacks=("loss", "lira", "rmia"), refs=2, n_boot=300), tmp_path / "audit")
    assert doc["level"] == "patient" and doc["confound"]["confounded"] is False
    rmia = doc["attacks"]["rmia"]["patient"]
    assert rmia["ci"]["auc"][0] > 0.6, rmia  # well above chance, with its CI
    assert doc["attacks"]["loss"]["patient"]["ci"]["auc"][0] > 0.5
    assert any("no member manifest" in w for w in doc["warnings"])
    saved = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert saved["references"]["count"] == 2 and saved["signal"].startswith("logit margin")
    assert "lira" not in doc["attacks"] and any("LiRA needs at least 4" in w for w in doc["warnings"])
    with open(tmp_path / "audit" / "scores.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["attack"] == "rmia"]
    assert len(rows) == doc["data"]["n_members"] + doc["data"]["n_nonmembers"]
    from fedclip.audits import metrics
    again = metrics.point([int(r["member"]) for r in rows], [float(r["score"]) for r in rows])
    assert again["auc"] == pytest.approx(doc["attacks"]["rmia"]["image"]["auc"], abs=1e-4)
    # a second audit of the same data reuses the cached reference models
    cached = sorted(p.name for p in (tmp_path / "audit" / "refs").iterdir())
    run_mia(target, d["members"], d["nonmembers"], d["population"],
            MiaConfig(attacks=("rmia",), refs=2, n_boot=50), tmp_path / "audit")
    assert sorted(p.name for p in (tmp_path / "audit" / "refs").iterdir()) == cached
    with pytest.raises(AuditError, match="LiRA needs at least 4"):
        run_mia(target, d["members"], d["nonmembers"], d["population"],
                MiaConfig(attacks=("lira",), refs=2, n_boot=50), tmp_path / "audit")


def test_the_same_training_with_dp_at_epsilon_1_is_indistinguishable_from_chance(cohort, tmp_path):
    root, base, d = cohort
    target = federated_target(base, d["members"], tmp_path / "dp1", dp=True, epsilon=1.0, **OVERFIT)
    doc = run_mia(target, d["members"], d["nonmembers"], None, MiaConfig(attacks=("loss",), n_boot=300),
                  tmp_path / "audit")
    lo, hi = doc["attacks"]["loss"]["patient"]["ci"]["auc"]
    assert lo < 0.5 < hi


def test_unseen_vs_unseen_gives_chance(cohort, tmp_path):
    root, base, d = cohort
    target = federated_target(base, d["members"], tmp_path / "t", dp=False, epochs=5)
    doc = run_mia(target, d["nonmembers"], d["population"], None, MiaConfig(attacks=("loss",), n_boot=300),
                  tmp_path / "audit")  # neither set trained the target
    lo, hi = doc["attacks"]["loss"]["patient"]["ci"]["auc"]
    assert lo < 0.5 < hi


def test_inconsistent_inputs_are_clear_errors(cohort, tmp_path):
    root, base, d = cohort
    target = federated_target(base, d["members"], tmp_path / "t", dp=False, epochs=1)
    with pytest.raises(AuditError, match="share .* patient"):
        run_mia(target, d["members"], d["members"], None, MiaConfig(attacks=("loss",)), tmp_path / "a")
    empty = tmp_path / "empty"
    write_metadata(empty, [])
    with pytest.raises(FedclipError, match="empty"):
        run_mia(target, d["members"], empty, None, MiaConfig(attacks=("loss",)), tmp_path / "a")
    with pytest.raises(AuditError, match="complementary pairs"):
        run_mia(target, d["members"], d["nonmembers"], None, MiaConfig(refs=3), tmp_path / "a")
    with pytest.raises(AuditError, match="unknown attack"):
        run_mia(target, d["members"], d["nonmembers"], None, MiaConfig(attacks=("shadow",)), tmp_path / "a")


def test_a_pretrained_target_checks_its_member_manifest(cohort, tmp_path):
    from fedclip.pretrain import PretrainConfig, pretrain

    root, base, d = cohort
    run = tmp_path / "pre"
    pretrain(PretrainConfig(data=d["members"], steps=2, batch_size=16, warmup=1, workers=0), run)
    target = run / "checkpoints" / "last"
    doc = run_mia(target, d["members"], d["nonmembers"], None, MiaConfig(attacks=("loss", "rmia"), n_boot=50),
                  tmp_path / "a")
    assert doc["manifest"]["checked"] and doc["signal"].startswith("cosine similarity")
    assert any("rmia not run" in w for w in doc["warnings"])
    with pytest.raises(AuditError, match="not in the target's manifest"):
        run_mia(target, d["population"], d["nonmembers"], None, MiaConfig(attacks=("loss",)), tmp_path / "b")
    rows = read_metadata(d["members"])  # one image per patient: halves are patient-disjoint
    write_metadata(tmp_path / "m1", rows[:60])
    write_metadata(tmp_path / "m2", rows[60:])
    with pytest.raises(AuditError, match="non-member.*in the target's manifest"):
        run_mia(target, tmp_path / "m1", tmp_path / "m2", None, MiaConfig(attacks=("loss",)), tmp_path / "c")
    (run / "members.csv").write_text((run / "members.csv").read_text() + "x.png,p,h\n")
    with pytest.raises(AuditError, match="altered"):
        run_mia(target, tmp_path / "m1", d["nonmembers"], None, MiaConfig(attacks=("loss",)), tmp_path / "d")


def test_the_manifest_check_knows_a_record_by_path_and_patient(tmp_path):
    """Two dataset dirs both hold images/0000/00000000.png: a non-member from the other dir is not a member."""
    import hashlib

    from fedclip.audits.mia import check_manifest
    from fedclip.data.records import Record, manifest_text

    def rec(patient):
        return Record("images/0000/00000000.png", "a fundus photograph", {}, {"patient_id": patient})

    run = tmp_path / "run"
    (run / "checkpoints" / "last").mkdir(parents=True)
    text = manifest_text([rec("RIV0-0000000")])
    (run / "members.csv").write_text(text)
    provenance = {"members": "members.csv", "members_sha256": hashlib.sha256(text.encode()).hexdigest()}
    target = run / "checkpoints" / "last"
    assert check_manifest(target, provenance, [rec("RIV0-0000000")], [rec("RIV1-0000000")])["checked"]
    with pytest.raises(AuditError, match="1 non-member"):
        check_manifest(target, provenance, [rec("RIV0-0000000")], [rec("RIV0-0000000")])
    with pytest.raises(AuditError, match="1 member"):
        check_manifest(target, provenance, [rec("RIV1-0000000")], [])


def test_members_via_is_checked(tmp_path, cohort):
    root, base, dirs = cohort
    with pytest.raises(AuditError, match="members_via 'pixels': use training or generator"):
        run_mia(base, dirs["members"], dirs["nonmembers"], None, MiaConfig(attacks=("loss",), members_via="pixels"),
                tmp_path / "audit")
