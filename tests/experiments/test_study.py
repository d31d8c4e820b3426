"""Studies through the CLI: the shipped list, bad input, and a shrunken quickstart end to end (slow)."""

import json

import pytest
from typer.testing import CliRunner

from fedclip.cli.main import app
from fedclip.experiments.study import StudyConfig, load, shipped

runner = CliRunner()

TINY = ["n_members=96", "n_holdout=96", "n_test=48", "n_external=96", "pretrain.steps=5", "pretrain.batch_size=16",
        "pretrain.warmup=1", "federate.rounds=1", "federate.finetune.epochs=1", "federate.finetune.batch_size=32",
        "pretrain.canaries=2", "epsilon_canaries=50", "mia_refs=2", "tasks=referable_dr"]


def sets(items):
    return [x for item in items for x in ("--set", f"study.{item}")]


def test_the_shipped_studies_load_and_are_listed():
    names = shipped()
    assert set(names) >= {"quickstart", "epsilon_sweep", "paper_scale"}
    assert all(line for line in names.values())
    for name in names:
        assert isinstance(load(name), StudyConfig)
    assert load("epsilon_sweep").epsilons[-1] == float("inf")
    res = runner.invoke(app, ["experiment", "list"])
    assert res.exit_code == 0 and "quickstart" in res.output and "paper_scale" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["atlantis"], "no shipped study 'atlantis'"),
    (["quickstart", "--set", "study.stepz=3"], "[study] has no setting(s) stepz"),
    (["quickstart", "--set", "study.pretrain.stepz=3"], "[study.pretrain] has no setting(s) stepz"),
    (["quickstart", "--set", "study.federate.finetune.task=dr_grade"],
     "study.federate.finetune.task is set by study.task"),
    (["quickstart", "--set", "study.pretrain=3"], "study.pretrain is a table of settings"),
    (["quickstart", "--set", "pretrain.steps=3"], "takes study.NAME=VALUE, not section 'pretrain'"),
    (["quickstart", "--set", "study.epsilons=0"], "study.epsilons must be positive"),
    (["quickstart", "--set", "study.federate_models=synthetic,public"], "public is not a model"),
    (["quickstart", "--from", "training"], "--from training: no such stage"),
])
def test_bad_study_input_is_one_line_and_exit_2(tmp_path, args, message):
    res = runner.invoke(app, ["experiment", "run", *args, "--out", str(tmp_path / "s")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_a_study_never_writes_into_a_folder_that_is_not_a_study(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("a user's own file")
    res = runner.invoke(app, ["experiment", "run", "quickstart", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is not empty and holds no study" in res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["data", "mine.txt"]


@pytest.mark.slow
def test_a_shrunken_quickstart_runs_end_to_end_and_reruns_only_what_changed(tmp_path):
    out = tmp_path / "study"
    res = runner.invoke(app, ["--quiet", "experiment", "run", "quickstart", "--out", str(out), *sets(TINY)])
    assert res.exit_code == 0, res.output
    flat = "".join(res.output.split())  # rich wraps long lines at the terminal's width
    assert "synthetic÷realexternalbalancedaccuracy" in flat and "report/report.pdf" in flat
    assert "DEPRECATED" not in res.output and "fraction_evaluate" not in res.output
    doc = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert set(rows) == {"synthetic", "private", "synthetic-eps8", "private-eps8"}
    for name in ("synthetic-eps8", "private-eps8"):
        assert 0 < rows[name]["ledger_epsilon"] <= 8.0  # spent from each study hospital's own ledger
        assert rows[name]["epsilon_lb"]["epsilon_lb"] <= rows[name]["epsilon_lb"]["theoretical"]
        assert (out / "nodes" / name / "client-0").is_dir()
        eps = json.loads((out / "audits" / f"epsilon-{name}" / "results.json").read_text())
        # the mechanism a hospital deployed, per patient, against its own ledger (not an image-level re-run)
        assert eps["theoretical"]["unit"] == "patient" and "replayed from client-" in eps["theoretical"]["mechanism"]
        assert eps["ledger_epsilon"] == pytest.approx(rows[name]["ledger_epsilon"])
    for r in rows.values():
        assert 0 <= r["mia"]["auc"]["value"] <= 1 and r["mia"]["level"] == "patient"
    mia_synthetic = json.loads((out / "audits" / "mia-synthetic" / "results.json").read_text())
    assert mia_synthetic["config"]["members_via"] == "generator"
    mia_private = json.loads((out / "audits" / "mia-private" / "results.json").read_text())
    assert mia_private["manifest"]["checked"]  # members checked against the real-data model's manifest
    for kind in ("copying", "dejavu", "exposure"):
        assert kind in doc["summaries"]
    assert (out / "report" / "report.pdf").read_bytes().startswith(b"%PDF")
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["study"]["rows"] == doc["rows"] and len(report["audits"]) == 9

    res = runner.invoke(app, ["--quiet", "experiment", "run", "quickstart", "--out", str(out), *sets(TINY),
                              "--set", "study.mia_refs=4"])
    assert res.exit_code == 0, res.output
    skipped = [line.split(":")[0] for line in res.output.splitlines() if "done earlier, skipped" in line]
    assert skipped == ["data", "synthesize", "pretrain", "evaluate", "federate"]
    lira = json.loads((out / "audits" / "mia-private-eps8" / "results.json").read_text())
    assert lira["references"]["count"] == 4


@pytest.mark.slow
def test_paper_scale_runs_its_own_code_path_with_tiny_sizes(tmp_path):
    """visionclip-base at 224 px input, a trained transformer block, LiRA: only the sizes (images, steps, rounds,
    reference models, canaries) are shrunk. ~8 minutes on 2 CPU cores: the base model's forward passes dominate."""
    tiny = ["n_members=48", "n_holdout=48", "n_test=16", "n_external=96", "size=64", "pretrain.steps=2",
            "pretrain.batch_size=8", "pretrain.warmup=1", "pretrain.workers=1", "federate.rounds=1",
            "federate.finetune.batch_size=16", "mia_refs=4", "epsilon_canaries=20", "workers=1", "tasks=referable_dr"]
    cfg = load("paper_scale", tuple(f"study.{x}" for x in tiny))
    assert cfg.pretrain.model == "visionclip-base" and cfg.federate.finetune.train_blocks == 1
    assert "lira" in cfg.mia_attacks
    out = tmp_path / "paper"
    res = runner.invoke(app, ["--quiet", "experiment", "run", "paper_scale", "--out", str(out), *sets(tiny)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in doc["rows"]} == {"synthetic", "private", "synthetic-eps8", "private-eps8"}
    lira = json.loads((out / "audits" / "mia-synthetic-eps8" / "results.json").read_text())
    assert lira["references"]["count"] == 4 and lira["references"]["finetune"]["train_blocks"] == 1
    assert "lira" in lira["attacks"]  # LiRA needs at least 4 reference models
