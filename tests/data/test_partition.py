import pytest

from fedclip.data.partition import by_hospital, dirichlet, iid
from fedclip.data.records import Record
from fedclip.errors import DataError


def _records(n_patients=40, per=2):
    recs = []
    for p in range(n_patients):
        for v in range(per):
            recs.append(Record(f"{p}-{v}.png", "", {"dr_grade": p % 5, "glaucoma": int(p % 3 == 0)},
                               {"patient_id": f"P{p}", "hospital": ["a", "b", "c"][p % 3]}))
    return recs


def _patient_sets(records, parts):
    return [{records[i].meta["patient_id"] for i in p} for p in parts]


def test_iid_covers_everything_once_keeps_patients_together_and_is_seeded():
    recs = _records()
    parts = iid(recs, 3, seed=1)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(len(recs)))
    sets = _patient_sets(recs, parts)
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2])
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 2
    assert parts == iid(recs, 3, seed=1) and parts != iid(recs, 3, seed=2)


def test_by_hospital():
    recs = _records()
    parts = by_hospital(recs)
    assert list(parts) == ["a", "b", "c"]
    assert all(recs[i].meta["hospital"] == h for h, idx in parts.items() for i in idx)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    recs = _records(200, 1)

    def skew(alpha):
        parts = dirichlet(recs, 4, alpha, lambda lab: lab["glaucoma"], seed=0)
        assert sorted(i for p in parts for i in p) == list(range(len(recs)))
        rates = [sum(recs[i].labels["glaucoma"] for i in p) / len(p) for p in parts]
        return max(rates) - min(rates)

    assert skew(0.1) > skew(1000.0)
    assert skew(1000.0) < 0.2


def test_partition_errors():
    recs = _records(3, 1)
    with pytest.raises(DataError, match="cannot split 3 patients into 5"):
        iid(recs, 5)
    with pytest.raises(DataError, match="alpha must be > 0"):
        dirichlet(recs, 2, 0.0, lambda lab: lab["glaucoma"])
    recs[0].meta.pop("hospital")
    with pytest.raises(DataError, match="no hospital"):
        by_hospital(recs)


def test_a_patient_spelled_two_ways_stays_in_one_partition():
    """Partitions group by the same key DP sampling and the audits use (records.patient_key)."""
    recs = _records(n_patients=20)
    recs.append(Record("late.png", "", {"dr_grade": 0}, {"patient_id": " p0 ", "hospital": "a"}))
    parts = iid(recs, 4, seed=3)
    holders = [k for k, p in enumerate(parts) if {0, len(recs) - 1} & set(p)]
    assert len(holders) == 1 and {0, 1, len(recs) - 1} <= set(parts[holders[0]])
