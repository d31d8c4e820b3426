"""Flower ClientApp: receive the global weights, run one round under the node's own policy, reply.

The node decides: its policy (`policy.toml` in its state dir, or `--node-config policy=PATH`) and its
state dir (`--node-config state-dir=...`, mandatory in deployment: the lifetime ledger and the local
log live there, on the hospital's disk). In simulation, `SimulatedNodes` plays that role for every
hospital. A reply holds only the keys in `keys.PUBLIC_METRICS` / `keys.PUBLIC_STRINGS`; an error's
details (file names, row numbers) go to the node's log, the server gets "failed: see the node's log".
Imports stay light at module level: in deployment every message starts a fresh process.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedclip.errors import FedclipError
from fedclip.federated import keys
from fedclip.federated import policy as policylib
from fedclip.federated.config import FederateConfig, from_run_config
from fedclip.federated.node import Node
from fedclip.federated.task import ClientRound, client_evaluate, client_train


@dataclass(frozen=True)
class SimulatedNodes:
    """The simulated hospitals' own side: one policy and one state dir each (`state_root/client-N`)."""

    state_root: Path
    policies: list[policylib.NodePolicy]


def _config(context: Context, fallback: FederateConfig | None) -> FederateConfig:
    if context.run_config:
        return from_run_config(dict(context.run_config))
    if fallback is None:
        raise FedclipError("no run config: start through `fedclip federate` or `flwr run .`")
    return fallback


def node_for(context: Context, simulated: SimulatedNodes | None) -> Node:
    pid = int(context.node_config.get("partition-id", 0))
    if simulated is not None:
        return Node(f"client-{pid}", simulated.policies[pid], simulated.state_root / f"client-{pid}", deployed=False)
    if "state-dir" not in context.node_config:
        raise policylib.Refusal("refused: this SuperNode has no state-dir in its --node-config; the node needs its "
                                "own disk for its privacy ledger")
    state = Path(str(context.node_config["state-dir"]))
    path = context.node_config.get("policy") or (state / "policy.toml" if (state / "policy.toml").exists() else None)
    return Node(f"node-{pid}", policylib.load(path), state, deployed=True)


def _reply(msg: Message, result: ClientRound) -> Message:
    content = RecordDict({keys.METRICS: MetricRecord(result.metrics)})
    if result.update is not None:
        content[keys.ARRAYS] = ArrayRecord.from_torch_state_dict(result.update)
    if result.strings:
        content[keys.CONFIG] = ConfigRecord(result.strings)
    return Message(content=content, reply_to=msg)


def _guarded(handler: Callable[[Message, Context, Node], ClientRound], simulated: SimulatedNodes | None):
    """Run `handler`; a refusal or failure becomes a short, data-free reply, the details stay local."""
    def run(msg: Message, context: Context) -> Message:
        base = {keys.PARTITION: float(context.node_config.get("partition-id", 0))}
        try:
            node = node_for(context, simulated)
        except FedclipError as e:
            return _reply(msg, ClientRound(None, {**base, keys.REFUSED: 1.0}, {keys.REASON: str(e).splitlines()[0]}))
        try:
            return _reply(msg, handler(msg, context, node))
        except policylib.Refusal as e:
            return _reply(msg, ClientRound(None, {**base, keys.REFUSED: 1.0}, {keys.REASON: str(e)}))
        except Exception as e:  # noqa: BLE001 - whatever it is, its text stays on the node
            node.log(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            return _reply(msg, ClientRound(None, {**base, keys.FAILED: 1.0},
                                           {keys.REASON: "failed: see the node's log"}))
    return run


def _round(msg: Message) -> int:
    config: Any = msg.content[keys.CONFIG] if keys.CONFIG in msg.content else {}
    return int(config.get(keys.ROUND_OFFSET, 0)) + int(config.get(keys.SERVER_ROUND, 0))


def make_client_app(fallback: FederateConfig | None = None, simulated: SimulatedNodes | None = None) -> ClientApp:
    """A ClientApp; `fallback` is the config for the embedded simulation (whose run config is empty)."""
    app = ClientApp()

    def train(msg: Message, context: Context, node: Node) -> ClientRound:
        config = msg.content[keys.CONFIG]
        return client_train(_config(context, fallback), node, dict(context.node_config),
                            msg.content[keys.ARRAYS].to_torch_state_dict(), _round(msg),
                            proximal_mu=float(config.get("proximal-mu", 0.0)))

    def evaluate(msg: Message, context: Context, node: Node) -> ClientRound:
        return client_evaluate(_config(context, fallback), node, dict(context.node_config),
                               msg.content[keys.ARRAYS].to_torch_state_dict(), _round(msg))

    app.train()(_guarded(train, simulated))
    app.evaluate()(_guarded(evaluate, simulated))
    return app


app = make_client_app()
