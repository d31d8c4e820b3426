"""The ML of a federated round as plain functions (Flower-free, so they are testable on their own).

Client side: load this hospital's partition, apply the global weights, check the privacy budget,
fine-tune with DP-SGD, record the spend durably, return the update. Server side: merge weights into
the global model, evaluate it, checkpoint it. `client_app.py` / `server_app.py` only move messages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedclip import config as cfglib
from fedclip import evaluate, models
from fedclip.data import partition as partitioning
from fedclip.data.records import Record, read_metadata
from fedclip.errors import FedclipError
from fedclip.federated.ledger import BudgetExhausted, PrivacyLedger
from fedclip.finetune import (
    FinetuneConfig,
    finetune,
    load_pixels,
    noise_for_budget,
    prefix_tokens,
    steps_per_round,
    targets_for,
    trained_keys,
)


@dataclass(frozen=True)
class FederateConfig:
    checkpoint: Path | None = None  # the pretrained starting point (public weights)
    data: Path | None = None  # dataset dir partitioned into hospitals (simulation)
    eval_data: Path | None = None  # held-out set for server-side evaluation
    out: Path = Path("runs/federate")
    clients: int = 3
    rounds: int = 5
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 0.01  # FedAdam
    trim_beta: float = 0.2  # FedTrimmedAvg
    num_malicious: int = 0  # Krum
    server_dp: str = "none"  # none | fixed | adaptive (Flower's server-side clipping wrappers)
    server_dp_noise: float = 0.5
    server_dp_clip: float = 1.0
    partitioning: str = "hospital"  # hospital | iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration
    task: str = "referable_dr"
    # Defaults measured on 3 x ~1000 images at epsilon 8 (see README, "Federated figures"): with so little
    # data per hospital, training the projection alone with large Poisson batches beats training a block.
    train_blocks: int = 0
    lora_rank: int = 0
    local_epochs: int = 3
    batch_size: int = 256
    lr: float = 1.0
    dp: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    grad_sample_mode: str = "hooks"
    client_eval: bool = True  # also evaluate the global model on each hospital's data every round
    class_prior: tuple[float, ...] | None = None  # public class prevalence for a logit-adjusted loss
    seed: int = 0

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(task=self.task, train_blocks=self.train_blocks, lora_rank=self.lora_rank,
                              epochs=self.local_epochs, batch_size=self.batch_size, lr=self.lr, dp=self.dp,
                              epsilon=self.epsilon, delta=self.delta, rounds=self.rounds,
                              max_grad_norm=self.max_grad_norm, accountant=self.accountant,
                              grad_sample_mode=self.grad_sample_mode, class_prior=self.class_prior, seed=self.seed)


def to_run_config(cfg: FederateConfig) -> dict[str, Any]:
    """Flower run config (flat, dashed keys, no None) from the dataclass."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if v is not None:
            if isinstance(v, tuple):  # Flower run-config values are scalars
                v = ",".join(str(x) for x in v)
            out[f.name.replace("_", "-")] = str(v) if isinstance(v, Path) else v
    return out


def from_run_config(run_config: dict[str, Any]) -> FederateConfig:
    """The inverse of `to_run_config`: `flwr run . -c "rounds=3"` and TOML use the same names.

    An empty string stands for "not set" (Flower's run config, like TOML, has no null).
    """
    values = {k.replace("-", "_"): v for k, v in run_config.items() if v != ""}
    return cfglib.build(FederateConfig, values, "federate")


# ------------------------------------------------------------------------------------------ client
def client_records(cfg: FederateConfig, node_config: dict[str, Any]) -> tuple[str, list[Record], Path]:
    """This node's hospital: its own dataset dir (deployment) or a partition of the shared one (simulation)."""
    pid = int(node_config.get("partition-id", 0))
    if "data-dir" in node_config:  # a real hospital serves its own data
        root = Path(str(node_config["data-dir"]))
        return f"node-{pid}", read_metadata(root), root
    if cfg.data is None:
        raise FedclipError("no client data: pass --data (simulation) or node-config data-dir=... (deployment)")
    records = read_metadata(cfg.data)
    num = int(node_config.get("num-partitions", cfg.clients))
    if cfg.partitioning == "hospital":
        parts = list(partitioning.by_hospital(records).values())
        if len(parts) < num:
            raise FedclipError(f"the data has {len(parts)} hospitals but {num} clients; use --partitioning iid, "
                               "or fewer clients")
        parts = [sum((parts[j] for j in range(i, len(parts), num)), []) for i in range(num)]
    elif cfg.partitioning == "iid":
        parts = partitioning.iid(records, num, cfg.seed)
    elif cfg.partitioning == "dirichlet":
        parts = partitioning.dirichlet(records, num, cfg.alpha, evaluate.task(cfg.task).target, cfg.seed)
    else:
        raise FedclipError(f"unknown partitioning {cfg.partitioning!r}; use hospital, iid or dirichlet")
    return f"client-{pid}", [records[i] for i in parts[pid]], cfg.data


_TOKEN_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _tokens(vc: models.VisionClip, records: list[Record], root: Path,
            cfg: FederateConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-prefix outputs of this client's labelled images; cached, since the prefix never trains."""
    keep, targets = targets_for([r.labels for r in records], cfg.task)
    key = hashlib.sha256(f"{cfg.checkpoint}|{cfg.train_blocks}|{cfg.task}|{root}|"
                         f"{[records[i].filepath for i in keep]}".encode()).hexdigest()
    if key not in _TOKEN_CACHE:
        pixels = load_pixels(vc, [records[i].path(root) for i in keep])
        _TOKEN_CACHE.clear()
        _TOKEN_CACHE[key] = (prefix_tokens(vc, pixels, cfg.train_blocks), targets)
    return _TOKEN_CACHE[key]


def load_global(cfg: FederateConfig, arrays: dict[str, torch.Tensor] | None) -> models.VisionClip:
    if cfg.checkpoint is None:
        raise FedclipError("no --checkpoint: federated fine-tuning starts from a pretrained checkpoint")
    vc = models.load_checkpoint(cfg.checkpoint)
    if arrays:
        expected = set(trained_keys(vc, cfg.train_blocks))
        if set(arrays) != expected:
            raise FedclipError(f"global weights carry keys {sorted(set(arrays) ^ expected)[:4]} that do not match "
                               f"train_blocks={cfg.train_blocks}; client and server configs differ")
        vc.model.load_state_dict(arrays, strict=False)
    return vc


@dataclass
class ClientRound:
    update: dict[str, torch.Tensor] | None  # None: the client refused to train
    metrics: dict[str, float]
    refusal: str | None = None


def client_train(cfg: FederateConfig, node_config: dict[str, Any], arrays: dict[str, torch.Tensor], round_: int,
                 ledger_dir: Path, proximal_mu: float = 0.0) -> ClientRound:
    """One local round: budget check, DP fine-tuning, durable ledger entry, then the update."""
    name, records, root = client_records(cfg, node_config)
    vc = load_global(cfg, arrays)
    tokens, targets = _tokens(vc, records, root, cfg)
    ft = replace(cfg.finetune_config(), proximal_mu=proximal_mu)
    n = len(tokens)
    steps = steps_per_round(ft, n)
    metrics: dict[str, float] = {"num-examples": float(n), "round": float(round_),
                                 "partition": float(node_config.get("partition-id", 0))}
    if cfg.dp:
        ledger = PrivacyLedger(ledger_dir / f"{name}.jsonl", name, cfg.epsilon, cfg.delta, cfg.accountant)
        planned = ledger.entries()
        # The noise is planned once, for the budget over the rounds planned at the start; a federation
        # extended later keeps it, and the ledger refuses the rounds the budget cannot pay for.
        sigma = planned[0].noise_multiplier if planned else noise_for_budget(ft, n, steps)
        q = min(1.0, cfg.batch_size / n)
        try:
            ledger.check(sigma, q, steps)
        except BudgetExhausted as e:
            return ClientRound(None, {**metrics, "refused": 1.0, "epsilon": ledger.spent()}, str(e))
    result = finetune(vc, tokens, targets, ft, noise_multiplier=sigma if cfg.dp else None,
                      generator_seed=cfg.seed * 1000 + round_ * 10 + int(node_config.get("partition-id", 0)))
    metrics.update({"train-loss": result.loss, "train-accuracy": result.accuracy})
    if cfg.dp:
        entry = ledger.record(round_, sigma, q, steps)  # durable BEFORE the update leaves this node
        metrics.update({"epsilon": entry.epsilon, "epsilon-round": entry.epsilon_round,
                        "noise-multiplier": sigma, "sample-rate": q, "steps": float(steps)})
    return ClientRound(result.state, metrics)


def client_evaluate(cfg: FederateConfig, node_config: dict[str, Any],
                    arrays: dict[str, torch.Tensor]) -> dict[str, float]:
    _, records, root = client_records(cfg, node_config)
    vc = load_global(cfg, arrays)
    keep, _ = targets_for([r.labels for r in records], cfg.task)
    res = evaluate.zero_shot(vc, [records[i].path(root) for i in keep], [records[i].labels for i in keep],
                             cfg.task, n_boot=0)
    return {"num-examples": float(res["n"]), "balanced-accuracy": res["balanced_accuracy"]}


# ------------------------------------------------------------------------------------------ server
def check_update(update: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why an update must be rejected (wrong keys, wrong shape, NaN/Inf), or None if it is sound."""
    if set(update) != set(expected):
        return f"keys differ from the global model ({sorted(set(update) ^ set(expected))[:3]})"
    for k, v in update.items():
        if tuple(v.shape) != tuple(expected[k]):
            return f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k])}"
        if not np.isfinite(v).all():
            return f"{k} contains NaN or Inf"
    return None


def server_evaluate(cfg: FederateConfig, vc: models.VisionClip, records: list[Record], root: Path) -> dict[str, float]:
    res = evaluate.zero_shot(vc, [r.path(root) for r in records], [r.labels for r in records], cfg.task, n_boot=0)
    return {"balanced-accuracy": res["balanced_accuracy"], "macro-f1": res["macro_f1"],
            **({"auc": res["auc"]} if "auc" in res else {}), "n": float(res["n"])}

