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


def test_the_epsilon_audit_replays_the_mechanism_a_node_deployed_from_its_ledger(federation, tmp_path):
    """`audit epsilon --run RUN --node-dir STATE/client-K`: the node's recorded rounds (σ, q, steps, unit,
    released size) on its own partition, so the audited ε is the ledger's training ε, per patient."""
    from typer.testing import CliRunner

    from fedclip.audits.epsilon import EpsilonConfig, prepare_deployed, run_epsilon
    from fedclip.cli.main import app
    from fedclip.run import RunDir, read_ledger

    base, cfg, _ = federation
    node = base / "nodes" / "client-1"
    t = prepare_deployed(cfg.out, node)
    assert t.ft.unit == "patient" and len(t.plan) == cfg.rounds and t.patients is not None
    assert "replayed from client-1's ledger" in t.theoretical["mechanism"]
    entries = [json.loads(line) for line in next(node.glob("ledger-*.jsonl")).read_text().splitlines()]
    trained = [e for e in entries if e["kind"] == "train"]
    assert [(r.sigma, r.q, r.steps) for r in t.plan] == [(e["noise_multiplier"], e["sample_rate"], e["steps"])
                                                          for e in trained]
    # the training part of the node's lifetime ledger: the last train entry's epsilon less the size releases'
    assert t.theoretical["epsilon"] <= t.ledger_epsilon + 1e-9
    assert t.ledger_epsilon == max(e["epsilon"] for e in entries)
    assert t.ledger_epsilon in {r.epsilon for r in read_ledger(RunDir(cfg.out))}  # what the server was told
    doc = run_epsilon(t, EpsilonConfig(canaries=300, confidence=0.999), tmp_path / "a", source={})
    assert doc["epsilon_lb"] <= doc["theoretical"]["epsilon"] and doc["theoretical"]["unit"] == "patient"
    lie = run_epsilon(t, EpsilonConfig(canaries=3000), tmp_path / "b", source={}, insecure_break_for_tests="noise-off")
    # the deployed mechanism with its noise off: at the ceiling of what 3,000 canaries can show (about 7; a
    # claim of 8 is beyond one run's reach), far above the honest mechanism's bound
    assert lie["epsilon_lb"] > max(5.0, 2 * doc["epsilon_lb"]), (lie["epsilon_lb"], doc["epsilon_lb"])
    # the CLI: --node-dir needs --run; a node dir that is no node says what to pass
    res = CliRunner().invoke(app, ["audit", "epsilon", "--node-dir", str(node)])
    assert res.exit_code == 2 and "--run" in res.output
    res = CliRunner().invoke(app, ["audit", "epsilon", "--run", str(cfg.out), "--node-dir", str(tmp_path)])
    assert res.exit_code == 2 and "ledger" in res.output
    res = CliRunner().invoke(app, ["audit", "epsilon", "--run", str(cfg.out), "--node-dir", str(node),
                                   "--canaries", "100", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0 and "per patient" in res.output, res.output
