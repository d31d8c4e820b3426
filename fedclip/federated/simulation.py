"""`fedclip federate`: the federation on Flower's simulation engine, embedded in this process.

Inputs are checked here, before Ray starts, so a wrong path fails in a second with a clear message
instead of inside a worker.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedclip import config as cfglib
from fedclip import models
from fedclip.data.records import read_metadata
from fedclip.errors import FedclipError
from fedclip.federated import policy as policylib
from fedclip.federated import strategies
from fedclip.federated.client_app import SimulatedNodes, make_client_app
from fedclip.federated.config import FederateConfig
from fedclip.federated.server_app import make_server_app, resume_point, saved_accountant
from fedclip.run import LedgerRow, RoundLine, RunDir, RunState, read_ledger, read_rounds


def default_state_root() -> Path:
    """Where simulated hospitals keep their lifetime ledgers: `$FEDCLIP_HOME/nodes` (default ~/.fedclip)."""
    return Path(os.environ.get("FEDCLIP_HOME", Path.home() / ".fedclip")) / "nodes"


def _absolute(cfg: FederateConfig) -> FederateConfig:
    """Ray workers may not share our working directory: make every path absolute."""
    return replace(cfg, **{k: Path(v).resolve() for k in ("checkpoint", "data", "eval_data", "out")
                           if (v := getattr(cfg, k)) is not None})


def preflight(cfg: FederateConfig) -> None:
    if cfg.checkpoint is None:
        raise FedclipError("pass --checkpoint: federated fine-tuning starts from a pretrained checkpoint")
    models.read_checkpoint_config(cfg.checkpoint)
    if cfg.data is None:
        raise FedclipError("pass --data: the dataset dir the simulated hospitals are drawn from")
    read_metadata(cfg.data)
    if cfg.eval_data is not None:
        read_metadata(cfg.eval_data)
    if cfg.clients < 1 or cfg.rounds < 1:
        raise FedclipError("need at least 1 client and 1 round")
    strategies.build(cfg)
    if resume_point(cfg):
        saved_accountant(cfg)


def simulate(cfg: FederateConfig, num_cpus: int | None = None, verbose: bool = False,
             state_root: Path | None = None, policies: list[policylib.NodePolicy] | None = None) -> FederationSummary:
    """Run (or, with `cfg.resume`, continue) a simulated federation; each hospital keeps its state in
    `state_root/client-N`. The resolved settings go to `out/config.toml` once the inputs are checked, so
    `fedclip federate --resume --out DIR` continues with them.

    `state_root` outlives the run: a new `--out` on the same data spends from the same ledgers.
    """
    from flwr.simulation import run_simulation

    cfg = _absolute(cfg)
    with _quiet_flower(verbose):  # from preflight on: it builds the strategy, which logs
        preflight(cfg)
        cfglib.write(RunDir(Path(cfg.out)).config, {"federate": cfg})
        nodes = SimulatedNodes(Path(state_root or default_state_root()).resolve(),
                               policies or [policylib.NodePolicy()] * cfg.clients)
        if len(nodes.policies) != cfg.clients:
            raise FedclipError(f"{len(nodes.policies)} node policies for {cfg.clients} clients")
        cpus = num_cpus or os.cpu_count() or 1
        if not verbose:
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences Ray's GPU-env FutureWarning
        # Flower 1.42 deprecates run_simulation for `flwr run`, which has no in-process form: it starts a
        # SuperLink and imports the apps from a FAB by name. The study and `fedclip federate` hand the engine
        # app objects built here (node policies, state dirs), so the in-process engine is the right tool.
        run_simulation(
            server_app=make_server_app(cfg), client_app=make_client_app(cfg, nodes),
            num_supernodes=cfg.clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            # workers' own log lines (Opacus' empty-batch note, actor shutdown) stay in Ray's
                            # session logs unless --verbose; a node's errors reach the server as replies
                            "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": verbose}},
        )
    return replace(summary(cfg.out), nodes=node_ledgers(nodes.state_root, cfg.clients))


class _FlowerNoise(logging.Filter):
    """Flower's INFO chatter and the warnings that say nothing to a fedclip user (the deprecation above;
    `fraction_evaluate` = 0 is fedclip's deliberate choice: nodes do not answer evaluation by default)."""

    NOISE = ("DEPRECATED FEATURE", "fraction_evaluate is set to 0.0", "deprecated feature")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not any(n in record.getMessage() for n in self.NOISE)


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    """Quiet Flower's logger for the run only (a library call leaves the process's logging as it was)."""
    if verbose:
        yield
        return
    logger, noise = logging.getLogger("flwr"), _FlowerNoise()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


@dataclass(frozen=True)
class FederationSummary:
    """A federation's run dir, read back: its state, one line per round, the server's ledger summary and,
    for a simulation, every hospital's own lifetime ledger entries (`nodes`)."""

    state: RunState
    rounds: list[RoundLine]
    ledger: list[LedgerRow]
    nodes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def summary(out: str | Path) -> FederationSummary:
    run = RunDir(Path(out))
    state = RunState.read(run)
    if state is None:
        raise FedclipError(f"the federation in {out} completed no round; see the log above for the cause")
    return FederationSummary(state=state, rounds=read_rounds(run), ledger=read_ledger(run))


def node_ledgers(state_root: Path, clients: int) -> dict[str, list[dict[str, Any]]]:
    """Every simulated hospital's own ledger entries (local: this process *is* every hospital)."""
    out = {}
    for i in range(clients):
        entries = []
        for path in sorted((Path(state_root) / f"client-{i}").glob("ledger-*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[f"client-{i}"] = entries
    return out
