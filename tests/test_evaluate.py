import warnings

import numpy as np
import pytest
import torch

from fedclip import evaluate, tasks
from fedclip.errors import FedclipError


def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1])
    scores = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])  # predicts 0, 1, 1, 1
    m = evaluate.metrics(y, scores)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # margins s1 - s0: -2, 1 (neg) vs 3, 2 (pos): every positive outranks every negative
    assert m["auc"] == pytest.approx(1.0)
    grade = np.arange(5)
    perfect = np.eye(5)
    assert evaluate.metrics(grade, perfect, ordinal=True)["kappa"] == pytest.approx(1.0)
    off_by_one = np.eye(5)[[1, 2, 3, 4, 4]]
    k = evaluate.metrics(grade, off_by_one, ordinal=True)["kappa"]
    assert 0.5 < k < 1.0  # near misses cost little under quadratic weights
    assert evaluate.metrics(grade, np.eye(5)[[4, 3, 2, 1, 0]], ordinal=True)["kappa"] == pytest.approx(-1.0)


def test_one_class_in_labels_and_predictions_gives_no_undefined_metric_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's single-label and undefined-kappa warnings fail here
        m = evaluate.metrics(np.array([2, 2, 2]), np.eye(5)[[2, 2, 2]], ordinal=True)
    assert m == {"balanced_accuracy": 1.0, "macro_f1": 1.0}  # no AUC, no kappa: both are 0/0 on one class


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.stack([np.zeros(300), (y - 0.5) + rng.normal(0, 0.6, 300)], 1)
    m = evaluate.metrics(y, scores)
    ci = evaluate.bootstrap_ci(y, scores, n_boot=300)
    lo, hi = ci["balanced_accuracy"]
    assert lo < m["balanced_accuracy"] < hi and hi - lo < 0.2


def test_evaluation_intervals_draw_whole_patients():
    """Four images per patient that agree with each other: resampling images treats them as 4 independent
    draws and gives too narrow an interval; resampling patients does not (docs: cluster everywhere)."""
    rng = np.random.default_rng(1)
    per_patient = rng.integers(0, 2, 60)
    noise = rng.normal(0, 0.8, 60)
    y = np.repeat(per_patient, 4)
    scores = np.stack([np.zeros(240), np.repeat((per_patient - 0.5) + noise, 4)], 1)
    images = evaluate.bootstrap_ci(y, scores, n_boot=400)["auc"]
    patients = evaluate.bootstrap_ci(y, scores, n_boot=400, groups=np.repeat(np.arange(60), 4).astype(str))["auc"]
    assert patients[1] - patients[0] > 1.5 * (images[1] - images[0])


def test_retrieval_recall():
    feats = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    r = evaluate.retrieval_recall(feats, feats, ks=(1, 5))
    assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@5"] == 1.0
    shuffled = feats[torch.roll(torch.arange(20), 1)]
    assert evaluate.retrieval_recall(feats, shuffled, ks=(1,))["image_to_text_R@1"] < 0.2


def test_linear_probe_separates_separable_features_and_supports_k_shot():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(3, 1, (60, 4))])
    y = np.repeat([0, 1], 60)
    order = rng.permutation(120)
    x, y = x[order], y[order]
    r = evaluate.linear_probe(x[:80], y[:80], x[80:], y[80:], 2)
    assert r["balanced_accuracy"] > 0.9 and r["auc"] > 0.95
    few = evaluate.linear_probe(x[:80], y[:80], x[80:], y[80:], 2, k_shot=4)
    assert few["n_train"] == 8 and few["balanced_accuracy"] > 0.8


def test_class_bias_fitted_on_a_calibration_set_moves_a_misplaced_boundary_and_keeps_the_ranking():
    """Constructed: the class-1 logit carries a constant -3 (a prompt the model under-rates); the signal
    itself separates the classes. Fitted on one draw, the offset recovers ~+3 and balances another."""
    rng = np.random.default_rng(0)

    def draw(n, share):
        y = (rng.random(n) < share).astype(int)
        signal = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.5, n)
        return np.stack([np.zeros(n), signal - 3.0], 1), y
    calibration, y_cal = draw(2000, 0.5)
    bias = evaluate.fit_class_bias(calibration, y_cal)
    assert bias[1] - bias[0] == pytest.approx(3.0, abs=0.3)
    test, y = draw(2000, 0.1)  # another prevalence: balanced accuracy does not depend on it
    before, after = evaluate.metrics(y, test), evaluate.metrics(y, test + bias)
    assert before["balanced_accuracy"] < 0.6 and after["balanced_accuracy"] > 0.95
    assert after["auc"] == pytest.approx(before["auc"])  # the ranking is the model's own
    # a class missing from the calibration set keeps a finite offset
    three = np.concatenate([calibration, np.zeros((2000, 1))], 1)
    assert np.isfinite(evaluate.fit_class_bias(three, y_cal)).all()


def test_task_targets_and_errors():
    fives = tasks.task("fives")
    assert fives.classes == ("normal", "amd", "dr", "glaucoma")
    assert fives.target({"amd": 0, "dr": 0, "glaucoma": 0}) == 0
    assert fives.target({"amd": 0, "dr_grade": 2, "glaucoma": 0}) == 2
    assert fives.target({"amd": 1, "dr": 1, "glaucoma": 0}) is None  # two diseases: not a single class
    assert fives.target({"glaucoma": 1}) is None  # unknown labels are never guessed
    assert tasks.task("referable_dr").target({"dr_grade": 1}) == 0
    with pytest.raises(FedclipError, match="unknown task"):
        tasks.task("cataract")
    with pytest.raises(FedclipError, match="no image has a known label"):
        evaluate.zero_shot(None, [], [{"amd": 1}], "dr_grade")


def test_zero_shot_of_a_briefly_pretrained_model_beats_an_untrained_one(pretrained_pair):
    from fedclip import models
    from fedclip.synth import CohortSpec, sample

    spec = CohortSpec(seed=9, size=64, hospital="riverside", diabetic_rate=1.0, dr_grades=(0.5, 0, 0, 0, 0.5),
                      prevalence=(("amd", 0.5),))
    held_out = [sample(spec, i) for i in range(200)]
    images, labels = [s.image for s in held_out], [s.labels for s in held_out]
    trained = models.load_checkpoint(pretrained_pair["private"])
    untrained = models.create("visionclip-tiny")
    for task in ("referable_dr", "amd"):
        ours = evaluate.zero_shot(trained, images, labels, task, n_boot=0)["balanced_accuracy"]
        base = evaluate.zero_shot(untrained, images, labels, task, n_boot=0)["balanced_accuracy"]
        assert ours > base + 0.1, (task, ours, base)
