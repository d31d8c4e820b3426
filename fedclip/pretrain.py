"""Contrastive (CLIP) pretraining: one loop, readable top to bottom.

The model, the loss (open_clip's `ClipLoss`) and the loop are separate. The same function runs on
one CPU, one GPU (AMP), or many processes under `torchrun` (DDP; features gathered across ranks for
the loss, so a global batch of B gives the same gradient whatever the number of processes).

Run dir: `RUN/config.toml`, `RUN/metrics.jsonl` (one line per step), `RUN/checkpoints/<tag>/`
(model checkpoint, with `train_state/` beside the weights for `--resume`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from fedclip import config as cfglib
from fedclip import io, models, runlog, train_state
from fedclip.data import canaries
from fedclip.data.records import Record, fingerprint, manifest_text, read_metadata
from fedclip.data.torchdata import (
    Concat,
    RecordDataset,
    StepBatchSampler,
    SynthDataset,
    collate_skipping,
    train_transform,
)
from fedclip.errors import DataError, FedclipError
from fedclip.progress import progress_bar
from fedclip.run import LAST, MEMBERS_FILE, RunDir
from fedclip.synth import CohortSpec


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "visionclip-tiny"
    data: Path | None = None  # a dataset dir ...
    synth: str | None = None  # ... or a generator stream: "n=20000 seed=0 size=64 hospital=riverside"
    init: Path | None = None  # start from this checkpoint's weights instead of random initialisation
    steps: int = 200
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 20
    grad_clip: float = 1.0
    accum: int = 1  # micro-batches per step (negatives come from each micro-batch)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False
    workers: int = 2
    seed: int = 0
    save_every: int = 0  # also keep a checkpoint every N steps (0: none besides `last`)
    save_minutes: float = 10.0  # refresh `last` (the resume point) every N minutes of training; 0: only at the end
    augment: bool = True
    device: str = "auto"
    canaries: int = 0  # plant N canaries (and N never-trained controls) for `fedclip audit exposure`
    canary_repeats: tuple[int, ...] = (1, 4, 16)  # each planted canary is repeated one of these times (cycling)
    # undecodable images are skipped and counted; past this fraction of the dataset training stops with an
    # error (a 1M-image set should not die at hour five for one bad file, nor train on a broken copy)
    max_undecodable: float = 0.001


def parse_synth(text: str) -> tuple[CohortSpec, int]:
    """`"n=20000 seed=0 size=64 hospital=riverside visits=2"` -> (spec, n)."""
    fields: dict[str, Any] = {}
    for part in text.replace(",", " ").split():
        key, sep, value = part.partition("=")
        if not sep:
            raise FedclipError(f"--synth part {part!r} must be key=value (n, seed, size, hospital, visits, eyes)")
        fields[key] = value
    n = int(fields.pop("n", 10_000))
    allowed = {"seed": int, "size": int, "hospital": str, "visits": int, "eyes": int}
    unknown = set(fields) - set(allowed)
    if unknown:
        raise FedclipError(f"--synth has unknown key(s) {', '.join(sorted(unknown))}; use n, {', '.join(allowed)}")
    return CohortSpec(**{k: allowed[k](v) for k, v in fields.items()}), n


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero: a multiplier on `cfg.lr`."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases, norms and the temperature (open_clip's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(cfg: PretrainConfig, local_rank: int) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _autocast(cfg: PretrainConfig, device: torch.device):
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return nullcontext(), None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise FedclipError(f"unknown precision {cfg.precision!r}; use auto, fp32, bf16 or fp16")
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


def _dataset(cfg: PretrainConfig, vc: models.VisionClip):
    """The training set, its provenance, and the records on disk that train the model (for members.csv)."""
    tf = train_transform(vc.image_size, models.PREPROCESS_CFG["mean"], models.PREPROCESS_CFG["std"], cfg.augment)
    if (cfg.data is None) == (cfg.synth is None):
        raise FedclipError("pass exactly one of --data DIR (a dataset dir) or --synth SPEC (a generator stream)")
    if cfg.data is not None:
        records = read_metadata(cfg.data)
        return RecordDataset(records, cfg.data, tf, vc.tokenizer), {"data": str(cfg.data)}, records
    spec, n = parse_synth(cfg.synth)
    # a generator stream's members are (spec, indices 0..n-1): recorded by the spec, no manifest needed
    return SynthDataset(spec, n, tf, vc.tokenizer), {"synth": cfg.synth}, None


def _canaries(cfg: PretrainConfig, run: Path, vc: models.VisionClip, rank: int, world: int, resume: bool
              ) -> tuple[list[Record], dict[str, Any]]:
    """Plant the run's canaries (or, on resume, read the ones it planted) as repeated training records."""
    if cfg.canaries <= 0:
        return [], {}
    if rank == 0 and not (resume and (run / canaries.CANARIES_FILE).exists()):
        canaries.plant(run, cfg.canaries, cfg.canary_repeats, size=vc.image_size, seed=cfg.seed)
    if world > 1:
        dist.barrier()
    planted = canaries.read(run)
    digest = hashlib.sha256((run / canaries.CANARIES_FILE).read_bytes()).hexdigest()
    return canaries.training_records(run, planted), {"canaries": canaries.CANARIES_FILE, "canaries_sha256": digest}


def save(run: Path, tag: str, vc: models.VisionClip, *, opt: torch.optim.Optimizer,
         sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None, step: int,
         provenance: dict[str, Any]) -> Path:
    """Checkpoint `tag` (model + train state) and point `last` at the newest state."""
    state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict() if scaler else None, "rng": train_state.rng_state()}
    ckpt = models.save_checkpoint(vc, RunDir(run).checkpoint(tag), provenance={**provenance, "steps": step},
                                  train_state=state)
    if tag != LAST:
        models.copy_checkpoint(ckpt, RunDir(run).checkpoint())
    return ckpt


def pretrain(cfg: PretrainConfig, run: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train, checkpoint, and return a summary (final loss, samples/s, checkpoint path)."""
    run = Path(run)
    rank, world, local_rank = _distributed()
    device = _device(cfg, local_rank)
    torch.manual_seed(cfg.seed)

    start = 0
    last = RunDir(run).checkpoint()
    if not resume and last.parent.exists() and any(last.parent.iterdir()):
        raise FedclipError(f"{run} already has checkpoints; pass --resume to continue, or a new --out")
    if resume:
        if not (last / "train_state").is_dir():
            raise FedclipError(f"nothing to resume in {run}: no checkpoints/{LAST}; start it without --resume")
        vc = models.load_checkpoint(last, expect_model=cfg.model)
    elif cfg.init is not None:
        vc = models.load_checkpoint(cfg.init, expect_model=cfg.model)
    else:
        vc = models.create(cfg.model, seed=cfg.seed)
    vc.model.to(device)
    dataset, source, records = _dataset(cfg, vc)  # bad data fails here, before anything is written
    planted, canary_source = _canaries(cfg, run, vc, rank, world, resume)
    if planted:  # listed in members.csv (a generator stream then lists only its canaries)
        dataset = Concat([dataset, RecordDataset(planted, ".", dataset.transform, vc.tokenizer)])
        records = (records or []) + planted
        source.update(canary_source)

    opt = torch.optim.AdamW(param_groups(vc.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                            fused=device.type in ("cuda", "cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
    autocast, scaler = _autocast(cfg, device)
    if resume:
        state = train_state.load(last / "train_state")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        train_state.set_rng_state(state["rng"])
        start = int(state["step"])
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        cfglib.write(RunDir(run).config, {"pretrain": cfg})
        if records is not None:  # which records trained this model, for the audits (each canary once)
            manifest = manifest_text(list({r.filepath: r for r in records}.values()))
            io.write_text(RunDir(run).members, manifest)
            source.update(data_fingerprint=fingerprint(records), members=MEMBERS_FILE,
                          members_sha256=hashlib.sha256(manifest.encode()).hexdigest())
        runlog.trim(RunDir(run).metrics, "step", start)

    model: torch.nn.Module = vc.model
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, start, cfg.steps, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_skipping,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    provenance = {"stage": "pretrain", **source, "world_size": world, "config": cfglib.plain(cfg)}

    model.train()
    log = io.line_log(RunDir(run).metrics) if rank == 0 else nullcontext(None)
    loss_value, t_last, seen = float("nan"), time.perf_counter(), 0
    skipped: list[str] = []
    t_start = t_saved = t_last
    with log as write_metrics, progress_bar(f"pretrain {cfg.model}", cfg.steps - start) if rank == 0 \
            else nullcontext(lambda *a, **k: None) as advance:
        for step, (images, texts, bad) in enumerate(loader, start=start):
            skipped += bad
            if len(skipped) > cfg.max_undecodable * len(dataset):
                raise DataError(f"{len(skipped)} training images cannot be decoded so far (first: {skipped[0]}), "
                                f"more than max_undecodable = {cfg.max_undecodable:g} of {len(dataset)}; run "
                                f"`fedclip data check {cfg.data or 'DIR'}` to list them, fix or remove them, "
                                "then run again (with --resume if a checkpoint was saved)")
            if images is None:
                continue  # every image of this batch was broken: no step
            images = images.to(device, non_blocking=True)
            texts = texts.to(device, non_blocking=True)
            micro = max(1, cfg.accum)
            total = 0.0
            for k, (img, txt) in enumerate(zip(images.chunk(micro), texts.chunk(micro), strict=True)):
                sync = model.no_sync() if world > 1 and k < micro - 1 else nullcontext()
                with sync, autocast:
                    out = model(img, txt)
                    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"]) / micro
                (scaler.scale(loss) if scaler else loss).backward()
                total += float(loss.detach())
            if scaler:
                scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(vc.model.parameters(), cfg.grad_clip)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            lr = sched.get_last_lr()[-1]
            sched.step()
            with torch.no_grad():
                vc.model.logit_scale.clamp_(0, math.log(100))
            loss_value = total
            seen += images.shape[0] * world
            now = time.perf_counter()
            rate = images.shape[0] * world / max(now - t_last, 1e-9)
            t_last = now
            if write_metrics is not None:
                write_metrics(json.dumps({"step": step + 1, "loss": loss_value, "lr": lr,
                                          "grad_norm": float(grad_norm), "samples_per_s": rate,
                                          "epoch": (step * cfg.batch_size) // len(dataset)}))
                advance(1, loss=loss_value, lr=lr, **{"samples/s": round(rate, 1)})
            if rank == 0 and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                save(run, f"step-{step + 1:06d}", vc, opt=opt, sched=sched, scaler=scaler, step=step + 1,
                     provenance=provenance)
                t_saved = now
            elif rank == 0 and cfg.save_minutes and now - t_saved > 60 * cfg.save_minutes and step + 1 < cfg.steps:
                # a resume point by time, so Ctrl-C or a lost node never costs more than a few minutes
                save(run, LAST, vc, opt=opt, sched=sched, scaler=scaler, step=step + 1, provenance=provenance)
                t_saved = now
    elapsed = time.perf_counter() - t_start
    ckpt = None
    if rank == 0:
        provenance["undecodable_skipped"] = len(skipped)
        ckpt = save(run, LAST, vc, opt=opt, sched=sched, scaler=scaler, step=cfg.steps, provenance=provenance)
    if world > 1:
        dist.barrier()
    return {"checkpoint": str(ckpt) if ckpt else None, "final_loss": loss_value, "steps": cfg.steps,
            "undecodable_skipped": skipped,
            "samples_per_s": seen / elapsed if elapsed > 0 else float("nan"), "world_size": world}


def ensure_pretrained(cfg: PretrainConfig, run: str | Path) -> Path:
    """The run's last checkpoint after `cfg.steps` steps: reused when it is there, an interrupted run
    resumed, else trained from the start — what a resumable pipeline stage wants."""
    last = RunDir(run).checkpoint()
    finished = (last / "config.json").exists() and \
        models.read_checkpoint_config(last)["provenance"].get("steps") == cfg.steps
    if not finished:
        pretrain(cfg, run, resume=(last / "train_state").exists())
    return last
