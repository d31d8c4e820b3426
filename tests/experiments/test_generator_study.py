"""The memorization study's whole chain at toy scale (slow): stages, resume, table, figure."""

import json

import pytest

from fedclip.experiments.generator_study import GeneratorStudy, GeneratorStudyConfig, arms

pytestmark = pytest.mark.slow

TOY = GeneratorStudyConfig(cohort_sizes=(4, 8), steps=20, dp_steps=3, long_steps=30, n_samples=8, corpus=64,
                           pretrain_steps=3, holdout_patients=8, audit_patients=8, n_external=120, sample_steps=3)


def test_the_study_runs_every_arm_writes_its_table_and_figure_and_skips_finished_stages(tmp_path):
    outputs = GeneratorStudy(TOY, tmp_path).run()
    doc = json.loads((tmp_path / "report" / "generator_study.json").read_text())
    assert [r["generator"] for r in doc["generators"]] == [a.name for a in arms(TOY)]
    assert {r["dp"] for r in doc["generators"]} == {"nodp", "eps8", "eps1"}
    for r in doc["generators"]:
        assert (r["epsilon_spent"] is None) == (r["dp"] == "nodp")
        if r["epsilon_spent"] is not None:
            assert r["epsilon_spent"] <= float(r["dp"].removeprefix("eps")) + 1e-6
    assert set(doc["downstream"]) == {"real", "n8-nodp-s20", "n8-eps8-s3", "n8-eps1-s3"}
    table = (tmp_path / "report" / "generator_study.md").read_text()
    assert "white-box AUC" in table and "n8-eps1-s3" in table
    assert (tmp_path / "report" / "copy_rate.png").stat().st_size > 10_000
    seen = []
    GeneratorStudy(TOY, tmp_path).run(on_event=lambda kind, stage, s: seen.append(kind))
    assert set(seen) == {"skip"}  # a finished study reruns nothing
    assert outputs["report"].figure.endswith("copy_rate.png")


def test_with_reference_generators_the_study_adds_the_calibrated_attacks_without_retraining(tmp_path):
    from dataclasses import replace

    GeneratorStudy(replace(TOY, cohort_sizes=(4,)), tmp_path).run()
    seen: dict[str, str] = {}
    calibrated = replace(TOY, cohort_sizes=(4,), refs=1, population_patients=8)
    GeneratorStudy(calibrated, tmp_path).run(on_event=lambda kind, stage, s: seen.setdefault(stage.name, kind))
    assert all(kind == "skip" for stage, kind in seen.items() if stage.startswith(("gen-", "clip-")))
    assert seen["population"] != "skip" and all(seen[s] != "skip" for s in seen if s.startswith("audit-"))
    doc = json.loads((tmp_path / "report" / "generator_study.json").read_text())
    assert all("white_box_calibrated_auc" in r and "black_box_domias_ci" in r for r in doc["generators"])
    assert "calibrated white-box AUC (LiRA" in (tmp_path / "report" / "generator_study.md").read_text()
