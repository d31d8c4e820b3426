"""The whole chain that produces a report's privacy sentence: a real DP federation -> audit mia -> report."""

import json

from fedclip.audits.mia import MiaConfig, run_mia
from fedclip.audits.report import render


def test_a_report_states_the_federations_unit_epsilon_delta_and_accountant_and_a_pretrained_model_says_so(
        federation, tmp_path):
    base, cfg, _ = federation
    target = cfg.out / "checkpoints" / "last"
    doc = run_mia(target, cfg.data, cfg.eval_data, None, MiaConfig(attacks=("loss",), n_boot=20), tmp_path / "fed")
    assert doc["target"]["dp"] is True and doc["target"]["unit"] == "patient"
    assert doc["target"]["epsilon_budget"] == 8.0 and doc["target"]["delta"] == 1e-5
    html = render([tmp_path / "fed"], tmp_path / "fed-report")["html"].read_text()
    assert "fine-tuned with patient-level DP (add/remove-one patient, ε ≤ 8.0 per node" in html
    assert "δ = 1e-05" in html and "rdp accountant" in html and "pretrained (no DP)" not in html
    # the federation's starting point is a pretrained model: no DP claimed for it, and the report says so
    pre = run_mia(cfg.checkpoint, cfg.data, cfg.eval_data, None, MiaConfig(attacks=("loss",), n_boot=20),
                  tmp_path / "pre")
    assert pre["target"]["dp"] is None
    assert "pretrained (no DP)" in render([tmp_path / "pre"], tmp_path / "pre-report")["html"].read_text()
    both = json.loads(render([tmp_path / "fed", tmp_path / "pre"], tmp_path / "both")["json"].read_text())
    assert [a["target"]["dp"] for a in both["audits"]] == [True, None]
