"""Canary exposure: the formula on hand-computed ranks, canaries planted and listed by pretraining, and a
tiny model that sees a canary's secret many times exposes it far beyond never-trained controls."""

import csv
import json
import math

import pytest
from typer.testing import CliRunner

from fedclip import models
from fedclip.audits.exposure import exposure
from fedclip.cli.main import app
from fedclip.data import canaries


def test_exposure_of_a_secret_ranked_first_last_and_in_the_middle():
    import numpy as np

    assert exposure(1.0, np.zeros(999), 10_000) == pytest.approx(math.log2(10_000))
    assert exposure(0.0, np.ones(999), 10_000) == pytest.approx(0.0)
    # half of the candidates score higher: estimated rank 1 + 0.5 * 9999
    assert exposure(0.5, np.r_[np.ones(500), np.zeros(500)], 10_000) == pytest.approx(
        math.log2(10_000) - math.log2(1 + 0.5 * 9_999))


def test_pretraining_plants_canaries_and_controls_and_lists_only_the_planted(small_dataset, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["-q", "pretrain", "--out", str(run), "--data", str(small_dataset), "--steps", "2",
                                      "--batch-size", "16", "--workers", "0", "--canaries", "3",
                                      "--canary-repeats", "2,5"])
    assert result.exit_code == 0, result.output
    planted = canaries.read(run)
    assert [c.repeats for c in planted] == [2, 5, 2, 0, 0, 0]
    assert len({c.secret for c in planted}) == 6 and all((run / c.filepath).is_file() for c in planted)
    assert planted[0].caption.endswith(f"Reference code {' '.join(f'{planted[0].secret:04d}')}.")
    with open(run / "members.csv", newline="") as fh:
        listed = [r for r in csv.DictReader(fh) if r["hospital"] == canaries.CANARY_HOSPITAL]
    assert sorted(r["patient_id"] for r in listed) == ["canary-0000", "canary-0001", "canary-0002"]
    provenance = models.read_checkpoint_config(run / "checkpoints" / "last")["provenance"]
    assert provenance["canaries"] == "canaries.csv" and len(provenance["canaries_sha256"]) == 64


@pytest.mark.slow
def test_a_repeated_canary_is_exposed_far_beyond_controls_and_an_untrained_reference(small_dataset, tmp_path):
    run, runner = tmp_path / "run", CliRunner()
    # 8 planted vs 8 controls: an exact test can then reach p = 1/12,870 (with 4 vs 4 it stops at 1/70, and
    # the 150-step, 8-repeat run this test used before overlapped its controls: p = 0.13)
    result = runner.invoke(app, ["-q", "pretrain", "--out", str(run), "--data", str(small_dataset), "--steps", "200",
                                 "--batch-size", "16", "--lr", "1e-3", "--workers", "0", "--canaries", "8",
                                 "--canary-repeats", "16"])
    assert result.exit_code == 0, result.output
    models.save_checkpoint(models.create("visionclip-tiny", seed=1), tmp_path / "untrained")
    result = runner.invoke(app, ["-q", "audit", "exposure", "--target", str(run / "checkpoints" / "last"), "--run",
                                 str(run), "--reference", str(tmp_path / "untrained"), "--candidates", "300",
                                 "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "audit" / "results.json").read_text())
    planted, controls = doc["by_repeats"]["16"], doc["by_repeats"]["0"]
    assert doc["memorised_at_repeats"] == ["16"], planted["gap_to_controls"]
    assert planted["gap_to_controls"]["gap"] > 1.0, planted  # bits
    # measured: 2.5 bits above controls (p 0.008), 2.0 above an untrained reference (p 0.03)
    assert planted["gap_to_reference"]["gap"] > 1.0 and planted["gap_to_reference"]["p_value"] < 0.05, planted
    assert controls["target"]["mean"] < 3.0  # chance is ~1.44 bits
    result = runner.invoke(app, ["report", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert "Canary exposure" in (tmp_path / "audit" / "report.html").read_text()


def test_exposure_of_a_run_without_canaries_is_a_clear_error(tmp_path):
    models.save_checkpoint(models.create("visionclip-tiny", seed=1), tmp_path / "ckpt")
    result = CliRunner().invoke(app, ["audit", "exposure", "--target", str(tmp_path / "ckpt"), "--run", str(tmp_path),
                                      "--out", str(tmp_path / "audit")])
    assert result.exit_code == 2 and "--canaries" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "audit").exists()


def test_the_memorised_decision_holds_its_error_rate_under_the_null_with_four_canaries():
    """Planted and control canaries with exposures from one distribution (uniform ranks, nothing learnt):
    the exact permutation test fires in at most its level (the bootstrap interval it replaces: 7% at 2.5%)."""
    import numpy as np

    from fedclip.audits.exposure import ExposureConfig, _gap_ci

    rng = np.random.default_rng(5)
    cfg = ExposureConfig(n_boot=50)
    space = 10_000
    fired = 0
    for _ in range(300):
        ranks = rng.integers(1, space + 1, 8)
        e = np.log2(space) - np.log2(ranks)
        fired += _gap_ci(e[:4], e[4:], cfg, rng)["p_value"] < 0.025
    assert fired <= 0.025 * 300 + 6  # 7.5 expected at most; the bootstrap rule gave about 21
    strong = _gap_ci(np.full(4, 13.0), np.array([1.0, 0.5, 2.0, 1.5]), cfg, rng)
    assert strong["p_value"] == pytest.approx(1 / 70)  # the smallest an exact 4-vs-4 test can give
    one = _gap_ci(np.array([13.0]), np.array([1.0, 0.5, 2.0, 13.0]), cfg, rng)  # one canary of a repeat count
    assert one["p_value"] == pytest.approx(2 / 5) and one["smallest_p"] == pytest.approx(1 / 5)
