"""Flower ServerApp: the federation loop, with per-round evaluation, checkpoints and resume.

Each completed round leaves `checkpoints/round-NNN/` (and `checkpoints/last/`), a line in
`metrics.jsonl` (server-side metrics, every node's public reply), and an updated `ledger.json` (the
server's summary of what nodes reported: status, epsilon, effective budget, unit; central epsilon with
server-side DP). `state.json` names the last completed round and the settings a resume must share.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedclip import config as cfglib
from fedclip import models, runlog
from fedclip.data.records import read_metadata
from fedclip.errors import FedclipError
from fedclip.federated import keys, strategies
from fedclip.federated.config import FederateConfig, from_run_config
from fedclip.federated.task import load_global, server_evaluate
from fedclip.head import trained_keys
from fedclip.progress import progress_bar
from fedclip.run import EPSILON_PER_NODE, LedgerRow, RoundLine, RunDir, RunState, read_ledger, write_ledger

STRATEGY_FIELDS = ("strategy", "proximal_mu", "server_lr", "trim_beta", "num_malicious", "server_dp",
                   "server_dp_noise", "server_dp_clip", "server_dp_delta", "finetune.train_blocks", "finetune.task",
                   "clients")
PRIVACY_FIELDS = ("finetune.dp", "finetune.epsilon", "finetune.delta", "finetune.unit", "partitioning", "alpha",
                  "seed", "data", "finetune.batch_size", "finetune.epochs", "finetune.max_grad_norm",
                  "finetune.lora_rank")  # what sets a node's q, steps and sensitivity
"""What a resumed run must share with the run it continues. `rounds` may grow: extending a federation
is allowed, and each node's ledger then decides whether its budget allows more rounds."""


SUMMARY_KEYS = (keys.EPSILON, keys.EPSILON_ROUND, keys.EPSILON_BUDGET, keys.DELTA, keys.NOISE_MULTIPLIER,
                keys.SAMPLE_RATE, keys.STEPS, keys.UNIT, keys.NEIGHBOURING, keys.ACCOUNTANT, keys.DATASET_ID)
"""What `ledger.json` keeps of each node's reply (public values only)."""


def _settings(cfg: FederateConfig) -> dict[str, Any]:
    return {k: v for k, v in cfglib.flatten(cfglib.plain(cfg)).items() if k in STRATEGY_FIELDS + PRIVACY_FIELDS}


def resume_point(cfg: FederateConfig) -> int:
    """The last completed round to continue from (0: a new run); refuses a changed run or a silent overwrite.
    `cfg.resume` travels in the run config, so a deployed run (`flwr run . -c resume=true`) resumes alike."""
    state = RunState.read(RunDir(Path(cfg.out)))
    if state is None:
        return 0
    if not cfg.resume:
        raise FedclipError(f"{cfg.out} already holds a federation; pass --resume (run config resume=true) to "
                           "continue it or choose a new --out")
    before, now = state.settings, _settings(cfg)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        what = ", ".join(f"{k} ({before.get(k)} -> {now.get(k)})" for k in changed)
        raise FedclipError(f"cannot resume {cfg.out}: changed {what}; resume with the same strategy and privacy "
                           "settings, or start a new --out")
    return state.round


def saved_accountant(cfg: FederateConfig) -> dict[str, Any] | None:
    """The central accountant's state after the last completed round; a resumed server-DP run without it
    would restart its epsilon at zero, so that is refused."""
    state = RunState.read(RunDir(Path(cfg.out)))
    if cfg.server_dp == "none" or state is None:
        return None
    if state.central_accountant is None:
        raise FedclipError(f"cannot resume {cfg.out}: its state.json holds no central-DP accountant state, so the "
                           "central epsilon of its earlier rounds would be forgotten; start a new --out")
    return state.central_accountant


class Recorder:
    """The server's per-round bookkeeping: checkpoint, metrics line, ledger summary, state — in that order."""

    def __init__(self, cfg: FederateConfig, vc: models.VisionClip, start: int) -> None:
        self.cfg, self.vc, self.start = cfg, vc, start
        self.out = Path(cfg.out)
        self.run = RunDir(self.out)
        self.eval_records = read_metadata(cfg.eval_data) if cfg.eval_data else []
        self.ledger: list[LedgerRow] = read_ledger(self.run)
        self.pending: dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
        self.advance = None
        self.accountant_state: dict[str, Any] | None = saved_accountant(cfg) if start else None

    def on_replies(self, server_round: int, report: list[dict[str, Any]], central: dict[str, Any] | None) -> None:
        self.pending[self.start + server_round] = (report, central)

    def evaluate_and_record(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's `evaluate_fn`: evaluates the round's global model, then records the round (checkpoint,
        metrics line, ledger summary, state)."""
        round_ = self.start + server_round
        self.vc.model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        metrics = server_evaluate(self.cfg, self.vc, self.eval_records, self.cfg.eval_data) \
            if self.eval_records else {}
        if server_round == 0:
            if self.start == 0:
                runlog.append(self.run.metrics, RoundLine(round=0, time=time.time(), server=metrics).to_json())
            return MetricRecord(metrics) if metrics else None
        replies, central = self.pending.pop(round_, ([], None))
        if central is not None:
            central = dict(central)
            self.accountant_state = central.pop("accountant_state")
        for r in replies:
            self.ledger.append(LedgerRow(round=round_, node=str(r["node"]), status=r["status"],
                                         **{k.replace("-", "_"): r[k] for k in SUMMARY_KEYS if k in r}))
        if central is not None:
            self.ledger.append(LedgerRow(round=round_, node="server", status="central-dp", **central))
        ckpt = models.save_checkpoint(self.vc, self.run.checkpoint(f"round-{round_:03d}"), provenance={
            "stage": "federate", "round": round_, "settings": _settings(self.cfg),
            "federate": cfglib.plain(self.cfg),  # the base checkpoint and settings
            EPSILON_PER_NODE: {str(r["node"]): r.get(keys.EPSILON) for r in replies},
            **({"central_epsilon": central["epsilon"]} if central else {})})
        models.copy_checkpoint(ckpt, self.run.checkpoint())
        runlog.append(self.run.metrics, RoundLine(round=round_, time=time.time(), server=metrics, clients=replies,
                                                  central=central).to_json())
        write_ledger(self.run, self.ledger)
        RunState(round=round_, settings=_settings(self.cfg),  # last: the round is done
                 central_accountant=self.accountant_state).write(self.run)
        spent = [r[keys.EPSILON] for r in replies if keys.EPSILON in r]
        shown: dict[str, Any] = {"clients": sum(r["status"] == "aggregated" for r in replies)}
        if spent:
            shown["max ε"] = round(max(spent), 3)
        if "balanced_accuracy" in metrics:
            shown["balanced acc"] = round(float(metrics["balanced_accuracy"]), 3)
        if self.advance is not None:
            self.advance(1, **shown)
        return MetricRecord(metrics) if metrics else None


def run_server(grid: Grid, cfg: FederateConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start = resume_point(cfg)
    vc = load_global(cfg, None)
    keys_ = trained_keys(vc, cfg.finetune.train_blocks)
    if start:
        runlog.trim(RunDir(out).metrics, "round", start)
        last = models.load_checkpoint(RunDir(out).checkpoint()).model.state_dict()
        vc.model.load_state_dict({k: last[k] for k in keys_}, strict=False)
    if start >= cfg.rounds:
        return {"rounds": start, "resumed_from": start}
    initial = ArrayRecord.from_torch_state_dict({k: vc.model.state_dict()[k] for k in keys_})
    recorder = Recorder(cfg, vc, start)
    strategy = strategies.build(cfg, recorder.on_replies, accountant_state=recorder.accountant_state)
    with progress_bar(f"federate {cfg.strategy}", cfg.rounds - start) as advance:
        recorder.advance = advance
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds - start,
                                train_config=ConfigRecord({keys.ROUND_OFFSET: start}),
                                evaluate_config=ConfigRecord({keys.ROUND_OFFSET: start}),
                                evaluate_fn=recorder.evaluate_and_record)
    return {"rounds": cfg.rounds, "resumed_from": start, "result": result}


def make_server_app(fallback: FederateConfig | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = from_run_config(dict(context.run_config)) if context.run_config else fallback
        if cfg is None:
            raise RuntimeError("no run config: start through `fedclip federate` or `flwr run .`")
        run_server(grid, cfg)

    return app


app = make_server_app()
