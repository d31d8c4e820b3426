"""The synthetic-vs-real experiment at toy scale: every seed's models are evaluated on every task the
external set can measure, the summary's means, spreads and ratios are the per-seed values', and a second
run reuses what the first finished."""

import json
import statistics

import pytest

from fedclip.experiments import synthetic_vs_real as svr

pytestmark = pytest.mark.slow  # two seeds of two pretrainings and 60 evaluations: ~2 min on 2 cores


def test_two_seeds_summarise_to_their_mean_spread_and_ratio(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--seeds", "0,1", "--n", "96", "--steps", "2", "--batch-size", "16",
            "--external", "160", "--calibration", "96", "--quiet"]
    svr.main(argv)
    doc = json.loads((tmp_path / "results.json").read_text())
    seeds = [svr.run_seed(svr.parse(argv), s) for s in (0, 1)]  # cached: read back, not recomputed
    row = doc["summary"]["zero_shot/referable_dr"]
    values = [next(r for r in s["synthetic"]["zero_shot"] if r["task"] == "referable_dr")["balanced_accuracy"]
              for s in seeds]
    assert row["synthetic"]["balanced_accuracy"]["seeds"] == values
    assert row["synthetic"]["balanced_accuracy"]["mean"] == pytest.approx(statistics.fmean(values))
    assert row["synthetic"]["balanced_accuracy"]["sd"] == pytest.approx(statistics.stdev(values))
    assert row["ratio"]["balanced_accuracy"] == pytest.approx(
        row["synthetic"]["balanced_accuracy"]["mean"] / row["private"]["balanced_accuracy"]["mean"])
    assert set(doc["corpora"]["0"]) == {"private", "synthetic"}
    # zero-shot calibrated on the synthetic calibration set: the same ranking, so the same binary AUC
    calibrated = {r["task"]: r for r in seeds[0]["synthetic"]["zero_shot_calibrated"] if "skipped" not in r}
    plain = {r["task"]: r for r in seeds[0]["synthetic"]["zero_shot"]}
    assert calibrated["referable_dr"]["auc"] == pytest.approx(plain["referable_dr"]["auc"])
    assert len(calibrated["referable_dr"]["class_bias"]) == 2
    assert "| zero shot | referable_dr |" in (tmp_path / "results.md").read_text()
    # a task the toy external set cannot measure is said to be skipped, never silently averaged
    skipped = [r for s in seeds for r in s["private"]["linear_probe"] if "skipped" in r]
    assert all("single class" in r["skipped"] or "no labelled" in r["skipped"] for r in skipped)
    # a second run reuses each seed's finished evaluation
    before = (tmp_path / "seed-0" / "evaluation.json").stat().st_mtime_ns
    svr.main(argv)
    assert (tmp_path / "seed-0" / "evaluation.json").stat().st_mtime_ns == before
    assert "referable_dr" in capsys.readouterr().out
