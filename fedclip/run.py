"""The run directory's layout, named once. Every stage reads and writes its files through these names.

    runs/<name>/
      config.toml           resolved config of the run (every default written out)
      metrics.jsonl         one JSON object per step / round / evaluation
      members.csv           which records / patients trained this model (pretraining)
      checkpoints/<tag>/    model.safetensors + config.json (provenance, weights SHA-256) + open_clip_config.json
      ledger.json           a federation's server-side summary of what nodes reported
      state.json            a federation's last completed round and the settings a resume must share
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedclip.errors import FedclipError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
MEMBERS_FILE = "members.csv"
CHECKPOINTS_DIR = "checkpoints"
LEDGER_SUMMARY_FILE = "ledger.json"
STATE_FILE = "state.json"
LAST = "last"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def members(self) -> Path:
        return self.root / MEMBERS_FILE

    @property
    def ledger_summary(self) -> Path:
        return self.root / LEDGER_SUMMARY_FILE

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    def checkpoint(self, tag: str = LAST) -> Path:
        return self.root / CHECKPOINTS_DIR / tag


# ------------------------------------------------------------------ typed rows of a federation's run dir
# The server writes these and the CLI, the simulation summary, studies and audits read them: one typed
# record per file, so a key cannot drift between writer and reader (it did once: see docs/audits.md).

EPSILON_PER_NODE = "epsilon_per_node"
"""A federation checkpoint's provenance key: each node's cumulative epsilon after that round."""


@dataclass(frozen=True)
class LedgerRow:
    """One line of `ledger.json`: what one node reported in one round (public values only), or the server's
    central-DP release (`node == "server"`). Absent values are None and are not written."""

    round: int
    node: str
    status: str
    epsilon: float | None = None  # cumulative, the node's lifetime on its cohort (per `unit`)
    epsilon_round: float | None = None
    epsilon_budget: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: float | None = None
    unit: str | None = None
    neighbouring: str | None = None
    accountant: str | None = None
    dataset_id: str | None = None
    # central DP only
    releases: int | None = None
    clipping_norm: float | None = None
    denominator: int | None = None
    noise_source: str | None = None

    @property
    def is_node(self) -> bool:
        return self.node != "server"

    @classmethod
    def from_json(cls, row: dict[str, Any], where: str | Path = LEDGER_SUMMARY_FILE) -> LedgerRow:
        unknown = sorted(set(row) - set(cls.__dataclass_fields__))
        missing = [k for k in ("round", "node", "status") if k not in row]
        if unknown or missing:
            what = f"unknown keys {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
            raise FedclipError(f"{where}: a ledger row has {what}; it was written by another fedclip version — "
                               "federate again with this one")
        return cls(**row)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_ledger(run: RunDir) -> list[LedgerRow]:
    """The federation's ledger summary ([] before its first round)."""
    path = run.ledger_summary
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FedclipError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); resume the federation "
                           "(--resume) to rewrite it") from e
    return [LedgerRow.from_json(r, path) for r in rows]


def write_ledger(run: RunDir, rows: list[LedgerRow]) -> None:
    from fedclip import io

    io.write_json(run.ledger_summary, [r.to_json() for r in rows])


def largest_node_epsilon(rows: list[LedgerRow]) -> float | None:
    """The largest cumulative epsilon any node reported (the server's central release excluded)."""
    eps = [r.epsilon for r in rows if r.is_node and r.epsilon is not None]
    return max(eps) if eps else None


@dataclass(frozen=True)
class RoundLine:
    """One line of a federation's `metrics.jsonl`: the server's evaluation after `round` (round 0: the
    starting model), every node's public reply and the round's central-DP release."""

    round: int
    time: float
    server: dict[str, float] = field(default_factory=dict)
    clients: list[dict[str, Any]] = field(default_factory=list)
    central: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> RoundLine:
        return cls(**{k: line[k] for k in cls.__dataclass_fields__ if k in line})

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"round": self.round, "time": self.time, "server": self.server}
        if self.round > 0:
            line["clients"] = self.clients
        if self.central is not None:
            line["central"] = self.central
        return line


def read_rounds(run: RunDir) -> list[RoundLine]:
    if not run.metrics.exists():
        return []
    return [RoundLine.from_json(json.loads(line)) for line in run.metrics.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class RunState:
    """`state.json`: the last completed round, the settings a resume must share, and the central
    accountant's state (server-side DP) so that a resumed run composes with its earlier releases."""

    round: int
    settings: dict[str, Any]
    central_accountant: dict[str, Any] | None = None

    @classmethod
    def read(cls, run: RunDir) -> RunState | None:
        if not run.state.exists():
            return None
        state = json.loads(run.state.read_text())
        return cls(round=int(state["round"]), settings=state["settings"],
                   central_accountant=state.get("central_accountant"))

    def write(self, run: RunDir) -> None:
        from fedclip import io

        io.write_json(run.state, {k: v for k, v in asdict(self).items() if v is not None})
