"""The generator audit: its parts on constructed cases, and the whole chain on a tiny generator."""

import json

import numpy as np
import pytest
from PIL import Image

from fedclip.audits import metrics
from fedclip.audits.copying import anatomy_map, nearest, pixel_embedding
from fedclip.audits.generator import GeneratorAuditConfig, frechet_distance, run_generator_audit
from fedclip.audits.generator_calibration import calibrated_loss_score, density_ratio_score
from fedclip.audits.results import AuditError
from fedclip.data.records import read_metadata


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    basis = np.eye(6)
    assert frechet_distance(a, a, basis) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0, basis) == pytest.approx(6 * 4.0, rel=1e-6)  # |mu shift|^2


def test_the_anatomy_embedding_finds_a_patient_under_another_colour_profile(tmp_path):
    from fedclip.data.synthetic import export
    from fedclip.synth import CohortSpec

    export(CohortSpec(seed=31, size=96, hospital="riverside", visits=1), tmp_path / "d", 12)
    rows = read_metadata(tmp_path / "d")
    paths = [r.path(tmp_path / "d") for r in rows]
    recoloured = []
    for i, p in enumerate(paths[:4]):  # the same retinas, channels swapped and brightened: another camera
        arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)[..., [2, 1, 0]] * 0.7 + 40
        out = tmp_path / f"recoloured-{i}.png"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out)
        recoloured.append(out)
    assert np.asarray(anatomy_map(Image.open(paths[0]))).shape == (54, 54, 3)
    reference = pixel_embedding(paths, anatomy=True)
    queries = pixel_embedding(recoloured, aligned=True, anatomy=True)
    _, found = nearest(queries, reference)
    assert found.tolist() == [0, 1, 2, 3]  # each recoloured retina is nearest to its own source image


def test_the_audit_chain_on_a_tiny_generator_redacts_patients_and_refuses_a_holdout_it_trained_on(
        gen_trained, gen_cohort, tmp_path):
    _, result = gen_trained
    cfg = GeneratorAuditConfig(n_samples=6, sample_steps=2, timesteps=(10, 100), draws=1, n_boot=50)
    doc = run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "a", cfg)
    assert doc["kind"] == "generator" and doc["level"] == "patient"
    assert doc["target"]["privacy"]["dp"] is False  # says plainly that it was trained without DP
    for name in ("white-box-loss", "black-box-dcr"):
        p = doc["attacks"][name]["patient"]
        assert p["n_members"] == 2 and p["n_nonmembers"] == 2 and 0 <= p["auc"] <= 1
    assert "too few" in doc["verdict"]["caution"]  # 2 vs 2 patients: AUCs shown, not judged
    ids = {r.meta["patient_id"] for r in read_metadata(gen_cohort / "data")}
    text = (tmp_path / "a" / "results.json").read_text() + (tmp_path / "a" / "scores.csv").read_text()
    assert not any(i in text for i in ids)  # patient ids only when asked for
    assert doc["fidelity"]["dimensions"] >= 1 and np.isfinite(doc["fidelity"]["frechet_samples_to_holdout"])
    assert json.loads((tmp_path / "a" / "samples" / "provenance.json").read_text())["n"] == 6
    from fedclip.audits.report import render

    html = render([tmp_path / "a"], tmp_path / "report")["html"].read_text()
    assert "trained without DP: it carries no privacy guarantee" in html and "Learned generator" in html
    with pytest.raises(AuditError, match="not in the target.s manifest"):
        run_generator_audit(result["checkpoint"], gen_cohort / "holdout", gen_cohort / "data", tmp_path / "b", cfg)


def test_reference_calibration_takes_out_difficulty_that_the_raw_loss_reads_as_membership():
    rng = np.random.default_rng(0)
    n, refs = 400, 4
    difficulty = rng.normal(0.0, 1.0, n)  # how hard each image is to denoise, for every model
    member = rng.random(n) < 0.5
    references = difficulty[:, None] + rng.normal(0.0, 0.1, (n, refs))
    target = difficulty - 0.3 * member + rng.normal(0.0, 0.1, n)  # members a little easier for the target
    raw = metrics.summarise(member.astype(int), -target, n_boot=10)["auc"]
    calibrated = metrics.summarise(member.astype(int), calibrated_loss_score(target, references), n_boot=10)["auc"]
    assert raw < 0.65 and calibrated > 0.9  # the raw loss is swamped by difficulty; calibration recovers it
    null = difficulty + rng.normal(0.0, 0.1, n)  # a target that learned nothing about its members
    auc = metrics.summarise(member.astype(int), calibrated_loss_score(null, references), n_boot=200)
    assert auc["ci"]["auc"][0] <= 0.5 <= auc["ci"]["auc"][1]
    one = calibrated_loss_score(target, references[:, :1])  # one reference: a global spread, still calibrated
    assert metrics.summarise(member.astype(int), one, n_boot=10)["auc"] > 0.85


def test_the_density_ratio_flags_records_a_copying_generator_reproduces_and_not_fresh_ones():
    rng = np.random.default_rng(1)
    population = rng.normal(size=(300, 12))
    members, fresh = rng.normal(size=(30, 12)), rng.normal(size=(30, 12))
    audited, member = np.vstack([members, fresh]), np.r_[np.ones(30), np.zeros(30)].astype(int)
    copies = members[rng.integers(0, 30, 200)] + rng.normal(0.0, 0.05, (200, 12))  # samples near the members
    auc = metrics.summarise(member, density_ratio_score(copies, population, audited), n_boot=200)
    assert auc["auc"] > 0.9
    honest = rng.normal(size=(200, 12))  # samples from the population itself
    auc = metrics.summarise(member, density_ratio_score(honest, population, audited), n_boot=200)
    assert auc["ci"]["auc"][0] <= 0.5 <= auc["ci"]["auc"][1]
    with pytest.raises(AuditError, match="at least 3 samples"):
        density_ratio_score(honest[:2], population, audited)


def test_a_population_adds_the_calibrated_attacks_with_resumable_references(gen_trained, gen_cohort, tmp_path):
    from fedclip.data.synthetic import export
    from fedclip.synth import CohortSpec

    _, result = gen_trained
    export(CohortSpec(seed=23, size=64, hospital="riverside,summit"), tmp_path / "population", 8)
    cfg = GeneratorAuditConfig(n_samples=6, sample_steps=2, timesteps=(10, 100), draws=1, n_boot=50, refs=2)
    doc = run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "a", cfg,
                              population=tmp_path / "population")
    assert set(doc["attacks"]) == {"white-box-loss", "black-box-dcr", "black-box-domias", "white-box-calibrated"}
    for entry in doc["attacks"].values():
        assert 0 <= entry["patient"]["auc"] <= 1 and entry["patient"]["n_members"] == 2
    assert doc["references"]["count"] == 2 and doc["data"]["n_population_patients"] == 2
    refs = sorted((tmp_path / "a" / "references").glob("ref-*/checkpoints/last/model.safetensors"))
    assert len(refs) == 2
    steps = json.loads((refs[0].parent / "config.json").read_text())["provenance"]["steps"]
    assert steps == json.loads((result["checkpoint"] / "config.json").read_text())["provenance"]["steps"]
    stamp = [p.stat().st_mtime_ns for p in refs]
    run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "a", cfg,
                        population=tmp_path / "population")
    assert [p.stat().st_mtime_ns for p in refs] == stamp  # finished references are reused, not retrained
    with pytest.raises(AuditError, match="population shares 2 patient"):
        run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "b", cfg,
                            population=gen_cohort / "holdout")


def test_a_clip_checkpoints_image_tower_is_a_copying_embedding_too(gen_trained, gen_cohort, tmp_path):
    """Pixels, anatomy and a CLIP model's image tower: the issue's three embeddings for near-copies."""
    from fedclip import models

    _, result = gen_trained
    clip = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "clip")
    cfg = GeneratorAuditConfig(n_samples=4, sample_steps=2, timesteps=(10,), draws=1, n_boot=20, embed=str(clip))
    doc = run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "a", cfg)
    assert "image embeddings of checkpoint" in doc["copying"]["embedding"]
    assert "image embeddings of checkpoint" in doc["signal"]["black-box-dcr"]
    assert np.isfinite(doc["fidelity"]["frechet_samples_to_holdout"])
    with pytest.raises(AuditError, match="a CLIP checkpoint dir"):
        run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "b",
                            GeneratorAuditConfig(embed=str(tmp_path / "nowhere")))


def test_a_dp_generators_audit_states_the_auc_its_epsilon_allows(gen_cohort, tmp_path):
    from fedclip.audits.bounds import dp_auc_ceiling
    from fedclip.audits.report import render
    from fedclip.generate.train import GeneratorTrainConfig, train_generator
    from tests.conftest import GENERATOR_TINY

    state = tmp_path / "node"
    state.mkdir()
    (state / "policy.toml").write_text("[policy]\ndataset_size = 2\n")
    run = train_generator(GeneratorTrainConfig(data=gen_cohort / "data", steps=2, epsilon=4.0, state_dir=state,
                                               **GENERATOR_TINY), tmp_path / "dp")
    cfg = GeneratorAuditConfig(n_samples=4, sample_steps=2, timesteps=(10,), draws=1, n_boot=20)
    doc = run_generator_audit(run["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "a", cfg)
    assert doc["dp_ceiling"]["auc"] == pytest.approx(dp_auc_ceiling(run["epsilon"], 1e-5))
    html = render([tmp_path / "a"], tmp_path / "report")["html"].read_text()
    assert "What the DP claim allows" in html and f"{doc['dp_ceiling']['auc']:.3f}" in html


def test_the_report_says_reproduces_only_for_near_copies_and_reveals_for_membership_alone(
        gen_trained, gen_cohort, tmp_path):
    """A membership signal without a single near-copy is not "reproduces its patients" (measured: a 24-patient
    generator with calibrated AUC 0.73 and 0 of 64 samples flagged)."""
    from fedclip.audits.report.kinds import generator_section

    _, result = gen_trained
    cfg = GeneratorAuditConfig(n_samples=4, sample_steps=2, timesteps=(10,), draws=1, n_boot=20)
    doc = run_generator_audit(result["checkpoint"], gen_cohort / "data", gen_cohort / "holdout", tmp_path / "a", cfg)
    reason = "white-box-calibrated membership AUC 0.73 (CI 0.54-0.89) excludes 0.5"
    leaks = doc | {"verdict": {"copies": True, "reasons": [reason], "caution": None},
                   "copying": doc["copying"] | {"verdict": {"copies": False, "reasons": [], "caution": None}}}
    text = generator_section(leaks, tmp_path / "a", redact=True).paragraphs[0]
    assert "reveals which patients it was trained on (no sample is a near-copy)" in text
    assert "The answer: the generator reproduces" not in text
    copies = leaks | {"copying": doc["copying"] | {"verdict": {"copies": True, "reasons": ["C_T -5.5"]}}}
    text = generator_section(copies, tmp_path / "a", redact=True).paragraphs[0]
    assert "The answer: the generator reproduces its patients" in text
