"""Flower ClientApp: receive the global weights, run one DP round (task.py), reply.

Where a node keeps its privacy ledger: `node-config state-dir=...` in deployment (the hospital's own
disk), else `<out>/ledgers` of the run. Imports stay light at module level: in deployment every
message starts a fresh process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedclip.federated.task import FederateConfig, client_evaluate, client_train, from_run_config

# Known and harmless here, printed by every client every round otherwise: Opacus's reminder that its
# secure RNG is off (fedclip's threat model is membership inference, not RNG state recovery) and
# PyTorch's note that a frozen prefix means no input requires grad.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def _config(context: Context, fallback: FederateConfig | None) -> FederateConfig:
    if context.run_config:
        return from_run_config(dict(context.run_config))
    if fallback is None:
        raise RuntimeError("no run config: start through `fedclip federate` or `flwr run .`")
    return fallback


def _ledger_dir(cfg: FederateConfig, context: Context) -> Path:
    if "state-dir" in context.node_config:
        return Path(str(context.node_config["state-dir"]))
    return Path(cfg.out) / "ledgers"


def make_client_app(fallback: FederateConfig | None = None) -> ClientApp:
    """A ClientApp; `fallback` is the config for the embedded simulation (whose run config is empty)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = _config(context, fallback)
        config = msg.content["config"]
        round_ = int(config.get("round-offset", 0)) + int(config["server-round"])
        arrays = msg.content["arrays"].to_torch_state_dict()
        result = client_train(cfg, dict(context.node_config), arrays, round_, _ledger_dir(cfg, context),
                              proximal_mu=float(config.get("proximal-mu", 0.0)))
        content = RecordDict({"metrics": MetricRecord(result.metrics)})
        if result.update is not None:
            content["arrays"] = ArrayRecord.from_torch_state_dict(result.update)
        if result.refusal:
            content["config"] = ConfigRecord({"reason": result.refusal})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        cfg = _config(context, fallback)
        metrics = client_evaluate(cfg, dict(context.node_config), msg.content["arrays"].to_torch_state_dict())
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
