import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedclip import config as cfglib
from fedclip.errors import FedclipError
from fedclip.pretrain import PretrainConfig, lr_at, parse_synth, pretrain

SYNTH = "n=96 seed=1 size=48 hospital=riverside"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = PretrainConfig(synth=SYNTH, steps=6, batch_size=16, workers=0, warmup=2, seed=3)
    straight = pretrain(cfg, tmp_path / "a")
    # interrupted after step 3: a run whose planned end is step 6 but that stopped at its step-3 checkpoint
    half = PretrainConfig(synth=SYNTH, steps=6, batch_size=16, workers=2, warmup=2, seed=3, save_every=3)
    pretrain(half, tmp_path / "b")
    state_dir = tmp_path / "b" / "checkpoints"
    # simulate the crash: "last" is the step-3 state, and the log holds lines past it
    shutil.rmtree(state_dir / "last")
    shutil.copytree(state_dir / "step-000003", state_dir / "last")
    resumed = pretrain(half, tmp_path / "b", resume=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["final_loss"] == resumed["final_loss"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    saved = cfglib.read_section(tmp_path / "b" / "config.toml", "pretrain")
    assert saved["steps"] == 6 and saved["synth"] == SYNTH


def test_training_lowers_the_loss_and_checkpoint_records_provenance(tmp_path, small_dataset):
    cfg = PretrainConfig(data=small_dataset, steps=12, batch_size=16, workers=0, warmup=2, lr=1e-3)
    pretrain(cfg, tmp_path / "r")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    prov = json.loads((tmp_path / "r" / "checkpoints" / "last" / "config.json").read_text())["provenance"]
    assert prov["steps"] == 12 and prov["data"] == str(small_dataset)


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    cfg = PretrainConfig(synth=SYNTH, steps=3, batch_size=16, workers=0, warmup=1, seed=5)
    pretrain(cfg, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "fedclip.cli.main", "--quiet", "pretrain", "--out", str(tmp_path / "ddp"), "--synth", SYNTH,
           "--steps", "3", "--batch-size", "16", "--workers", "0", "--seed", "5", "--set", "pretrain.warmup=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    prov = json.loads((tmp_path / "ddp" / "checkpoints" / "last" / "config.json").read_text())["provenance"]
    assert prov["world_size"] == 2
    # gathered features: the two-process gradient is the global-batch gradient (up to float reduction order)
    assert all(torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4) for k in a)


def test_schedule_and_bad_input(tmp_path):
    cfg = PretrainConfig(steps=100, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5) and lr_at(100, cfg) == pytest.approx(0.0)
    spec, n = parse_synth("n=10 seed=2 size=64 hospital=summit")
    assert n == 10 and spec.hospital == "summit" and spec.size == 64
    with pytest.raises(FedclipError, match="unknown key"):
        parse_synth("n=10 colour=blue")
    with pytest.raises(FedclipError, match="exactly one of"):
        pretrain(PretrainConfig(steps=1), tmp_path / "never")
    with pytest.raises(FedclipError, match=r"\[pretrain\] has no setting"):
        cfglib.load(PretrainConfig, "pretrain", overrides=["pretrain.stepz=3"])
    with pytest.raises(FedclipError, match="not a valid int"):
        cfglib.load(PretrainConfig, "pretrain", overrides=["pretrain.steps=many"])


def test_resume_without_a_run_and_restart_over_a_run_are_refused(tmp_path):
    cfg = PretrainConfig(synth=SYNTH, steps=1, batch_size=8, workers=0)
    with pytest.raises(FedclipError, match="nothing to resume"):
        pretrain(cfg, tmp_path / "x", resume=True)
    pretrain(cfg, tmp_path / "x")
    with pytest.raises(FedclipError, match="already has checkpoints"):
        pretrain(cfg, tmp_path / "x")
    with pytest.raises(FedclipError, match="exceeds the dataset"):
        pretrain(PretrainConfig(synth="n=4 size=48", steps=1, batch_size=8, workers=0), tmp_path / "y")


def test_a_run_stopped_after_its_timed_save_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """`last` is refreshed every `save_minutes` of training (10 by default), so Ctrl-C loses at most that
    much: here a save after every step, and a Ctrl-C right after the one at step 3."""
    import fedclip.pretrain as pretrain_mod

    cfg = PretrainConfig(synth=SYNTH, steps=6, batch_size=16, workers=0, warmup=2, seed=3)
    pretrain(cfg, tmp_path / "a")
    timed = PretrainConfig(synth=SYNTH, steps=6, batch_size=16, workers=0, warmup=2, seed=3, save_minutes=1e-9)
    real_save = pretrain_mod.save

    def save_then_ctrl_c(run, tag, vc, *, step, **kw):
        out = real_save(run, tag, vc, step=step, **kw)
        if step == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(pretrain_mod, "save", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        pretrain(timed, tmp_path / "b")
    monkeypatch.setattr(pretrain_mod, "save", real_save)
    kept = json.loads((tmp_path / "b" / "checkpoints" / "last" / "config.json").read_text())["provenance"]
    assert kept["steps"] == 3 and not list((tmp_path / "b" / "checkpoints").glob("step-*"))
    pretrain(timed, tmp_path / "b", resume=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
