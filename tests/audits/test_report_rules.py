"""The report's rules on constructed audits with known answers: resolution with 20 non-members, clustered
bootstrap, simultaneous intervals, verdicts that weigh the confound check and AUC below 0.5, redaction by
default, the banner when records are shown, the sign-off page and the evidence bundle."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedclip.audits import metrics
from fedclip.audits.mia import verdict
from fedclip.audits.report import render
from fedclip.audits.report.evidence import keygen, verify
from fedclip.audits.results import AuditError, write_results
from fedclip.cli.main import app
from tests.audits.conftest import pdf_pages

runner = CliRunner()


def test_twenty_non_members_resolve_ten_percent_fpr_and_nothing_finer():
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(40), np.zeros(20)]
    res = metrics.summarise(member, rng.normal(size=60) + member, n_boot=100)
    assert res["min_fpr"] == pytest.approx(0.05)
    assert res["tpr@0.1"] is not None and res["ci"]["tpr@0.1"] is not None
    assert res["tpr@0.01"] is None and res["tpr@0.001"] is None and res["ci"]["tpr@0.01"] is None
    assert metrics.describe_tpr(res, 0.01) == "not resolvable with 20 non-members"
    assert metrics.finest_fpr(res) == 0.1
    assert 0 <= res["tpr@0fp"] <= res["tpr@0.1"]
    big = metrics.summarise(np.r_[np.ones(50), np.zeros(1000)], rng.normal(size=1050), n_boot=20)
    assert metrics.finest_fpr(big) == 0.001


def test_the_bootstrap_resamples_patients_and_simultaneous_intervals_are_wider():
    # 30 + 30 patients with 8 images each; a patient's images share most of their score and nothing separates
    # members: resampling images as if independent makes the interval too narrow
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(60), 8)
    member = (patients < 30).astype(int)
    score = rng.normal(size=60)[patients] + 0.3 * rng.normal(size=len(patients))
    naive = metrics.summarise(member, score, n_boot=400)
    clustered = metrics.summarise(member, score, n_boot=400, groups=patients)
    width = lambda r: r["ci"]["auc"][1] - r["ci"]["auc"][0]  # noqa: E731
    assert clustered["bootstrap"] == "patients" and width(clustered) > 1.8 * width(naive)
    family = metrics.summarise(member, score, n_boot=400, groups=patients, family=3)
    assert family["ci_level"] == pytest.approx(1 - 0.05 / 3) and width(family) > width(clustered)


def _doc(member: np.ndarray, scores: dict[str, np.ndarray], *, confound_auc: float = 0.52,
         patients: list[str] | None = None) -> dict:
    attacks = {}
    for name, s in scores.items():
        e = metrics.summarise(member, s, n_boot=200, family=len(scores))
        e["roc"] = metrics.roc(member, s)
        attacks[name] = {"patient": e, "image": e, "per_hospital": {}}
    return {"kind": "mia", "level": "patient", "attacks": attacks,
            "confound": {"auc": confound_auc, "threshold": 0.6, "confounded": confound_auc > 0.6,
                         "classifier": "logistic regression, 5-fold cross-validated"}}


def test_verdicts_weigh_the_confound_check_auc_below_half_and_resolution():
    rng = np.random.default_rng(2)
    member = np.r_[np.ones(40), np.zeros(20)]
    strong = 3 * member + rng.normal(size=60)
    v = verdict(_doc(member, {"loss": strong}))
    assert v["answer"] == "leaks" and "10.0% false-positive rate" in v["text"] and "1%" not in v["text"]
    assert "the finest rate 20 non-members resolve" in v["text"]
    v = verdict(_doc(member, {"loss": strong}, confound_auc=0.67))
    assert v["answer"] == "confounded" and "leaks" not in v["text"] and "blind-baseline AUC 0.670" in v["text"]
    assert "matched" in v["text"]
    v = verdict(_doc(member, {"loss": -strong, "lira": rng.normal(size=60)}))
    assert v["answer"] == "below chance" and "not membership leakage" in v["text"] and "loss" in v["text"]
    v = verdict(_doc(np.r_[np.ones(5), np.zeros(5)], {"loss": np.r_[np.ones(5), np.zeros(5)]}))
    assert v["answer"] == "too few"
    v = verdict(_doc(member, {"loss": rng.normal(size=60)}))
    assert v["answer"] == "no evidence" and "contains 0.5" in v["text"]


def test_an_auc_above_what_the_targets_epsilon_permits_contradicts_its_dp_claim():
    """ε = 1 per patient allows any attack an AUC of at most 0.731: a CI above that is evidence against the
    claim, not "leakage within DP"; at ε = 8 the same separation is leakage the claim allows."""
    rng = np.random.default_rng(3)
    member = np.r_[np.ones(40), np.zeros(40)]
    strong = 4 * member + rng.normal(size=80)

    def target(eps, unit="patient"):
        return {"dp": True, "epsilon_budget": eps, "delta": 1e-5, "unit": unit, "accountant": "rdp",
                "neighbouring": f"add/remove-one {unit}"}

    v = verdict(_doc(member, {"loss": strong}) | {"target": target(1.0)})
    assert v["answer"] == "contradicts DP" and "0.731" in v["text"] and "ε = 1, δ = 1e-05 per patient" in v["text"]
    v = verdict(_doc(member, {"loss": strong}) | {"target": target(8.0)})
    assert v["answer"] == "leaks" and "within what ε = 8" in v["text"]
    # image-level DP bounds nothing per patient (group privacy): no ceiling is claimed
    v = verdict(_doc(member, {"loss": strong}) | {"target": target(1.0, "image")})
    assert v["answer"] == "leaks" and "within" not in v["text"]
    v = verdict(_doc(member, {"loss": strong}) | {"target": {"dp": None}})
    assert v["answer"] == "leaks"


def _audit_dir(tmp_path: Path, *, leaking: bool, confound_auc: float = 0.52) -> Path:
    """A membership audit as `audit mia` writes it, with constructed scores for 40 members and 20
    non-members (one image per patient) whose ids and file names the redaction test looks for."""
    rng = np.random.default_rng(3)
    member = np.r_[np.ones(40), np.zeros(20)].astype(int)
    score = (3 * member if leaking else 0) + rng.normal(size=60)
    doc = _doc(member, {"loss": score}, confound_auc=confound_auc)
    out = tmp_path / ("leaky" if leaking else "clean")
    ids = [f"PATIENT-{i:03d}" for i in range(60)]
    files = [f"/data/hospital/img_{i:03d}.png" for i in range(60)]
    with open(out.mkdir(parents=True) or out / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["record", "patient_id", "hospital", "member", "attack", "score"])
        w.writerows([f, p, "riverside", m, "loss", s] for f, p, m, s in zip(files, ids, member, score, strict=True))
    doc.update({
        "kind": "mia", "fedclip_version": "test",
        "target": {"checkpoint": "/runs/fed/checkpoints/last", "model": "visionclip-tiny", "weights_sha256": "ab" * 32,
                   "stage": "federate", "dp": True, "epsilon_budget": 8.0, "delta": 1e-5, "unit": "patient",
                   "accountant": "rdp", "neighbouring": "add/remove-one patient", "ledger_epsilon": {"h0": 7.9}},
        "data": {"members": "/data/hospital", "nonmembers": "/data/hospital-holdout", "n_members": 40,
                 "n_nonmembers": 20, "n_patients": 60},
        "signal": "logit margin", "references": {}, "warnings": [],
        "config": {"gamma": 1.0, "offline_a": 0.3, "n_boot": 200, "seed": 0, "confidence": 0.95}})
    doc["verdict"] = verdict(doc)
    write_results(out, doc, {"members": {"path": "/data/hospital", "records": 40, "metadata_sha256": "1" * 64,
                                         "images_sha256": "2" * 64}})
    return out


def _pdf_pages(pdf: Path) -> list[str]:
    return [p for p in pdf_pages(pdf) if p.strip()]


def test_the_report_is_redacted_by_default_and_marks_every_page_when_records_are_shown(tmp_path):
    audit = _audit_dir(tmp_path, leaking=True)
    red = render([audit], tmp_path / "red")
    body = red["html"].read_text() + red["json"].read_text() + "".join(_pdf_pages(red["pdf"]))
    assert not re.search(r"PATIENT-\d|img_\d|/data/hospital|/runs/fed", body)
    assert "CONTAINS PATIENT RECORDS" not in body
    html = red["html"].read_text()
    assert "not resolvable with 20 non-members" in html and "membership leaks" in html
    assert "10.0% false-positive rate" in html and "fine-tuned with patient-level DP" in html
    for needle in ("threat model", "attacker knowledge", "limitation", "audited at", "torch", "input: members"):
        assert needle in html, needle
    shown = render([audit], tmp_path / "shown", redact=False)
    pages = _pdf_pages(shown["pdf"])
    assert len(pages) >= 2 and all("CONTAINS PATIENT RECORDS" in p for p in pages)
    assert "PATIENT-0" in shown["html"].read_text() and "/data/hospital" in shown["json"].read_text()


def test_a_confounded_audit_is_never_reported_as_leaking(tmp_path):
    html = render([_audit_dir(tmp_path, leaking=True, confound_auc=0.67)], tmp_path / "r")["html"].read_text()
    assert "cannot separate leakage from distribution shift" in html and "membership leaks" not in html


def test_the_sign_off_page_judges_each_criterion(tmp_path):
    leaky, clean = _audit_dir(tmp_path, leaking=True), _audit_dir(tmp_path, leaking=False)
    crit = tmp_path / "criteria.toml"
    crit.write_text("[criteria]\nmia_auc_upper = 0.6\nmia_tpr_at_1pct = 0.02\ndp_required = true\n"
                    "near_copies = 0\n[signatories]\nnames = ['Privacy officer']\n")
    paths = render([leaky, clean], tmp_path / "r", criteria=crit)
    doc = json.loads(paths["json"].read_text())
    auc = [j for j in doc["signoff"]["criteria"] if j["criterion"] == "mia_auc_upper"]
    assert sorted(j["status"] for j in auc) == ["met", "not met"]
    assert {j["status"] for j in doc["signoff"]["criteria"] if j["criterion"] == "mia_tpr_at_1pct"} == {
        "not resolvable"}
    assert [j["status"] for j in doc["signoff"]["criteria"] if j["criterion"] == "near_copies"] == ["not measured"]
    assert doc["signoff"]["overall"].startswith("NOT MET")
    pages = _pdf_pages(paths["pdf"])
    assert "Sign-off" in pages[-1] and "Privacy officer" in pages[-1]
    bad = tmp_path / "bad.toml"
    bad.write_text("[criteria]\nmia_auc = 0.6\n")
    res = runner.invoke(app, ["report", str(leaky), "--out", str(tmp_path / "x"), "--criteria", str(bad)])
    assert res.exit_code == 2 and "unknown criterion 'mia_auc'" in res.output and "bad.toml" in res.output
    assert not (tmp_path / "x").exists()  # nothing half-written
    bad.write_text("[criteria]\nmia_auc_upper = 'low'\n")
    with pytest.raises(AuditError, match="mia_auc_upper = 'low' must be a number"):
        render([leaky], tmp_path / "y", criteria=bad)


def test_the_evidence_bundle_detects_a_changed_file_and_checks_the_officers_signature(tmp_path):
    audit = _audit_dir(tmp_path, leaking=False)
    key = tmp_path / "keys" / "officer.pem"
    res = runner.invoke(app, ["keygen", "--out", str(key)])
    assert res.exit_code == 0, res.output
    assert (key.stat().st_mode & 0o777) == 0o600
    res = runner.invoke(app, ["report", str(audit), "--out", str(tmp_path / "r"), "--sign-key", str(key)])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "r" / "evidence.json").read_text())
    roles = [f["role"] for f in ev["files"]]
    assert roles.count("report") == 3 and roles.count("audit 1") == 2 and ev["signature"]["algorithm"] == "Ed25519"
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) for f in ev["files"])
    assert verify(tmp_path / "r", Path(f"{key}.pub"))["signed"]
    res = runner.invoke(app, ["verify", str(tmp_path / "r"), "--public-key", f"{key}.pub"])
    assert res.exit_code == 0 and "unchanged" in res.output and "signature valid" in res.output
    other, _ = keygen(tmp_path / "keys" / "other.pem")
    with pytest.raises(AuditError, match="does not verify with the given public key"):
        verify(tmp_path / "r", Path(f"{other}.pub"))
    scores = audit / "scores.csv"
    scores.write_text(scores.read_text().replace("riverside", "northgate", 1))
    res = runner.invoke(app, ["verify", str(tmp_path / "r")])
    assert res.exit_code == 2 and "scores.csv changed" in res.output and "Traceback" not in res.output
    with pytest.raises(AuditError, match="exists"):
        keygen(key)


def test_the_shipped_criteria_example_names_every_criterion():
    from fedclip.audits.report.signoff import CRITERIA, read_criteria

    crit = read_criteria(Path(__file__).parents[2] / "docs" / "signoff-criteria.toml")
    assert set(crit["criteria"]) == set(CRITERIA) and crit["signatories"]


def test_the_side_by_side_epsilon_row_states_the_audited_claim_and_the_nodes_ledger():
    from fedclip.audits.report.kinds import epsilon_row

    doc = {"kind": "epsilon", "name": "epsilon-fed", "threat": "white-box", "method": "one-run", "epsilon_lb": 1.7,
           "tightness": 0.21, "theoretical": {"epsilon": 7.994, "unit": "patient"}, "ledger_epsilon": 7.999}
    row = epsilon_row(doc, redact=True)
    assert row[2:4] == ["yes (patient)", "7.99 / 8.00"]  # a replayed node: its accountant's ε and its ledger's
    assert epsilon_row({**doc, "ledger_epsilon": None}, redact=True)[3] == "7.99 / -"  # a re-run has no ledger
