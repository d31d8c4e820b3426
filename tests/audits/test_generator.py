"""The generator audit: its parts on constructed cases, and the whole chain on a tiny generator."""

import json

import numpy as np
import pytest
from PIL import Image

from fedclip.audits.copying import anatomy_map, nearest, pixel_embedding
from fedclip.audits.generator import GeneratorAuditConfig, frechet_distance, run_generator_audit
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
