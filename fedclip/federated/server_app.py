"""Flower ServerApp: the federation loop, with per-round evaluation, checkpoints and resume.

Each completed round leaves `checkpoints/round-NNN/` (and `checkpoints/last/`), a line in
`metrics.jsonl` (server-side metrics, every client's reply status and epsilon) and an updated
`ledger.json`; `state.json` names the last completed round and the strategy settings, so a killed
server resumes at the next round with the same strategy.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedclip import models, runlog
from fedclip.data.records import read_metadata
from fedclip.errors import FedclipError
from fedclip.federated import strategies
from fedclip.federated.task import FederateConfig, from_run_config, load_global, server_evaluate
from fedclip.finetune import trained_keys
from fedclip.progress import progress_bar

STRATEGY_FIELDS = ("strategy", "proximal_mu", "server_lr", "trim_beta", "num_malicious", "server_dp",
                   "server_dp_noise", "server_dp_clip", "train_blocks", "task", "clients")
"""What a resumed run must share with the run it continues. `rounds` may grow: extending a federation
is allowed, and each client's ledger then decides whether its budget allows more rounds."""


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_server(grid: Grid, cfg: FederateConfig, resume: bool = False) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    settings = {k: v for k, v in asdict(cfg).items() if k in STRATEGY_FIELDS}
    start, arrays = 0, None
    if resume and state_path.exists():
        state = json.loads(state_path.read_text())
        if state["settings"] != json.loads(json.dumps(settings, default=str)):
            raise FedclipError(f"cannot resume {out}: it ran with {state['settings']}, now {settings}; "
                               "resume with the same strategy settings")
        start = int(state["round"])
        runlog.trim(out / "metrics.jsonl", "round", start)
        arrays = {k: v for k, v in models.load_checkpoint(out / "checkpoints" / "last").model.state_dict().items()}
    elif state_path.exists():
        raise FedclipError(f"{out} already holds a federation; pass --resume to continue it or choose a new --out")
    vc = load_global(cfg, None)
    keys = trained_keys(vc, cfg.train_blocks)
    if arrays is not None:
        vc.model.load_state_dict({k: arrays[k] for k in keys}, strict=False)
    initial = ArrayRecord.from_torch_state_dict({k: vc.model.state_dict()[k] for k in keys})
    if start >= cfg.rounds:
        return {"rounds": start, "resumed": True}

    eval_records = read_metadata(cfg.eval_data) if cfg.eval_data else []
    ledger_path = out / "ledger.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else []
    pending: dict[int, list[dict[str, Any]]] = {}

    def on_replies(server_round: int, report: list[dict[str, Any]]) -> None:
        pending[start + server_round] = report

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        round_ = start + server_round
        vc.model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
        metrics = server_evaluate(cfg, vc, eval_records, cfg.eval_data) if eval_records else {}
        if server_round == 0:
            if start == 0:
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps({"round": 0, "time": time.time(), "server": metrics}) + "\n")
            return MetricRecord(metrics) if metrics else None
        replies = pending.pop(round_, [])
        for r in replies:
            if "epsilon" in r:
                ledger.append({"round": round_, "node": r["node"], "status": r["status"], "epsilon": r["epsilon"],
                               "epsilon_round": r.get("epsilon-round"), "noise_multiplier": r.get("noise-multiplier"),
                               "sample_rate": r.get("sample-rate"), "steps": r.get("steps")})
        ckpt = models.save_checkpoint(vc, out / "checkpoints" / f"round-{round_:03d}",
                                      provenance={"stage": "federate", "round": round_, "settings": settings,
                                                  "epsilon_per_client": {str(r["node"]): r.get("epsilon")
                                                                         for r in replies}})
        models.copy_checkpoint(ckpt, out / "checkpoints" / "last")
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"round": round_, "time": time.time(), "server": metrics, "clients": replies},
                                default=str) + "\n")
        _write_json(ledger_path, ledger)
        _write_json(state_path, {"round": round_, "settings": settings})  # last: the round is complete
        spent = [r["epsilon"] for r in replies if "epsilon" in r]
        shown: dict[str, Any] = {"clients": sum(r["status"] == "aggregated" for r in replies)}
        if spent:
            shown["max ε"] = round(max(spent), 3)
        if "balanced-accuracy" in metrics:
            shown["balanced acc"] = round(float(metrics["balanced-accuracy"]), 3)
        advance(1, **shown)  # bound below, before the strategy calls this
        return MetricRecord(metrics) if metrics else None

    strategy = strategies.build(cfg, on_replies)
    with progress_bar(f"federate {cfg.strategy}", cfg.rounds - start) as advance:
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds - start,
                       train_config=ConfigRecord({"round-offset": start}),
                       evaluate_config=ConfigRecord({"round-offset": start}), evaluate_fn=evaluate_fn)
    return {"rounds": cfg.rounds, "resumed_from": start}


def make_server_app(fallback: FederateConfig | None = None, resume: bool = False) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = from_run_config(dict(context.run_config)) if context.run_config else fallback
        if cfg is None:
            raise RuntimeError("no run config: start through `fedclip federate` or `flwr run .`")
        run_server(grid, cfg, resume=resume or bool(context.run_config.get("resume", False)))

    return app


app = make_server_app()
