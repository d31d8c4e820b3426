"""The copying audit: each figure on hand-made point sets with known answers, then the positive control —
training images planted (lightly augmented) in a synthetic set are found, a clean set is not flagged."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from fedclip.audits.copying import (
    CopyingConfig,
    dcr_share,
    flag_copies,
    nearest,
    plant_copies,
    run_copying,
    three_sample_test,
    z_u,
)
from fedclip.cli.main import app
from fedclip.data.records import Record, read_metadata, write_metadata
from fedclip.data.synthetic import export
from fedclip.synth import CohortSpec
from fedclip.synth.cohort import patient
from fedclip.synth.estimate import estimate, synthetic_spec


def test_z_u_matches_a_hand_computed_value():
    # generated [1, 2] vs test [3, 4]: no pair has generated > test, U = 0; mean 4/2 - 0.5, var 2*2*5/12
    assert z_u(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == pytest.approx(-1.5 / np.sqrt(20 / 12))
    assert z_u(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == pytest.approx((4 - 1.5) / np.sqrt(20 / 12))


def test_nearest_takes_the_closest_view_of_each_query_and_skips_its_own_group():
    ref = np.array([[0.0, 0.0], [10.0, 0.0]])
    queries = np.array([[[9.0, 0.0], [0.5, 0.0]], [[7.0, 0.0], [20.0, 0.0]]])
    d, i = nearest(queries, ref)
    assert d == pytest.approx([0.5, 3.0]) and list(i) == [0, 1]
    d, i = nearest(queries, ref, groups=(np.array(["a", "b"]), np.array(["a", "b"])))
    assert d == pytest.approx([1.0, 7.0]) and list(i) == [1, 0]


def test_flags_need_both_thresholds_read_off_fresh_patients():
    holdout_to_train = np.linspace(1.0, 2.0, 101)  # alpha = 0.01 -> distance threshold 1.01
    holdout_to_holdout = np.full(101, 1.25)  # ratios 0.8 .. 1.6 -> ratio threshold 0.808
    d_train = np.array([0.1, 0.1, 1.5, 0.5])
    d_holdout = np.array([1.0, 0.11, 3.0, 0.55])
    flags, thr = flag_copies(d_train, d_holdout, holdout_to_train, holdout_to_holdout, alpha=0.01)
    assert thr["distance"] == pytest.approx(1.01) and thr["ratio"] == pytest.approx(0.808)
    assert flags.tolist() == [True, False, False, False]


def test_dcr_share_and_its_binomial_test():
    out = dcr_share(np.array([0.1] * 9 + [2.0]), np.ones(10))
    assert out["share"] == 0.9 and out["closer_to_train"] == 9
    assert out["p_value"] == pytest.approx(11 / 1024)  # P(X >= 9), X ~ Bin(10, 1/2)


def test_c_t_is_strongly_negative_for_copies_and_near_zero_for_fresh_samples():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (5, 8))
    draw = lambda n: centres[rng.integers(5, size=n)] + rng.normal(0, 1, (n, 8))  # noqa: E731
    train, test = draw(500), draw(500)
    fresh = three_sample_test(train, test, draw(500), cells=5, seed=0)
    copies = three_sample_test(train, test, train[:500] + rng.normal(0, 0.05, (500, 8)), cells=5, seed=0)
    blurry = three_sample_test(train, test, draw(500) * 1.5, cells=5, seed=0)
    assert abs(fresh["c_t"]) < 3
    assert copies["c_t"] < -10
    assert blurry["c_t"] > 3  # farther from the training set than fresh data: underfitting
    assert fresh["cells_used"] == 5


@pytest.fixture(scope="module")
def generator_sets(tmp_path_factory):
    """A cohort split by patient into the generator's training half and a holdout half; a synthetic corpus
    from the Med-AIGC step fitted on the training half; and that corpus with 2% planted copies."""
    root = tmp_path_factory.mktemp("copying")
    spec = CohortSpec(seed=31, size=64, hospital="riverside,northgate,summit")
    export(spec, root / "cohort", 960)
    records = read_metadata(root / "cohort")
    ids = sorted({r.meta["patient_id"] for r in records})
    np.random.default_rng(0).shuffle(ids)
    train_ids = set(ids[: len(ids) // 2])
    for name, keep in (("train", True), ("holdout", False)):
        write_metadata(root / name, [Record(str(r.path(root / "cohort").resolve()), r.caption, r.labels, r.meta)
                                     for r in records if (r.meta["patient_id"] in train_ids) == keep])
    train_patients = [patient(spec, int(i.split("-")[1])) for i in sorted(train_ids)]
    export(synthetic_spec(estimate(train_patients), seed=999, size=64, visits=2), root / "synthetic", 500)
    sources = plant_copies(root / "synthetic", root / "train", root / "planted", fraction=0.02, seed=1)
    return root, sources


def _flagged(audit) -> set[str]:
    with open(audit / "copies.csv", newline="") as fh:
        return {r["synthetic"] for r in csv.DictReader(fh) if r["flagged"] == "1"}


@pytest.mark.slow
def test_planted_copies_are_found_and_a_clean_synthetic_set_is_not_flagged(generator_sets):
    root, sources = generator_sets
    assert len(sources) == 10
    planted = {r.filepath for r in read_metadata(root / "planted") if r.meta.get("source") == "planted-copy"}
    doc = run_copying(root / "planted", root / "train", root / "holdout", CopyingConfig(), root / "audit-planted")
    flagged = _flagged(root / "audit-planted")
    recall = len(flagged & planted) / len(planted)
    false_rate = len(flagged - planted) / (500 - len(planted))
    assert recall >= 0.9, (recall, false_rate)
    assert false_rate <= 0.01
    assert doc["verdict"]["copies"]
    clean = run_copying(root / "synthetic", root / "train", root / "holdout", CopyingConfig(), root / "audit-clean")
    assert clean["flags"]["rate"] <= 0.01
    assert not clean["verdict"]["copies"], clean["verdict"]
    with open(root / "audit-planted" / "copies.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["synthetic", "nearest_train", "distance", "nearest_holdout_distance", "flagged"]


def test_train_and_holdout_sharing_a_patient_is_a_clear_error(small_dataset, tmp_path):
    result = CliRunner().invoke(app, ["audit", "copying", "--synthetic", str(small_dataset), "--train",
                                      str(small_dataset), "--holdout", str(small_dataset), "--out",
                                      str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "share" in result.output and "patient" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "a").exists()
