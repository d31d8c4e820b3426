"""The generator's checkpoint contract, resume, determinism of sampling, and its DP spend."""

import json
import shutil
import tomllib

import pytest
import torch
from safetensors.torch import load_file

from fedclip.errors import FedclipError, ModelError
from fedclip.generate.model import load_generator, read_generator_config
from fedclip.generate.sample import SampleConfig, sample_dataset
from fedclip.generate.train import GeneratorTrainConfig, train_generator
from fedclip.models import load_checkpoint
from tests.conftest import GENERATOR_TINY as TINY


def test_the_checkpoint_is_safetensors_with_provenance_a_manifest_and_a_verified_hash(gen_trained, tmp_path):
    out, result = gen_trained
    ckpt = result["checkpoint"]
    cfg = read_generator_config(ckpt)
    assert cfg["kind"] == "generator" and cfg["model_cfg"]["sample_size"] == 16
    prov = cfg["provenance"]
    assert prov["privacy"] == {"dp": False, "statement": prov["privacy"]["statement"]}
    assert "trained without DP" in prov["privacy"]["statement"]
    assert "trained without DP" in cfg["label_statistics"]["privacy"]
    assert prov["members"] == "members.csv" and prov["n_patients"] == 2 and len(prov["data_fingerprint"]) == 64
    manifest = (out / "members.csv").read_text().splitlines()
    assert len(manifest) == 9 and "patient_id" in manifest[0]
    assert cfg["hospitals"] and set(cfg["hospitals"]) <= {"riverside", "summit"}  # from the data (no DP)
    load_file(str(ckpt / "model.safetensors"))  # no pickle anywhere
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))
    assert tomllib.loads((out / "config.toml").read_text())["generator"]["steps"] == 6
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    tampered = tmp_path / "tampered"
    shutil.copytree(ckpt, tampered)
    raw = bytearray((tampered / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (tampered / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="does not match the SHA-256"):
        load_generator(tampered)


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(gen_cohort, gen_trained, tmp_path):
    out, _ = gen_trained  # 6 steps straight (checkpointed at step 3 on the way)
    cfg = GeneratorTrainConfig(data=gen_cohort / "data", steps=6, save_every=3, **TINY)
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed)
    # simulate a crash after step 3: "last" is the step-3 state and the log holds lines past it
    shutil.rmtree(crashed / "checkpoints" / "last")
    shutil.copytree(crashed / "checkpoints" / "step-000003", crashed / "checkpoints" / "last")
    train_generator(cfg, crashed, resume=True)
    a = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(crashed / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in (crashed / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6]
    with pytest.raises(FedclipError, match="already holds a generator"):
        train_generator(cfg, crashed)
    with pytest.raises(FedclipError, match="nothing to resume"):
        train_generator(cfg, tmp_path / "empty", resume=True)


def test_sampling_writes_a_dataset_dir_and_the_same_seed_gives_the_same_images(gen_trained, tmp_path):
    from fedclip.data.records import read_metadata

    _, result = gen_trained
    a = sample_dataset(result["checkpoint"], tmp_path / "a", SampleConfig(n=5, seed=4, steps=3, batch_size=2))
    b = sample_dataset(result["checkpoint"], tmp_path / "b", SampleConfig(n=5, seed=4, steps=3, batch_size=2))
    c = sample_dataset(result["checkpoint"], tmp_path / "c", SampleConfig(n=5, seed=5, steps=3, batch_size=2))
    ra, rb, rc = read_metadata(a), read_metadata(b), read_metadata(c)
    assert len(ra) == 5 and all(r.caption for r in ra) and [r.caption for r in ra] == [r.caption for r in rb]
    assert all((a / r.filepath).read_bytes() == (b / s.filepath).read_bytes() for r, s in zip(ra, rb, strict=True))
    assert any((a / r.filepath).read_bytes() != (c / s.filepath).read_bytes() for r, s in zip(ra, rc, strict=True))
    assert all(r.meta["hospital"] in ("riverside", "summit") for r in ra)
    prov = json.loads((a / "provenance.json").read_text())
    assert prov["source"] == "generator" and prov["sampler"] == "DDIM" and prov["steps"] == 3
    assert prov["generator_weights_sha256"] == read_generator_config(result["checkpoint"])["weights_sha256"]
    assert prov["generator_privacy"]["dp"] is False


def test_a_generator_and_a_clip_checkpoint_are_not_taken_for_each_other(gen_trained, tmp_path):
    from fedclip import models

    _, result = gen_trained
    with pytest.raises(ModelError, match="is a generator checkpoint, not a CLIP model"):
        load_checkpoint(result["checkpoint"])
    clip = models.save_checkpoint(models.create("visionclip-tiny", seed=0), tmp_path / "clip")
    with pytest.raises(ModelError, match="is a CLIP checkpoint, not a generator"):
        load_generator(clip)
    with pytest.raises(ModelError, match="did you mean"):
        load_generator(gen_trained[0])


def test_dp_training_spends_the_cohorts_lifetime_budget_and_says_so(gen_cohort, tmp_path):
    state = tmp_path / "node"
    state.mkdir()
    (state / "policy.toml").write_text("[policy]\ndataset_size = 2\n")  # the hospital declares its size public
    cfg = GeneratorTrainConfig(data=gen_cohort / "data", steps=2, epsilon=4.0, state_dir=state, **TINY)
    result = train_generator(cfg, tmp_path / "dp")
    ledger = [json.loads(line) for line in (state / "ledger-cohort-default.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in ledger] == ["statistics", "generator"]
    assert {e["unit"] for e in ledger} == {"patient"} and ledger[-1]["epsilon"] <= 4.0 + 1e-6
    prov = read_generator_config(result["checkpoint"])["provenance"]["privacy"]
    assert prov["dp"] and prov["unit"] == "patient" and prov["neighbouring"] == "add/remove-one patient"
    assert prov["epsilon"] == pytest.approx(ledger[-1]["epsilon"]) and prov["noise_source"] == "os-csprng"
    stats = read_generator_config(result["checkpoint"])["label_statistics"]
    assert stats["privacy"]["unit"] == "patient" and stats["hospitals"] == {}  # no data-derived hospital list
    # the same hospital, the same cohort: the budget is spent, a second generator is refused
    with pytest.raises(FedclipError, match="lifetime epsilon 4 is spent|cannot pay"):
        train_generator(cfg, tmp_path / "dp-again")
