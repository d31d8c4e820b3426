"""Reading what a node keeps on its own disk, and hospitals that misbehave on purpose."""

import json
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedclip.federated.config import FederateConfig
from fedclip.federated.node import Node
from fedclip.federated.policy import NodePolicy
from fedclip.federated.task import client_train

Tamper = Callable[[int, dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def train_entries(state_dir):
    """A node's training entries in its lifetime ledger (state dir, never the run dir)."""
    (path,) = state_dir.glob("ledger-*.jsonl")
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["kind"] == "train"]


def tampering_client_app(cfg: FederateConfig, state_root: Path, tamper: Tamper,
                         policy: NodePolicy | None = None) -> ClientApp:
    """Hospitals that train honestly, then pass their update through `tamper(partition, start, update)`
    before sending it: a faulty or Byzantine node as the server sees it."""
    policy = policy or NodePolicy()
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        node = Node(f"client-{pid}", policy, state_root / f"client-{pid}", deployed=False)
        start = msg.content["arrays"].to_torch_state_dict()
        result = client_train(cfg, node, dict(context.node_config), start,
                              int(msg.content["config"]["server-round"]))
        update = tamper(pid, start, result.update)
        return Message(RecordDict({"arrays": ArrayRecord.from_torch_state_dict(update),
                                   "metrics": MetricRecord(result.metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1.0})}), reply_to=msg)

    return app
