"""Empirical epsilon: lower bounds stay below the accountant's epsilon on correct DP training, and the white-box
audit catches a mechanism whose noise is secretly off while its accounting claims epsilon = 1."""

import pytest
import torch

from fedclip.audits.epsilon import EpsilonConfig, prepare, run_epsilon
from fedclip.audits.results import AuditError
from fedclip.finetune import FinetuneConfig


def _training(cohort, epsilon):
    root, base, d = cohort
    ft = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=3, batch_size=32, lr=1.0, dp=True,
                        epsilon=epsilon, rounds=1)
    return prepare(base, d["members"], ft)


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
@pytest.mark.parametrize("threat", ["white-box", "black-box"])
def test_the_bound_never_exceeds_the_accountants_epsilon_on_correct_dp(cohort, tmp_path, epsilon, threat):
    t = _training(cohort, epsilon)
    for seed in range(3):
        # confidence 0.999: a false exceedance is then a one-in-a-thousand event per run, by design
        doc = run_epsilon(t, EpsilonConfig(threat=threat, canaries=400, confidence=0.999, seed=seed),
                          tmp_path / f"a{seed}", source={})
        assert doc["epsilon_lb"] <= doc["theoretical"]["epsilon"], doc["bound"]
        assert doc["theoretical"]["epsilon"] == pytest.approx(epsilon, rel=0.02)


def test_the_white_box_audit_catches_noise_secretly_off(cohort, tmp_path):
    t = _training(cohort, 1.0)
    doc = run_epsilon(t, EpsilonConfig(threat="white-box", canaries=400, confidence=0.95), tmp_path / "lie",
                      source={}, insecure_break_for_tests="noise-off")
    assert doc["theoretical"]["epsilon"] == pytest.approx(1.0, rel=0.02)  # what the ledger would claim
    assert doc["epsilon_lb"] > 1.0, doc["bound"]
    assert "SECRETLY BROKEN: noise-off" in doc["mechanism"]


@pytest.mark.slow
def test_trials_bound_from_many_trainings(cohort, tmp_path):
    t = _training(cohort, 1.0)
    honest = run_epsilon(t, EpsilonConfig(method="trials", trials=100, confidence=0.95), tmp_path / "h", source={})
    assert honest["epsilon_lb"] <= honest["theoretical"]["epsilon"]
    assert honest["bound"]["trials_in"] == 50 and honest["bound"]["trials_out"] == 50
    broken = run_epsilon(t, EpsilonConfig(method="trials", trials=100, confidence=0.95), tmp_path / "b", source={},
                         insecure_break_for_tests="noise-off")
    assert broken["epsilon_lb"] > 1.0, broken["bound"]  # the lie caught by the many-trainings method too


def test_unknown_method_or_threat_and_non_dp_training_are_errors(cohort, tmp_path):
    t = _training(cohort, 1.0)
    with pytest.raises(AuditError, match="unknown threat"):
        run_epsilon(t, EpsilonConfig(threat="grey-box"), tmp_path, source={})
    with pytest.raises(AuditError, match="unknown method"):
        run_epsilon(t, EpsilonConfig(method="many"), tmp_path, source={})
    root, base, d = cohort
    with pytest.raises(AuditError, match="dp=false"):
        prepare(base, d["members"], FinetuneConfig(dp=False))


def test_a_checkpoint_audit_needs_a_positive_claimed_epsilon_and_never_assumes_one(cohort, tmp_path):
    from typer.testing import CliRunner

    from fedclip.cli.main import app

    root, base, d = cohort
    for args, needle in ((["--epsilon", "0"], "--epsilon 0.0"), ([], "--epsilon None"),
                         (["--epsilon", "1", "--delta", "0"], "--delta 0.0")):
        res = CliRunner().invoke(app, ["audit", "epsilon", "--checkpoint", str(base), "--data", str(d["members"]),
                                       *args, "--out", str(tmp_path / "a")])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "a").exists()
    res = CliRunner().invoke(app, ["audit", "epsilon", "--run", str(tmp_path), "--set", "finetune.epochs=2"])
    assert res.exit_code == 2 and "a --run brings its own" in res.output


def test_a_checkpoint_audit_runs_the_training_the_user_states_not_one_chosen_for_them(cohort, tmp_path):
    import json

    from typer.testing import CliRunner

    from fedclip.cli.main import app

    root, base, d = cohort
    res = CliRunner().invoke(app, ["audit", "epsilon", "--checkpoint", str(base), "--data", str(d["members"]),
                                   "--epsilon", "2", "--canaries", "20", "--set", "finetune.epochs=2",
                                   "--set", "finetune.batch_size=16", "--set", "finetune.train_blocks=0",
                                   "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    training = doc["training"]
    assert (training["epochs"], training["batch_size"], training["epsilon"]) == (2, 16, 2.0)
    assert training["lr"] == FinetuneConfig().lr  # unset: the library's default, stated in results.json
    assert doc["theoretical"]["sample_rate"] == pytest.approx(16 / training["n"])


@pytest.mark.parametrize("engine", ["bk", "hooks"])
def test_the_white_box_audit_catches_a_missing_clip_and_reports_its_power(cohort, tmp_path, engine):
    """Canaries enter before clipping, so a clip secretly off is caught (measured with 2,000 canaries: ε_lb
    about 4 against a claimed 1.0, on both engines); the honest mechanism is not. The power check records what
    the audit catches and what it misses (noise halved, true ε about 2.2: ε_lb 0.6-1.1 with 5,000 canaries,
    docs/audits.md — at the edge of what one run can show)."""
    root, base, d = cohort
    ft = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=3, batch_size=32, lr=1.0, dp=True,
                        epsilon=1.0, rounds=1, grad_sample_mode=engine)
    t = prepare(base, d["members"], ft)
    doc = run_epsilon(t, EpsilonConfig(threat="white-box", canaries=2000), tmp_path / "a", source={},
                      check_power=True)
    claim = doc["theoretical"]["epsilon"]
    assert doc["epsilon_lb"] <= claim and doc["mechanism"] == "as configured"
    assert doc["power"]["clip-off"]["caught"] and doc["power"]["clip-off"]["epsilon_lb"] > 2 * claim
    b = doc["bound"]  # both one-run analyses of the same guesses, the headline the larger
    assert b["epsilon_lb"] == max(b["epsilon_dp"]["epsilon_lb"], b["gdp"]["epsilon_lb"]) and b["canaries"] == 2000
    assert set(doc["power"]) == {"noise-half", "clip-off"}
    with pytest.raises(AuditError, match="one-run"):
        run_epsilon(t, EpsilonConfig(method="trials", trials=2), tmp_path / "b", source={}, check_power=True)


def test_a_patient_level_training_is_audited_per_patient(cohort, tmp_path):
    root, base, d = cohort
    ft = FinetuneConfig(task="referable_dr", train_blocks=0, epochs=2, batch_size=32, lr=1.0, dp=True,
                        epsilon=2.0, rounds=1, unit="patient")
    t = prepare(base, d["members"], ft)
    assert t.patients is not None and len(t.patients) == len(t.tokens)
    doc = run_epsilon(t, EpsilonConfig(canaries=300, confidence=0.999), tmp_path / "a", source={})
    th = doc["theoretical"]
    assert th["unit"] == "patient" and th["neighbouring"] == "add/remove-one patient"
    assert th["epsilon"] == pytest.approx(2.0, rel=0.02) and doc["epsilon_lb"] <= th["epsilon"]


def test_black_box_canaries_lie_off_the_datas_span_at_its_scale():
    """Constructed: 40 records in a 12-dimensional subspace of 64 features; every crafted input is orthogonal to
    each record and to the constant vector (what a layer norm removes), at the records' mean norm."""
    from fedclip.audits.epsilon import outlier_inputs

    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 12, generator=gen))[0].T
    records = (torch.randn(40, 12, generator=gen) @ basis + 3.0)[:, None, :]  # (records, 1 token, 64)
    canaries = outlier_inputs(records, 30, gen)
    assert canaries.shape == (30, 1, 64)
    flat = canaries[:, 0].double()
    assert (flat @ records[:, 0].double().T).abs().max() < 1e-6 * flat.norm(dim=1).max() * records.norm(dim=-1).max()
    assert flat.sum(1).abs().max() < 1e-6 * flat.norm(dim=1).max()
    assert float(flat.norm(dim=1).mean()) == pytest.approx(float(records[:, 0].norm(dim=1).mean()), rel=1e-4)
    assert (flat @ flat.T - torch.diag(flat.pow(2).sum(1))).abs().max() < flat.pow(2).sum(1).mean()  # not one input
