"""The federation end to end on Flower's real simulation engine (Ray), with DP clients and ledgers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from flwr.simulation import run_simulation

from fedclip import models
from fedclip.federated.config import FederateConfig
from fedclip.federated.server_app import make_server_app
from fedclip.federated.simulation import _absolute, simulate, summary
from tests.federated.helpers import tampering_client_app, train_entries

BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"num_cpus": 2, "include_dashboard": False}}


def test_simulation_runs_rounds_with_dp_clients_and_durable_ledgers(federation):
    base, cfg, result = federation
    assert result.state.round == 2
    rounds = result.rounds
    assert [r.round for r in rounds] == [0, 1, 2] and "balanced_accuracy" in rounds[0].server
    for r in rounds[1:]:
        assert sorted(int(c["partition"]) for c in r.clients) == [0, 1, 2]
        assert all(c["status"] == "aggregated" for c in r.clients)
    # every client spent its budget over the planned rounds, and no more
    final = [c["epsilon"] for c in rounds[2].clients]
    assert all(7.0 < e <= 8.0 + 1e-6 for e in final)
    assert len(result.ledger) == 6
    for i in range(3):
        assert [e["round"] for e in train_entries(base / "nodes" / f"client-{i}")] == [1, 2]
    assert not (cfg.out / "ledgers").exists()  # nothing of a node's ledger lives in the server's run dir
    # each round is a checkpoint in open_clip's layout that plain loading accepts
    for tag in ("round-001", "round-002", "last"):
        vc = models.load_checkpoint(cfg.out / "checkpoints" / tag, expect_model="visionclip-tiny")
        assert not any("_module" in k for k in vc.model.state_dict())
    start = models.load_checkpoint(cfg.checkpoint).model.state_dict()
    final_state = models.load_checkpoint(cfg.out / "checkpoints" / "last").model.state_dict()
    changed = {k for k in start if not torch.equal(start[k], final_state[k])}
    assert changed and all(k.startswith(("visual.transformer.resblocks.2.", "visual.ln_post", "visual.proj"))
                           for k in changed)


def test_extending_past_the_budget_makes_every_client_refuse(federation, tmp_path):
    base, cfg, _ = federation
    run = tmp_path / "run"
    shutil.copytree(cfg.out, run)  # ledgers included: the extension continues the same hospitals' spend
    extended = replace(cfg, out=run, rounds=3, resume=True)
    result = simulate(extended, state_root=base / "nodes")
    last = result.rounds[-1]
    assert last.round == 3 and [c["status"] for c in last.clients] == ["refused"] * 3
    assert all("past its budget" in c["reason"] for c in last.clients)
    before = models.load_checkpoint(run / "checkpoints" / "round-002").model.state_dict()
    after = models.load_checkpoint(run / "checkpoints" / "round-003").model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing aggregated
    assert all(len(train_entries(base / "nodes" / f"client-{i}")) == 2 for i in range(3))


def _nan_and_wrong_shape(pid: int, start: dict, update: dict) -> dict:
    """Hospital 0 sends NaN, hospital 1 a wrongly shaped array, hospital 2 an honest update."""
    key = sorted(update)[0]
    if pid == 0:
        update[key] = torch.full_like(update[key], float("nan"))
    elif pid == 1:
        update[key] = torch.zeros(3, 3)
    return update


def test_nan_and_wrong_shape_updates_are_rejected_and_the_rest_aggregated(federation, tmp_path):
    base, cfg, _ = federation
    bad = _absolute(replace(cfg, out=tmp_path / "bad", rounds=1))
    run_simulation(server_app=make_server_app(bad),
                   client_app=tampering_client_app(bad, tmp_path / "nodes", _nan_and_wrong_shape),
                   num_supernodes=3,
                   backend_config=BACKEND)
    result = summary(bad.out)
    clients = {int(c["partition"]): c for c in result.rounds[1].clients}
    assert clients[0]["status"] == "rejected" and "NaN" in clients[0]["reason"]
    assert clients[1]["status"] == "rejected" and "shape" in clients[1]["reason"]
    assert clients[2]["status"] == "aggregated"
    state = models.load_checkpoint(bad.out / "checkpoints" / "last").model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.slow  # a real process killed mid-run and two Ray simulations: ~70 s, an end-to-end fault test
def test_a_killed_server_resumes_after_its_last_completed_round(federation, tmp_path):
    base, cfg, _ = federation
    out = tmp_path / "killed"
    nodes = tmp_path / "nodes"
    # test-only seeds for the nodes' noise and sampling, so that a resumed run can be compared with an
    # uninterrupted one (a deployed node refuses this setting)
    policy = tmp_path / "policy.toml"
    policy.write_text("[policy]\ninsecure_test_seed = 11\n")

    def federate(run: Path, state: Path) -> list[str]:
        return [sys.executable, "-m", "fedclip.cli.main", "--quiet", "federate", "--checkpoint", str(cfg.checkpoint),
                "--data", str(cfg.data), "--eval-data", str(cfg.eval_data), "--out", str(run), "--rounds", "3",
                "--state-dir", str(state), "--policy", str(policy), "--set", "federate.finetune.batch_size=16"]
    proc = subprocess.Popen(federate(out, nodes), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "state.json").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((out / "state.json").read_text())["round"]
    assert 1 <= done < 3
    # only --out and --resume: the run's own config.toml supplies the rest (the policy is the nodes' own)
    again = [sys.executable, "-m", "fedclip.cli.main", "--quiet", "federate", "--out", str(out), "--state-dir",
             str(nodes), "--policy", str(policy), "--resume"]
    res = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3] and json.loads((out / "state.json").read_text())["round"] == 3
    # every client's ledger covers each round it trained, once (a round killed mid-way may add one extra
    # entry: over-counting is allowed, under-counting never)
    entries = [[e["round"] for e in train_entries(nodes / f"client-{i}")] for i in range(3)]
    for rounds_trained in entries:
        assert set(range(1, 4)) <= set(rounds_trained)
    # with the same seeds and no round charged twice, the resumed run reaches the uninterrupted run's weights
    # (up to the order in which Ray hands the server the replies); a round killed after a node's ledger
    # entry is charged again, so later rounds plan more noise and the runs rightly differ
    if all(sorted(r) == [1, 2, 3] for r in entries):
        whole = subprocess.run(federate(tmp_path / "whole", tmp_path / "nodes-whole"), capture_output=True,
                               text=True, timeout=300)
        assert whole.returncode == 0, whole.stderr[-3000:]
        a = models.load_checkpoint(out / "checkpoints" / "last").model.state_dict()
        b = models.load_checkpoint(tmp_path / "whole" / "checkpoints" / "last").model.state_dict()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    wrong = subprocess.run(again + ["--strategy", "fedmedian", "--epsilon", "4"],
                           capture_output=True, text=True, timeout=120)
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode == 2 and "changed finetune.epsilon (8.0 -> 4.0), strategy (fedavg -> fedmedian)" in said
    assert "Traceback" not in said


@pytest.mark.parametrize("overrides", [
    {"strategy": "fedprox", "proximal_mu": 0.5},
    {"strategy": "krum"},
])
def test_other_strategies_run_a_round(federation, tmp_path, overrides):
    base, cfg, _ = federation
    run = replace(cfg, out=tmp_path / "run", rounds=1, **overrides)
    result = simulate(run, state_root=tmp_path / "nodes")
    clients = result.rounds[1].clients
    assert [c["status"] for c in clients] == ["aggregated"] * 3
    start = models.load_checkpoint(cfg.checkpoint).model.state_dict()
    after = models.load_checkpoint(run.out / "checkpoints" / "last").model.state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start)
    assert all(torch.isfinite(v).all() for v in after.values())


def test_every_strategy_builds_and_unknown_names_are_refused():
    from fedclip.errors import FedclipError
    from fedclip.federated import strategies

    for name in strategies.STRATEGIES:
        assert type(strategies.build(FederateConfig(strategy=name))).__name__.startswith("Guarded")
    with pytest.raises(FedclipError, match="unknown strategy"):
        strategies.build(FederateConfig(strategy="fedsgd"))
    with pytest.raises(FedclipError, match="unknown server_dp"):
        strategies.build(FederateConfig(server_dp="local"))
    with pytest.raises(FedclipError, match="adaptive is not accounted"):
        strategies.build(FederateConfig(server_dp="adaptive"))
    for robust in ("fedmedian", "fedtrimmedavg", "krum", "fedadam"):
        with pytest.raises(FedclipError, match=f"cannot be combined with strategy {robust}"):
            strategies.build(FederateConfig(strategy=robust, server_dp="fixed"))
