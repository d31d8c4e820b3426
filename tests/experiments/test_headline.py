"""The headline from typed stage outputs to the sentences a reader sees (no training: constructed stage
outputs with known figures). The whole chain with real stages runs in the slow study test."""

import json
import math

from fedclip.experiments import headline
from fedclip.experiments.outputs import Cohorts, Dataset, Federation, GeneratorRelease, ResultsFile, Synthesized
from fedclip.experiments.study import StudyConfig


def _entry(task, ba, auc):
    return {"task": task, "balanced_accuracy": ba, "auc": auc, "ci": {"balanced_accuracy": [ba - 0.05, ba + 0.05],
                                                                    "auc": [auc - 0.05, auc + 0.05]}}


def _federation(model, eps, ledger, rounds):
    return Federation(model=model, epsilon=eps, dp=not math.isinf(eps), run=f"/runs/{model}", checkpoint="ckpt",
                      weights_sha256=None, rounds=[{"round": i, "balanced_accuracy": b} for i, b in enumerate(rounds)],
                      ledger_epsilon=ledger, ledger=[], external=_entry("referable_dr", 0.7, 0.8))


def _inputs(tmp_path, generator_epsilon, brought=False):
    evaluation = {name: {"external_zero_shot": [_entry("referable_dr", ba, 0.8)],
                         "hospitals_zero_shot": [_entry("referable_dr", ba + 0.02, 0.8)]}
                  for name, ba in (("synthetic", 0.72), ("private", 0.80))}
    (tmp_path / "results.json").write_text(json.dumps(evaluation))
    ds = Dataset("/d", 96, "f")
    release = None if brought else GeneratorRelease("/stats.json", {"epsilon": generator_epsilon}
                                                    if generator_epsilon else None)
    return headline.Inputs(
        data=Cohorts(members=ds, holdout=ds, test=ds, external=ds),
        synthesized=Synthesized(Dataset("/corpus", 120, "g"), release),
        evaluation=ResultsFile.of(tmp_path / "results.json"),
        federations={"private-eps8": _federation("private", 8.0, 7.99, [0.80, 0.75]),
                     "synthetic-nodp": _federation("synthetic", math.inf, None, [0.70, 0.74])},
        audits={})


def test_the_headline_states_each_models_privacy_and_the_ratio_from_its_stage_outputs(tmp_path):
    doc = headline.build(StudyConfig(), _inputs(tmp_path, generator_epsilon=2.0))
    rows = {r["model"]: r for r in doc["rows"]}
    assert rows["synthetic"]["data"] == "synthetic corpus (120 images)"
    assert rows["private"]["data"] == "private cohort (96 images)"
    assert rows["synthetic"]["dp"] == "no patient record trained it; generator statistics released with ε = 2 per " \
        "patient"
    assert rows["private"]["dp"] == "none (ε = ∞)"
    # DP fine-tuning of the real-data model bounds only what the fine-tuning adds
    assert rows["private-eps8"]["dp"] == "7.99 (fine-tuning; pretraining ε = ∞)"
    assert rows["private-eps8"]["requested_epsilon"] == 8.0 and rows["synthetic-nodp"]["requested_epsilon"] is None
    assert rows["synthetic-nodp"]["dp"] == "none (ε = ∞)"
    assert math.isclose(doc["ratios"]["synthetic_over_private_external_balanced_accuracy"], 0.72 / 0.80)
    assert rows["private-eps8"]["finetuning_helped"] is False and rows["synthetic-nodp"]["finetuning_helped"] is True
    text = " ".join(headline.headline_section(StudyConfig(), doc).paragraphs)
    assert "Synthetic ÷ real external balanced accuracy: 0.90" in text
    assert "private-eps8: federated fine-tuning ended below its zero-shot start at the hospitals (0.750 vs 0.800)" \
        in text
    assert "synthetic-nodp: federated" not in text
    assert "members trained the real-data model, fitted the synthetic corpus's generator" in text
    compact = {r[0]: r for r in headline.table_rows(doc, compact=True)}
    assert compact["private-eps8"][1] == "7.99" and compact["synthetic-nodp"][1] == "∞"
    assert compact["synthetic"][-1] == "-"  # no epsilon audit ran: no bound is claimed


def test_the_synthetic_rows_privacy_says_where_its_corpus_came_from(tmp_path):
    exact = headline.build(StudyConfig(), _inputs(tmp_path, generator_epsilon=None))
    synthetic = next(r for r in exact["rows"] if r["model"] == "synthetic")
    # exact aggregates of the members drew the corpus: no "not needed", the epsilon is infinite
    assert synthetic["dp"].startswith("none: no patient record trained it, but its generator's statistics are exact")
    assert synthetic["dp_short"] == "∞ (gen.)"
    brought = headline.build(StudyConfig(), _inputs(tmp_path, generator_epsilon=None, brought=True))
    synthetic = next(r for r in brought["rows"] if r["model"] == "synthetic")
    assert synthetic["dp"].startswith("not stated: a corpus brought in") and synthetic["dp_short"] == "?"
    text = " ".join(headline.headline_section(StudyConfig(), brought).paragraphs)
    assert "fitted the synthetic corpus's generator" not in text
    assert "what its generator learned from, and from whom, this study does not know" in text
