"""A hospital's privacy policy: the node, not whoever submits the run, decides what leaves it.

The policy lives with the node — `policy.toml` in its state dir (deployment; `--node-config
policy=PATH` points elsewhere), or a per-hospital table of `fedclip federate --policy FILE` in
simulation. The run config only *asks* (`dp`, `epsilon`, `delta`, `unit`); `negotiate` grants the
request when it asks for no less privacy than the policy, and otherwise refuses with a reason the
server can log. Defaults are the safe choice: DP required, epsilon at most 8, delta at most 1e-5,
the patient as the unit of privacy, no answers to evaluation requests, no deterministic noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedclip import config as cfglib
from fedclip.errors import FedclipError

UNITS = ("image", "patient")
NEIGHBOURING = "add/remove-one"  # what Opacus' RDP and PRV accountants assume; see docs/privacy.md


class Refusal(FedclipError):
    """The node will not take part in this round; the message is safe to send to the server."""


@dataclass(frozen=True)
class NodePolicy:
    dp_required: bool = True
    max_epsilon: float = 8.0  # lifetime budget on one dataset (fingerprint), over every run
    delta: float = 1e-5  # the largest delta the node accepts
    unit: str = "patient"  # patient | image: what one neighbouring dataset differs by
    # patient unit, an image without a patient_id: "exclude" it from training (a per-record choice: DP
    # holds), count it as its "own-patient" (right only if nobody has several), or "refuse" the round
    # (which tells the server that some image lacks an id); the ledger records which
    images_without_patient: str = "exclude"
    accountant: str = "rdp"  # rdp | prv: recomputes the whole lifetime history
    answer_evaluate: bool = False  # answer evaluation requests (noised, charged) or refuse them
    evaluate_noise: float = 20.0  # std of the Gaussian noise on the released (correct, count) pair
    dataset_size: int | None = None  # a size the hospital declares public; else released once, noised
    size_noise: float = 20.0  # std of the Gaussian noise on the dataset size when it is not declared
    # TEST ONLY: seeds DP noise and sampling so that a test can reproduce a run. Refused in deployment,
    # and every ledger entry it touches says so.
    insecure_test_seed: int | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise FedclipError(f"policy unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.images_without_patient not in ("exclude", "own-patient", "refuse"):
            raise FedclipError("policy images_without_patient must be exclude, own-patient or refuse")
        if self.max_epsilon <= 0 or not 0 < self.delta < 1:
            raise FedclipError("policy needs max_epsilon > 0 and 0 < delta < 1")
        if self.dataset_size is not None and self.dataset_size < 1:
            raise FedclipError("policy dataset_size must be a positive integer (the size you declare public)")


@dataclass(frozen=True)
class Grant:
    """What the node agreed to for this run: the effective privacy parameters."""

    dp: bool
    epsilon: float
    delta: float
    unit: str
    accountant: str


def negotiate(policy: NodePolicy, *, dp: bool, epsilon: float, delta: float, unit: str) -> Grant:
    """The run's request if the policy allows it, else `Refusal` naming what was asked and allowed."""
    if not dp:
        if policy.dp_required:
            raise Refusal("refused: the node's policy requires DP; the run asked for dp=false")
        return Grant(False, float("inf"), 0.0, unit, policy.accountant)
    if unit != policy.unit:
        raise Refusal(f"refused: the run asked for unit={unit}; the node's policy protects unit={policy.unit}")
    if epsilon > policy.max_epsilon:
        raise Refusal(f"refused: the run asked for epsilon={epsilon:g}; the node's policy allows at most "
                      f"{policy.max_epsilon:g}")
    if delta > policy.delta:
        raise Refusal(f"refused: the run asked for delta={delta:g}; the node's policy allows at most {policy.delta:g}")
    return Grant(True, epsilon, delta, unit, policy.accountant)


def load(path: str | Path | None) -> NodePolicy:
    """A node's policy from `[policy]` in a TOML file; the defaults when `path` is None."""
    if path is None:
        return NodePolicy()
    return cfglib.load(NodePolicy, "policy", path)


def load_simulated(path: str | Path | None, clients: int) -> list[NodePolicy]:
    """One policy per simulated hospital: `[policy]` for all, `[policy.client-N]` overriding one."""
    if path is None:
        return [NodePolicy()] * clients
    table: dict[str, Any] = cfglib.read_section(path, "policy")
    common = {k: v for k, v in table.items() if not isinstance(v, dict)}
    per_client = {k: v for k, v in table.items() if isinstance(v, dict)}
    unknown = sorted(set(per_client) - {f"client-{i}" for i in range(clients)})
    if unknown:
        raise FedclipError(f"{path}: [policy.{unknown[0]}] names no simulated hospital; "
                           f"use client-0 .. client-{clients - 1}")
    return [cfglib.build(NodePolicy, {**common, **per_client.get(f"client-{i}", {})}, f"policy.client-{i}")
            for i in range(clients)]
