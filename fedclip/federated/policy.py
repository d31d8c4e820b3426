"""A hospital's privacy policy: the node, not whoever submits the run, decides what leaves it.

The policy lives with the node — `policy.toml` in its state dir (deployment; `--node-config
policy=PATH` points elsewhere), or a per-hospital table of `fedclip federate --policy FILE` in
simulation. The run config only *asks* (`dp`, `epsilon`, `delta`, `unit`); `negotiate` grants the
request when it asks for no less privacy than the policy, and otherwise refuses with a reason the
server can log. Defaults are the safe choice: DP required, epsilon at most 8, delta at most 1e-5,
the patient as the unit of privacy, no answers to evaluation requests, no deterministic noise.
"""

from __future__ import annotations

import math
import re
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
    # The people this node's lifetime budget protects. Every release on this node's data spends from the
    # cohort's ledger, whatever the metadata holds that day; only a new name (a deliberate act of the
    # privacy officer, for a disjoint set of patients) opens a new budget.
    cohort: str = "default"
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
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.cohort):
            raise FedclipError(f"policy cohort must be a short name of letters, digits, '.', '_' or '-', "
                               f"got {self.cohort!r}")
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


SANE_RANGES = {"max_grad_norm": (1e-6, 1e3), "lr": (1e-8, 100.0), "batch_size": (1, 1_000_000),
               "epochs": (1, 1000), "train_blocks": (0, 64), "lora_rank": (0, 1024),
               "max_images_per_patient": (1, 1000), "momentum": (0.0, 1.0)}
"""What a node accepts of the run config's local-training settings (a server sends them; the node checks)."""


def check_request(finetune: Any, rounds: int) -> None:
    """Refuse a run config with non-finite or out-of-range training settings before any data is read.

    No leak is known through them, but each is a knob a malicious server turns: keep the surface small.
    """
    for name, (lo, hi) in SANE_RANGES.items():
        value = getattr(finetune, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise Refusal(f"refused: the run config's finetune.{name}={value!r} is outside [{lo:g}, {hi:g}]")
    if not (math.isfinite(finetune.epsilon) and finetune.epsilon > 0) and finetune.dp:
        raise Refusal(f"refused: the run config's finetune.epsilon={finetune.epsilon!r} is not a positive number")
    if not 0 < finetune.delta < 1:
        raise Refusal(f"refused: the run config's finetune.delta={finetune.delta!r} is not in (0, 1)")
    if not 1 <= rounds <= 10_000:
        raise Refusal(f"refused: the run config's rounds={rounds!r} is outside [1, 10000]")


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
