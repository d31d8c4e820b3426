"""Strategy choice by config, with a guard that drops unusable updates before aggregation.

Flower's strategies aggregate whatever arrives; one NaN from one hospital would poison the global
model. `guarded(cls)` subclasses any Flower strategy (or DP wrapper) so that a reply is dropped,
with a logged reason, when it carries no update (a node that refused or failed), NaN/Inf, arrays
whose keys, shapes or dtypes differ from the global model's, or an absurdly large change (L2 distance
from the round's global weights above `max_update_norm`; a well-formed malicious update below it is
what robust aggregation is for). The rest of the round proceeds if at least
`min_replies` usable updates remain (else the global model stays as it was). Only the public
keys of a reply (`keys.PUBLIC_METRICS`, `keys.PUBLIC_STRINGS`) reach the server's files.

Server-side DP (`server_dp = "fixed"`) is Flower's fixed-clipping wrapper with Flower's own RDP
accountant (hospital-level, no sampling amplification), uniform weights and FedAvg aggregation over a
*fixed* denominator: the configured number of hospitals n. A hospital that is missing, refused, failed
or was rejected counts as a zero update (the round's global weights), so the average is the sum of the
clipped changes over n and the noise std is z * C / n whatever the number k that actually arrived.
Sizing either by k would make the size of the round's change reveal k (one hospital's absence); with
the fixed denominator a hospital's presence moves the release by at most C / n, which is what the
accountant's Gaussian event (noise multiplier z) assumes. The noise is drawn by the same float-safe
sampler as DP-SGD's, from a fresh OS-CSPRNG seed (Flower's own draws from NumPy's global RNG). Robust rules
(median, trimmed mean, Krum) and FedAdam change the sensitivity the noise assumes and are refused with
it; adaptive clipping is refused because Flower 1.42 has no accountant for its clipped-count release.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
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
from fedclip.federated import keys
from fedclip.federated.config import FederateConfig
from fedclip.federated.task import check_update
from fedclip.noise import gaussian_like, generator

log = logging.getLogger("fedclip.federated")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
SERVER_DP_STRATEGIES = ("fedavg", "fedprox")  # FedProx aggregates exactly as FedAvg does

ReplyCallback = Callable[[int, list[dict[str, Any]], dict[str, Any] | None], None]
"""(server round, one row per reply, the round's central-DP figures or None)."""


def public_row(msg: Message) -> dict[str, Any]:
    """The reply's public numbers and strings; anything else a node sent is dropped here."""
    metrics = dict(msg.content[keys.METRICS]) if keys.METRICS in msg.content else {}
    strings = dict(msg.content[keys.CONFIG]) if keys.CONFIG in msg.content else {}
    dropped = sorted((set(metrics) - keys.PUBLIC_METRICS) | (set(strings) - keys.PUBLIC_STRINGS))
    if dropped:
        log.warning("node %s sent keys outside the public set, not recorded: %s", msg.metadata.src_node_id, dropped)
    return {"node": msg.metadata.src_node_id,
            **{k: v for k, v in metrics.items() if k in keys.PUBLIC_METRICS},
            **{k: v for k, v in strings.items() if k in keys.PUBLIC_STRINGS}}


def guarded(cls: type[Strategy]) -> type[Strategy]:
    class Guarded(cls):  # type: ignore[misc, valid-type]
        """`cls` that rejects unusable updates (see module docstring)."""

        def __init__(self, *args: Any, on_replies: ReplyCallback | None = None, min_replies: int = 1,
                     max_update_norm: float = 1000.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_replies = on_replies
            self.min_replies = min_replies
            self.max_update_norm = max_update_norm
            self._global: dict[str, np.ndarray] = {}  # the arrays this round sent out

        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Iterable[Message]:
            self._global = {k: v.numpy() for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def _screen(self, server_round: int, replies: Iterable[Message]) -> tuple[list[Message], list[dict]]:
            kept, report = [], []
            for msg in replies:
                if msg.has_error():
                    report.append({"node": msg.metadata.src_node_id, "status": "error",
                                   "reason": str(msg.error.reason)[:200]})
                    continue
                row = public_row(msg)
                if row.get(keys.REFUSED) or row.get(keys.FAILED):
                    status = "refused" if row.get(keys.REFUSED) else "failed"
                    report.append({**row, "status": status, "reason": row.get(keys.REASON, status)})
                    log.warning("round %s: node %s %s: %s", server_round, row["node"], status, row.get(keys.REASON))
                    continue
                if keys.ARRAYS not in msg.content:
                    report.append({**row, "status": "rejected", "reason": "no arrays in the reply"})
                    continue
                update = {k: v.numpy() for k, v in msg.content[keys.ARRAYS].items()}
                problem = check_update(update, self._global, self.max_update_norm)
                if problem:
                    report.append({**row, "status": "rejected", "reason": problem})
                    log.warning("round %s: rejected the update of node %s: %s", server_round, row["node"], problem)
                    continue
                weight = row.get(keys.UNIT_WEIGHT)
                if weight != 1.0:  # accounted aggregation needs uniform weights; Flower would abort the round
                    report.append({**row, "status": "rejected",
                                   "reason": f"{keys.UNIT_WEIGHT} is {weight!r}, every node must send 1.0"})
                    continue
                report.append({**row, "status": "aggregated"})
                kept.append(msg)
            return kept, report

        def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
            """Flower's wrapper hands over the round's weights plus the mean of the k clipped changes that
            arrived; the release is the round's weights plus their *sum over n* (each absent hospital a zero
            update) plus noise of std z * C / n, drawn by DP-SGD's float-safe sampler from the OS CSPRNG.
            (Flower's own clipping divides by a zero change's norm, so absent hospitals are not passed in as
            zero updates; the rescaling by k / n here is the same average.)"""
            n, k = self.denominator, self._arrived
            std = self.noise_multiplier * self.clipping_norm / n
            gen = generator()
            noised = {}
            for key, v in aggregated_arrays.items():
                start = torch.from_numpy(np.array(self._global[key], dtype=np.float64))
                mean = torch.from_numpy(np.array(v.numpy(), dtype=np.float64))
                released = start + (mean - start) * (k / n)
                released = released + gaussian_like(std, released, gen)
                noised[key] = Array(released.numpy().astype(v.numpy().dtype))
            return ArrayRecord(noised)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]):
            kept, report = self._screen(server_round, replies)
            central = None
            if len(kept) < self.min_replies:
                log.warning("round %s: %d usable update(s), fewer than min_replies=%d; the global model stays "
                            "as it was", server_round, len(kept), self.min_replies)
                for row in report:
                    if row["status"] == "aggregated":
                        row.update(status="not aggregated", reason=f"fewer than min_replies={self.min_replies} "
                                                                   "usable updates this round")
                if isinstance(self, DifferentialPrivacyServerSideFixedClipping):
                    self._pop_pending_event(server_round)  # nothing released, nothing composed
                result: tuple = (None, None)
            elif isinstance(self, DifferentialPrivacyServerSideFixedClipping):
                # a fixed denominator n: every absent update is a zero update, the noise std z * C / n
                self.denominator, self._arrived = self.num_sampled_clients, len(kept)
                self.num_sampled_clients = len(kept)  # what Flower's reply-count check expects
                try:
                    result = super().aggregate_train(server_round, kept)
                finally:
                    self.num_sampled_clients = self.denominator
                spent = self.privacy_spent()
                central = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                           "noise_multiplier": self.noise_multiplier, "clipping_norm": self.clipping_norm,
                           "denominator": self.denominator, "unit": "hospital",
                           "neighbouring": "add/remove-one hospital (an absent hospital is a zero update)",
                           "accountant": "flwr RdpAccountant (dp-accounting RDP), no sampling amplification",
                           "noise_source": "os-csprng", "accountant_state": self.accountant.state_dict()}
            else:
                result = super().aggregate_train(server_round, kept)
            if self.on_replies is not None:
                self.on_replies(server_round, report, central)
            return result

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
            answered = [m for m in replies if not m.has_error() and keys.METRICS in m.content
                        and keys.ACCURACY in m.content[keys.METRICS]]
            return super().aggregate_evaluate(server_round, answered) if answered else None

    Guarded.__name__ = f"Guarded{cls.__name__}"
    return Guarded


def build(cfg: FederateConfig, on_replies: ReplyCallback | None = None,
          accountant_state: dict[str, Any] | None = None) -> Strategy:
    """The configured strategy, guarded, optionally inside Flower's accounted server-side DP clipping.

    `accountant_state` is the central accountant's state a resumed run saved (its earlier releases)."""
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
        return guarded(cls)(**common, **extra, on_replies=on_replies, min_replies=cfg.min_replies,
                            max_update_norm=cfg.max_update_norm)
    if cfg.server_dp == "adaptive":
        raise FedclipError("server_dp=adaptive is not accounted: Flower 1.42 has no accountant for adaptive "
                           "clipping's noisy clipped-count release, so no central epsilon could be stated; "
                           "use server_dp=fixed")
    if cfg.server_dp != "fixed":
        raise FedclipError(f"unknown server_dp {cfg.server_dp!r}; use none or fixed")
    if cfg.strategy not in SERVER_DP_STRATEGIES:
        raise FedclipError(f"server_dp=fixed cannot be combined with strategy {cfg.strategy}: the noise is sized "
                           "for a uniform average of clipped updates (sensitivity C / k), which median, trimmed "
                           "mean, Krum and FedAdam's server optimizer do not compute; use fedavg or fedprox")
    if cfg.server_dp_noise <= 0:
        raise FedclipError("server_dp_noise must be positive for accounted server-side DP")
    from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(PrivacyConfig(
        target_delta=cfg.server_dp_delta, population_size=cfg.clients,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, sampling_method=SamplingMethod.NO_AMPLIFICATION))
    if accountant_state is not None:
        try:
            accountant.load_state_dict(accountant_state)
        except ValueError as e:
            raise FedclipError(f"the saved central-DP accountant state does not match this run ({e}); resume with "
                               "the same server_dp settings or start a new --out") from None
    inner = cls(**common, **extra, weighted_by_key=keys.UNIT_WEIGHT)  # uniform weights, as accounting requires
    return guarded(DifferentialPrivacyServerSideFixedClipping)(
        inner, noise_multiplier=cfg.server_dp_noise, clipping_norm=cfg.server_dp_clip,
        num_sampled_clients=cfg.clients, accountant=accountant, on_replies=on_replies, min_replies=cfg.min_replies,
        max_update_norm=cfg.max_update_norm)
