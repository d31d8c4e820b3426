"""Strategy choice by config, with a guard that drops unusable updates before aggregation.

Flower's strategies aggregate whatever arrives; one NaN from one hospital would poison the global
model. `guarded(cls)` subclasses any Flower strategy (or DP wrapper) so that a reply is dropped,
with a logged reason, when it carries no update (a client that refused for budget), NaN/Inf, or
arrays whose keys or shapes differ from the global model's. The rest of the round proceeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from fedclip.errors import FedclipError
from fedclip.federated.task import FederateConfig, check_update

log = logging.getLogger("fedclip.federated")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")

ReplyCallback = Callable[[int, list[dict[str, Any]]], None]


def guarded(cls: type[Strategy]) -> type[Strategy]:
    class Guarded(cls):  # type: ignore[misc, valid-type]
        """`cls` that rejects unusable updates (see module docstring)."""

        on_replies: ReplyCallback | None = None
        _expected: dict[str, tuple[int, ...]] = {}

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Iterable[Message]:
            self._expected = {k: tuple(v.shape) for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            kept, report = [], []
            for msg in replies:
                if msg.has_error():
                    report.append({"node": msg.metadata.src_node_id, "status": "error",
                                   "reason": str(msg.error.reason)})
                    kept.append(msg)  # the base strategy counts and logs failures itself
                    continue
                metrics = dict(msg.content["metrics"]) if "metrics" in msg.content else {}
                row = {"node": msg.metadata.src_node_id, **metrics}
                if metrics.get("refused"):
                    reason = msg.content["config"]["reason"] if "config" in msg.content else "refused"
                    report.append({**row, "status": "refused", "reason": reason})
                    log.warning("round %s: node %s refused to train: %s", server_round, row["node"], reason)
                    continue
                if "arrays" not in msg.content:
                    report.append({**row, "status": "rejected", "reason": "no arrays in the reply"})
                    continue
                update = {k: v.numpy() for k, v in msg.content["arrays"].items()}
                problem = check_update(update, self._expected)
                if problem:
                    report.append({**row, "status": "rejected", "reason": problem})
                    log.warning("round %s: rejected the update of node %s: %s", server_round, row["node"], problem)
                    continue
                report.append({**row, "status": "aggregated"})
                kept.append(msg)
            if self.on_replies is not None:
                self.on_replies(server_round, report)
            if not any(not m.has_error() for m in kept):
                log.warning("round %s: no usable update; the global model stays as it was", server_round)
                return None, None
            return super().aggregate_train(server_round, kept)

    Guarded.__name__ = f"Guarded{cls.__name__}"
    return Guarded


def build(cfg: FederateConfig, on_replies: ReplyCallback | None = None) -> Strategy:
    """The configured strategy, guarded, optionally inside Flower's server-side DP clipping."""
    common = {"fraction_train": 1.0, "fraction_evaluate": 1.0 if cfg.client_eval else 0.0,
              "min_train_nodes": cfg.clients,
              "min_evaluate_nodes": cfg.clients, "min_available_nodes": cfg.clients}
    base: dict[str, tuple[type[Strategy], dict[str, Any]]] = {
        "fedavg": (FedAvg, {}),
        "fedprox": (FedProx, {"proximal_mu": cfg.proximal_mu}),
        "fedadam": (FedAdam, {"eta": cfg.server_lr}),
        "fedmedian": (FedMedian, {}),
        "fedtrimmedavg": (FedTrimmedAvg, {"beta": cfg.trim_beta}),
        "krum": (Krum, {"num_malicious_nodes": cfg.num_malicious}),
    }
    if cfg.strategy not in base:
        raise FedclipError(f"unknown strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    cls, extra = base[cfg.strategy]
    if cfg.server_dp == "none":
        strategy = guarded(cls)(**common, **extra)
    elif cfg.server_dp == "fixed":
        strategy = guarded(DifferentialPrivacyServerSideFixedClipping)(
            cls(**common, **extra), noise_multiplier=cfg.server_dp_noise, clipping_norm=cfg.server_dp_clip,
            num_sampled_clients=cfg.clients)
    elif cfg.server_dp == "adaptive":
        # The clipped-count noise must leave room for the requested update noise (Flower checks it);
        # its default (clients / 20) does not for a handful of hospitals.
        strategy = guarded(DifferentialPrivacyServerSideAdaptiveClipping)(
            cls(**common, **extra), noise_multiplier=cfg.server_dp_noise, num_sampled_clients=cfg.clients,
            initial_clipping_norm=cfg.server_dp_clip,
            clipped_count_stddev=max(cfg.clients / 20, 4.0 * cfg.server_dp_noise))
    else:
        raise FedclipError(f"unknown server_dp {cfg.server_dp!r}; use none, fixed or adaptive")
    strategy.on_replies = on_replies
    return strategy
