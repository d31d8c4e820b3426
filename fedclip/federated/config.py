"""A federation's settings: `FederateConfig`, its Flower run-config codec and pyproject's app config.

One owner for what a federation asks of its nodes; `task.py` runs rounds with it, `server_app.py`
records it, and `flwr run . -c "rounds=3 finetune.lr=0.5"` reaches it through `from_run_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from fedclip import config as cfglib
from fedclip.errors import FedclipError
from fedclip.federated.policy import Grant
from fedclip.finetune import FinetuneConfig


def federated_finetune() -> FinetuneConfig:
    """A node's local training, as a federation asks for it by default. Measured on 3 x ~1000 images at
    epsilon 8 (docs/experiments.md): with so little data per hospital, training the projection alone with
    large Poisson batches beats training a block. `dp`, `epsilon`, `delta` and `unit` are what the run
    *asks*; each node grants them only within its own policy."""
    return FinetuneConfig(train_blocks=0, epochs=3, batch_size=256, lr=1.0, unit="patient")


OWNED_BY_FEDERATION = {"rounds": "federate.rounds", "proximal_mu": "federate.proximal_mu",
                       "noise_multiplier": "each node (planned from its own budget)",
                       "accountant": "each node's policy"}
"""`finetune` settings a federation sets itself: a value in `[federate.finetune]` would be ignored."""


@dataclass(frozen=True)
class FederateConfig:
    checkpoint: Path | None = None  # the pretrained starting point (public weights)
    data: Path | None = None  # dataset dir partitioned into hospitals (simulation)
    eval_data: Path | None = None  # held-out set for server-side evaluation
    out: Path = Path("runs/federate")
    resume: bool = False  # continue the federation in `out` after its last completed round
    clients: int = 3  # nodes that must be online before a round starts (each is asked to train)
    min_replies: int = 1  # usable updates a round needs to be aggregated; with fewer the model stays as it was
    max_update_norm: float = 1000.0  # an update further (L2) from the global weights is rejected as absurd
    rounds: int = 5
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum
    proximal_mu: float = 0.01  # FedProx
    server_lr: float = 0.01  # FedAdam
    trim_beta: float = 0.2  # FedTrimmedAvg
    num_malicious: int = 0  # Krum
    server_dp: str = "none"  # none | fixed (Flower's server-side clipping, accounted per hospital)
    server_dp_noise: float = 0.5
    server_dp_clip: float = 1.0
    server_dp_delta: float = 1e-3  # hospital-level delta of the central epsilon (a handful of hospitals)
    partitioning: str = "hospital"  # hospital | iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration
    client_eval: bool = False  # ask nodes to evaluate the global model (only policies that allow it answer)
    seed: int = 0  # simulation's iid/dirichlet partitioning only; never DP noise or sampling
    finetune: FinetuneConfig = field(default_factory=federated_finetune)  # each node's local round

    def __post_init__(self) -> None:
        if not self.max_update_norm > 0:
            raise FedclipError(f"federate.max_update_norm must be positive, got {self.max_update_norm}")
        if not 1 <= self.min_replies <= self.clients:
            raise FedclipError(f"federate.min_replies must be between 1 and federate.clients ({self.clients}), "
                               f"got {self.min_replies}")
        cfglib.refuse_owned(self.finetune, FinetuneConfig(), OWNED_BY_FEDERATION, "federate.finetune")

    def with_finetune(self, **changes: Any) -> FederateConfig:
        """This config with some local-training settings changed (`cfg.with_finetune(epsilon=4.0)`)."""
        return replace(self, finetune=replace(self.finetune, **changes))

    def per_node(self) -> FinetuneConfig:
        """The fine-tuning one node runs over the whole federation, in one go (every round's epochs back to
        back): what an auditor re-runs to imitate a hospital's training."""
        return replace(self.finetune, epochs=self.finetune.epochs * self.rounds, rounds=1)

    def finetune_config(self, grant: Grant, proximal_mu: float = 0.0) -> FinetuneConfig:
        """What this node runs in one round: the requested training within the node's grant."""
        return replace(self.finetune, dp=grant.dp, epsilon=grant.epsilon, delta=grant.delta, unit=grant.unit,
                       accountant=grant.accountant, rounds=self.rounds, proximal_mu=proximal_mu)


def to_run_config(cfg: FederateConfig) -> dict[str, Any]:
    """Flower run config from the dataclass: flat dotted keys for nested tables, dashes for underscores
    (`finetune.batch-size`), tuples comma-joined (run-config values are scalars), no None."""
    return {k.replace("_", "-"): ",".join(str(x) for x in v) if isinstance(v, list) else v
            for k, v in cfglib.flatten(cfglib.plain(cfg)).items()}


def from_run_config(run_config: dict[str, Any]) -> FederateConfig:
    """The inverse of `to_run_config`: `flwr run . -c "rounds=3 finetune.lr=0.5"` and TOML use the same
    names. An empty string stands for "not set" (Flower's run config, like TOML, has no null)."""
    values = cfglib.unflatten({k.replace("-", "_"): v for k, v in run_config.items() if v != ""})
    return cfglib.build(FederateConfig, values, "federate")


def flower_app_config() -> str:
    """`[tool.flwr.app.config]` for pyproject.toml: every setting at its default, "" for unset
    (`make flwr-config` writes it; a test checks that pyproject holds exactly this). Flower accepts `-c`
    overrides only of keys listed there."""
    def every_field(cfg: Any) -> dict[str, Any]:  # `plain` leaves None out; Flower must know those keys too
        return {f.name: every_field(v) if is_dataclass(v := getattr(cfg, f.name)) else v for f in fields(cfg)}

    def scalar(v: Any) -> Any:
        return "" if v is None else ",".join(map(str, v)) if isinstance(v, tuple) else str(v) \
            if isinstance(v, Path) else v

    flat = {k.replace("_", "-"): scalar(v) for k, v in cfglib.flatten(every_field(FederateConfig())).items()}
    return tomli_w.dumps({"tool": {"flwr": {"app": {"config": cfglib.unflatten(flat)}}}})


# ------------------------------------------------------------------------------------------ client
