import hashlib
import subprocess
import sys

import numpy as np
import pytest

from fedclip.errors import FedclipError
from fedclip.synth import CONDITIONS, CohortSpec, patient, sample
from fedclip.synth import cohort as cohort_module
from fedclip.synth.anatomy import render_eye
from fedclip.synth.canvas import LesionCanvas
from fedclip.synth.lesions import draw_dr
from fedclip.synth.taxonomy import icdr_grade


def _digest(spec: CohortSpec, indices) -> str:
    h = hashlib.sha256()
    for i in indices:
        h.update(sample(spec, i).image.tobytes())
    return h.hexdigest()


def test_sample_is_byte_identical_across_calls_orders_and_processes():
    spec = CohortSpec(seed=11, size=96)
    forward = _digest(spec, range(8))
    cohort_module._EYES.items.clear()
    patient.cache_clear()
    backward = hashlib.sha256()
    imgs = {i: sample(spec, i).image.tobytes() for i in reversed(range(8))}
    for i in range(8):
        backward.update(imgs[i])
    assert forward == backward.hexdigest()
    code = ("from tests.synth.test_generator import _digest; from fedclip.synth import CohortSpec; "
            "print(_digest(CohortSpec(seed=11, size=96), range(8)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == forward


def test_image_contract_and_black_surround():
    s = sample(CohortSpec(seed=1, size=128), 0)
    assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    assert s.image[:3, :3].max() == 0 and s.image[-3:, -3:].max() == 0  # outside the field of view
    assert s.image[54:74, 54:74].mean() > 40  # inside it: lit fundus
    assert set(s.meta) >= {"patient_id", "eye", "hospital", "camera", "seed"}
    assert s.caption and s.caption[0].isupper()


@pytest.mark.parametrize("grade", range(5))
def test_drawn_lesions_grade_to_the_target_under_icdr(grade):
    spec = CohortSpec(seed=2, size=224)
    for k in range(6):
        pat = patient(spec, k)
        _, layout = render_eye(pat.anatomy[0], 224)
        canvas = LesionCanvas(layout)
        draw_dr(canvas, np.random.default_rng(k), grade)
        c = canvas.counts
        got = icdr_grade(c["microaneurysm"], tuple(c[f"haemorrhage_q{q}"] for q in range(4)), c["exudate"],
                         c["cotton_wool"], c["neovascularisation"])
        assert got == grade


def test_icdr_rule_hand_cases():
    assert icdr_grade(0, (0, 0, 0, 0), 0, 0, 0) == 0
    assert icdr_grade(3, (0, 0, 0, 0), 0, 0, 0) == 1
    assert icdr_grade(3, (1, 0, 0, 0), 0, 0, 0) == 2
    assert icdr_grade(0, (0, 0, 0, 0), 4, 0, 0) == 2
    assert icdr_grade(0, (6, 6, 6, 6), 0, 0, 0) == 3
    assert icdr_grade(0, (6, 6, 6, 5), 0, 0, 0) == 2
    assert icdr_grade(0, (0, 0, 0, 0), 0, 0, 1) == 4


def test_forced_grade_cohort_labels_follow_lesions():
    spec = CohortSpec(seed=4, size=64, diabetic_rate=1.0, dr_grades=(0, 0, 0, 0, 1.0), visits=1)
    grades = [sample(spec, i).labels["dr_grade"] for i in range(12)]
    assert max(grades) == 4 and min(grades) >= 3  # the fellow eye is at most one grade better


@pytest.mark.parametrize("cond", [c.name for c in CONDITIONS if c.follows_dr_grade is None])
def test_condition_changes_the_image_and_is_captioned(cond):
    none = tuple((c.name, 0.0) for c in CONDITIONS)
    healthy = CohortSpec(seed=5, size=96, diabetic_rate=0.0, prevalence=none, hospital="riverside", visits=1)
    sick = CohortSpec(seed=5, size=96, diabetic_rate=0.0, hospital="riverside", visits=1,
                      prevalence=tuple((n, 1.0 if n == cond else 0.0) for n, _ in none))
    phrases = next(c.phrases for c in CONDITIONS if c.name == cond)
    for i in range(4):
        a, b = sample(healthy, i), sample(sick, i)
        if b.labels[cond]:
            assert a.labels[cond] == 0
            changed = np.abs(a.image.astype(int) - b.image.astype(int)).max(axis=2) > 25
            assert changed.mean() > 0.002  # a visible change somewhere, not just noise
            assert any(p.lower() in b.caption.lower() for p in phrases), b.caption
            return
    pytest.fail(f"no eye with {cond} among the first images")


def test_patient_identity_persists_across_visits():
    spec = CohortSpec(seed=6, size=96, hospital="riverside")
    a0, a1 = sample(spec, 0), sample(spec, 1)  # right eye, visits 0 and 1
    other = sample(spec, 4)  # next patient, right eye
    assert a0.meta["patient_id"] == a1.meta["patient_id"] != other.meta["patient_id"]
    assert a0.meta["eye"] == a1.meta["eye"] == "right" and sample(spec, 2).meta["eye"] == "left"
    assert not np.array_equal(a0.image, a1.image)  # visits differ...
    same = np.abs(a0.image.astype(int) - a1.image.astype(int)).mean()
    diff = np.abs(a0.image.astype(int) - other.image.astype(int)).mean()
    assert same < diff  # ...but less than two people do


def test_hospitals_are_domain_shifted():
    means = {h: np.mean([sample(CohortSpec(seed=7, size=64, hospital=h), i).image.reshape(-1, 3).mean(0)
                         for i in range(8)], axis=0) for h in ("riverside", "northgate", "lakeshore")}
    # northgate's camera is bluer than lakeshore's warm handheld one
    assert means["northgate"][2] / means["northgate"][0] > 1.1 * means["lakeshore"][2] / means["lakeshore"][0]


def test_captions_are_deterministic_and_varied():
    spec = CohortSpec(seed=8, size=64)
    caps = [sample(spec, i).caption for i in range(40)]
    assert caps == [sample(spec, i).caption for i in range(40)]
    assert len(set(caps)) > 20


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 16}, "too small"),
    ({"hospital": "atlantis"}, "unknown hospital profile"),
    ({"prevalence": (("leprosy", 0.5),)}, "unknown condition"),
    ({"prevalence": (("amd", 1.5),)}, "within [0, 1]"),
    ({"dr_grades": (0.5, 0.5)}, "5 probabilities"),
])
def test_bad_specs_raise_clear_errors(kwargs, message):
    with pytest.raises(FedclipError, match=message.replace("[", r"\[").replace("]", r"\]")):
        CohortSpec(**kwargs)
