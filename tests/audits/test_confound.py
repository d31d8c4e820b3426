"""The blind baseline (a classifier that never sees the model) fires on a real shift between the sets and not
on two halves of one cohort, judged by its interval rather than a fixed cut-off."""

from fedclip.audits.confound import confound_check
from fedclip.data.records import read_metadata
from fedclip.data.synthetic import export
from fedclip.synth import CohortSpec


def test_the_blind_baseline_fires_on_a_camera_shift_and_not_on_one_cohort_split_by_patient(tmp_path):
    export(CohortSpec(seed=4, size=48, hospital="riverside"), tmp_path / "a", 96)
    export(CohortSpec(seed=3, size=48, hospital="lakeshore"), tmp_path / "c", 48)
    records, c = read_metadata(tmp_path / "a"), read_metadata(tmp_path / "c")
    patients = sorted({r.meta["patient_id"] for r in records})
    half = set(patients[::2])  # one cohort split by patient: the null
    a = [r for r in records if r.meta["patient_id"] in half]
    b = [r for r in records if r.meta["patient_id"] not in half]
    shifted = confound_check(a, c, (tmp_path / "a", tmp_path / "c"))
    assert shifted["confounded"] and shifted["ci"][0] > 0.5 and shifted["auc"] > 0.9
    same = confound_check(a, b, (tmp_path / "a", tmp_path / "a"))
    assert not same["confounded"] and same["ci"][0] <= 0.5 <= same["ci"][1]
