"""Known answers for the generator audit, on generators that do and do not copy (slow: real training).

A generator trained long on a handful of patients reproduces them, and the audit must say so; the same
cohort under patient-level DP at epsilon 1 must look like fresh patients; a larger cohort trained briefly
gives few copies.
"""

import pytest

from fedclip.audits.generator import GeneratorAuditConfig, run_generator_audit
from fedclip.data.synthetic import export
from fedclip.generate.train import GeneratorTrainConfig, train_generator
from fedclip.io import write_text
from fedclip.synth import CohortSpec

pytestmark = pytest.mark.slow
AUDIT = GeneratorAuditConfig(n_samples=64, sample_steps=25, n_boot=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("memorization")
    export(CohortSpec(seed=11, size=64, hospital="riverside"), root / "few", 16)  # 4 patients x 4 images
    export(CohortSpec(seed=13, size=64, hospital="riverside"), root / "many", 192)  # 48 patients
    export(CohortSpec(seed=12, size=64, hospital="riverside"), root / "holdout", 48)  # 12 fresh patients
    return root


def test_a_generator_trained_long_on_four_patients_copies_them_and_the_audit_says_so(data, tmp_path):
    run = train_generator(GeneratorTrainConfig(data=data / "few", steps=1500, save_every=0), tmp_path / "g")
    doc = run_generator_audit(run["checkpoint"], data / "few", data / "holdout", tmp_path / "a", AUDIT)
    white = doc["attacks"]["white-box-loss"]["patient"]
    assert white["auc"] >= 0.9 and white["n_members"] == 4 and white["n_nonmembers"] == 12
    flags = doc["copying"]["flags"]
    assert flags["rate"] >= 0.05 and flags["rate"] > 10 * flags["alpha"]  # far above fresh patients' rate
    assert doc["copying"]["verdict"]["copies"] and doc["verdict"]["copies"]
    assert doc["copies_per_patient"]["patients_with_copies"] >= 3


def test_the_same_cohort_under_patient_level_dp_at_epsilon_1_looks_like_fresh_patients(data, tmp_path):
    state = tmp_path / "node"
    write_text(state / "policy.toml", "[policy]\ndataset_size = 4\n")
    run = train_generator(GeneratorTrainConfig(data=data / "few", steps=200, epsilon=1.0, state_dir=state,
                                               max_images_per_patient=2, save_every=0), tmp_path / "g")
    assert run["epsilon"] <= 1.0 + 1e-6
    doc = run_generator_audit(run["checkpoint"], data / "few", data / "holdout", tmp_path / "a", AUDIT)
    white = doc["attacks"]["white-box-loss"]["patient"]
    assert white["ci"]["auc"][0] <= 0.5 <= white["ci"]["auc"][1]
    assert doc["copying"]["flags"]["flagged"] <= 2 and not doc["copying"]["verdict"]["copies"]
    assert doc["target"]["privacy"]["dp"] and doc["target"]["privacy"]["unit"] == "patient"
    # what ε = 1 allows any attack, stated beside the figures (and no attack's interval lies above it)
    assert doc["dp_ceiling"]["auc"] == pytest.approx(0.731, abs=0.002) and "per patient" in doc["dp_ceiling"]["claim"]
    assert not any("contradicted" in r for r in doc["verdict"]["reasons"])


def test_a_larger_cohort_trained_briefly_gives_few_copies(data, tmp_path):
    run = train_generator(GeneratorTrainConfig(data=data / "many", steps=300, save_every=0), tmp_path / "g")
    doc = run_generator_audit(run["checkpoint"], data / "many", data / "holdout", tmp_path / "a", AUDIT)
    assert doc["copying"]["flags"]["rate"] <= 0.05
