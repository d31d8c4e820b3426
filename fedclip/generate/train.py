"""Training a generator on a dataset dir: the DDPM objective, EMA, resume, and patient-level DP.

The loop reads top to bottom: images are loaded once (the generator's size is small), each step draws
a batch, noises it at random timesteps and regresses the noise. Without DP, batches are images drawn
with a seeded local generator, and `--resume` continues bit-identically on CPU. With `epsilon`, the
record is a *patient*: patients are Poisson-sampled at rate q, each patient's summed loss over their
images is clipped as a whole and Gaussian noise is added (`fedclip.privatizer`); the spend goes into
the hospital's lifetime ledger (its node state dir, the same ledger a federation spends from), and
the label statistics that sampling draws from are released with noise and charged there too.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedclip import config as cfglib
from fedclip import io, runlog, train_state
from fedclip.accounting import epsilon_for
from fedclip.data.images import load_rgb
from fedclip.data.records import Record, fingerprint, manifest_text, patient_key, read_metadata
from fedclip.errors import DataError, FedclipError
from fedclip.generate.model import (
    BINARY_LABELS,
    GRADES,
    TRAIN_STATE_DIR,
    Conditioning,
    create,
    generator_config,
    save_generator,
)
from fedclip.models import copy_checkpoint, sha256_file
from fedclip.progress import progress_bar
from fedclip.run import LAST, MEMBERS_FILE, RunDir

NO_DP = "trained without DP: the generator and its label statistics carry no privacy guarantee"


@dataclass(frozen=True)
class GeneratorTrainConfig:
    data: Path | None = None  # dataset dir to learn from
    config: str = "generator-tiny"  # registered generator config (generator-tiny | generator-base)
    size: int | None = None  # image side; default: the config's
    steps: int = 2000
    batch_size: int = 16  # images per step; with DP, the expected number of patients per step
    lr: float = 1e-3
    warmup: int = 100  # linear warm-up steps, then cosine decay to 0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # share of steps' records trained unconditionally (classifier-free guidance)
    save_every: int = 500  # also checkpoint every N steps (resume point); 0: only at the end
    log_every: int = 50
    seed: int = 0  # initialisation, batch order, timesteps; never DP sampling or noise
    hospitals: tuple[str, ...] | None = None  # the consortium's hospitals (public); default: those in the data
    # patient-level DP-SGD (None: no DP)
    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    max_images_per_patient: int = 4  # a patient's images beyond this are not trained on (compute, not privacy)
    statistics_noise: float = 8.0  # noise multiplier of the label statistics' release (DP only)
    state_dir: Path | None = None  # the hospital's node state dir (policy, lifetime ledger); default ~/.fedclip/node

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise FedclipError("generator: steps, batch_size and lr must be positive")
        if self.epsilon is not None and (not self.epsilon > 0 or not 0 < self.delta < 1):
            raise FedclipError(f"generator: epsilon must be > 0 and delta in (0, 1), got {self.epsilon}, {self.delta}")


# ------------------------------------------------------------------------------------------- data
def load_images(records: list[Record], root: Path, size: int) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: each image's centre square, resized."""
    out = torch.empty((len(records), 3, size, size))
    with progress_bar("load images", len(records)) as advance:
        for i, r in enumerate(records):
            img = load_rgb(r.path(root))
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), resample=3)
            out[i] = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
            advance(1)
    return out


def label_statistics(records: list[Record], hospitals: tuple[str, ...]) -> tuple[np.ndarray, float]:
    """The sums sampling draws labels from, each patient weighing 1 (split over their images), and their L2
    sensitivity to one patient: [patients, DR grades (5), each binary label, each hospital]."""
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by[patient_key(r)].append(r)
    v = np.zeros(1 + GRADES + len(BINARY_LABELS) + len(hospitals))
    for recs in by.values():
        w = 1.0 / len(recs)
        v[0] += 1.0
        for r in recs:
            if r.labels.get("dr_grade") is not None:
                v[1 + int(r.labels["dr_grade"])] += w
            for j, name in enumerate(BINARY_LABELS):
                v[1 + GRADES + j] += w * bool(r.labels.get(name))
            if r.meta.get("hospital") in hospitals:
                v[1 + GRADES + len(BINARY_LABELS) + hospitals.index(r.meta["hospital"])] += w
    # one patient: 1 in the count, at most 1 in the grades, in the hospitals, and in each binary label
    return v, math.sqrt(3 + len(BINARY_LABELS))


def statistics_dict(v: np.ndarray, hospitals: tuple[str, ...], privacy: dict[str, Any] | None) -> dict[str, Any]:
    """The released sums as shares sampling can use (clamped: noise can push a count below 0)."""
    pos = np.maximum(v, 0.0)
    n = max(pos[0], 1.0)
    grades = pos[1:1 + GRADES] + 1e-9
    hosp = pos[1 + GRADES + len(BINARY_LABELS):] + 1e-9
    return {"patients": float(v[0]), "dr_grades": (grades / grades.sum()).tolist(),
            "rates": {name: float(min(1.0, pos[1 + GRADES + j] / n)) for j, name in enumerate(BINARY_LABELS)},
            "hospitals": dict(zip(hospitals, (hosp / hosp.sum()).tolist(), strict=True)) if hospitals else {},
            "privacy": privacy or NO_DP}


# -------------------------------------------------------------------------------------- training
def _cosine(step: int, cfg: GeneratorTrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))))


def denoising_loss(model: Any, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor,
                   alphas_cumprod: torch.Tensor, prediction: str = "epsilon") -> torch.Tensor:
    """Per-image mean squared error of the prediction (the DDPM objective): of the noise ("epsilon"), or
    of v = sqrt(a) noise - sqrt(1 - a) x ("v_prediction", Salimans & Ho 2022: the same optimum, but
    the small-noise steps that decide the last details are weighted sensibly)."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    pred = model(a.sqrt() * x + (1 - a).sqrt() * noise, t, cond)
    target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x
    return F.mse_loss(pred, target, reduction="none").mean((1, 2, 3))


def _ledger(cfg: GeneratorTrainConfig):  # noqa: ANN202 - the node's ledger types live in federated
    from fedclip.federated import policy as policylib
    from fedclip.federated.ledger import PrivacyLedger
    from fedclip.federated.node import LEDGER_PREFIX

    state = Path(cfg.state_dir) if cfg.state_dir else Path.home() / ".fedclip" / "node"
    pol_path = state / "policy.toml"
    pol = policylib.load(pol_path if pol_path.exists() else None)
    grant = policylib.negotiate(pol, dp=True, epsilon=float(cfg.epsilon), delta=cfg.delta, unit="patient")
    return pol, PrivacyLedger(state / f"{LEDGER_PREFIX}{pol.cohort}.jsonl", client="generator", dataset=pol.cohort,
                              budget=grant.epsilon, delta=grant.delta, accountant=grant.accountant, unit="patient")


def train_generator(cfg: GeneratorTrainConfig, out: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) a generator run in `out`; returns a summary with the checkpoint path."""
    from fedclip.federated.ledger import BudgetExhausted, plan_noise
    from fedclip.noise import gaussian_noise
    from fedclip.privatizer import PerRecordPrivatizer

    if cfg.data is None:
        raise FedclipError("pass --data DIR: the dataset dir the generator learns from")
    generator_config(cfg.config)
    out = Path(out)
    run = RunDir(out)
    last = run.checkpoint(LAST)
    if resume and not (last / TRAIN_STATE_DIR).is_dir():
        raise FedclipError(f"nothing to resume in {out}: no checkpoints/{LAST}; start it without --resume")
    if not resume and last.exists():
        raise FedclipError(f"{out} already holds a generator; pass --resume to continue it, or a new --out")
    records = read_metadata(cfg.data)
    if len(records) < 2:
        raise DataError(f"{cfg.data} has {len(records)} image(s); a generator needs at least 2")
    hospitals = tuple(cfg.hospitals) if cfg.hospitals is not None else \
        (() if cfg.epsilon is not None else tuple(sorted({str(r.meta["hospital"]) for r in records
                                                         if r.meta.get("hospital")})))
    gen = create(cfg.config, Conditioning(hospitals), seed=cfg.seed, size=cfg.size)
    images = load_images(records, Path(cfg.data), gen.image_size)
    labels = gen.conditioning.vectors([r.labels for r in records], [r.meta.get("hospital") for r in records])
    ids = [patient_key(r) for r in records]
    acp, pred = gen.schedule().alphas_cumprod.float(), gen.prediction
    opt = torch.optim.AdamW(gen.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, cfg))
    ema = {k: v.detach().clone() for k, v in gen.state_dict().items()}
    rng = torch.Generator().manual_seed(cfg.seed)
    start, plan, stats = 0, None, None
    if resume:
        state = train_state.load(last / TRAIN_STATE_DIR)
        gen.load_state_dict(state["weights"])
        ema = state["ema"]
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.set_state(state["batch_rng"])
        start, plan, stats = int(state["step"]), state["dp_plan"], state["label_statistics"]
        runlog.trim(run.metrics, "step", start)
    else:
        cfglib.write(run.config, {"generator": cfg})
        io.write_text(run.members, manifest_text(records))
    provenance = {"stage": "generator", "data": str(cfg.data), "data_fingerprint": fingerprint(records),
                  "members": MEMBERS_FILE, "members_sha256": sha256_file(run.members), "n_images": len(records),
                  "n_patients": len(set(ids)),
                  "config": cfglib.plain(cfg)}
    ledger = None
    if cfg.epsilon is not None:
        pol, ledger = _ledger(cfg)
    # ------------------------------------------------------------------ DP: patients as records
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(ids):
        if len(groups[p]) < cfg.max_images_per_patient:
            groups[p].append(i)
    width = max(len(v) for v in groups.values())
    patient_rows = torch.tensor([v + [v[0]] * (width - len(v)) for v in groups.values()])
    patient_mask = torch.tensor([[1.0] * len(v) + [0.0] * (width - len(v)) for v in groups.values()])
    with ledger.locked() if ledger is not None else nullcontext():
        if stats is None:
            sums, sensitivity = label_statistics(records, hospitals)
            privacy = None
            if ledger is not None:
                if ledger.spent() >= 0.99 * ledger.budget:
                    raise BudgetExhausted(f"refused: the cohort's lifetime epsilon {ledger.budget:g} is spent "
                                          f"({ledger.spent():.3f})")
                ledger.check(noise_multiplier=cfg.statistics_noise, sample_rate=1.0, steps=1)
                std = cfg.statistics_noise * sensitivity
                sums = sums + np.array([gaussian_noise(std) for _ in sums])
                entry = ledger.record(kind="statistics", round_=0, noise_multiplier=cfg.statistics_noise,
                                      sample_rate=1.0, steps=1, noise_source="os-csprng",
                                      data_fingerprint=provenance["data_fingerprint"])
                privacy = {"epsilon": entry.epsilon_round, "delta": ledger.delta, "unit": "patient",
                           "neighbouring": "add/remove-one patient", "mechanism": "Gaussian on patient-weighted sums",
                           "l2_sensitivity": round(sensitivity, 4), "noise_multiplier": cfg.statistics_noise,
                           "accountant": ledger.accountant, "noise_source": "os-csprng"}
            stats = statistics_dict(sums, hospitals, privacy)
        if ledger is not None and plan is None:
            size = pol.dataset_size or max(1, round(stats["patients"]))  # declared, or the noised count above
            q = min(1.0, cfg.batch_size / size)
            sigma = plan_noise(ledger.history(), target=ledger.budget, delta=ledger.delta,
                               accountant=ledger.accountant, sample_rate=q, steps=cfg.steps)
            if sigma is None:
                raise BudgetExhausted(f"refused: the cohort's remaining budget (spent {ledger.spent():.3f} of "
                                      f"{ledger.budget:g}) cannot pay for {cfg.steps} steps")
            plan = {"noise_multiplier": sigma, "sample_rate": q, "public_patients": size, "steps": cfg.steps}
        if plan is not None:
            ledger.check(noise_multiplier=plan["noise_multiplier"], sample_rate=plan["sample_rate"],
                         steps=plan["steps"])
            privatizer = PerRecordPrivatizer(gen, max_grad_norm=cfg.max_grad_norm,
                                             noise_multiplier=plan["noise_multiplier"],
                                             sample_rate=plan["sample_rate"], public_records=plan["public_patients"])

        def patient_loss(model: Any, rows: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, n: torch.Tensor,
                         c: torch.Tensor) -> torch.Tensor:
            return (denoising_loss(model, images[rows], t, n, c, acp, pred) * mask).sum()

        def save(step: int, tag: str = LAST, recorded: bool = False) -> Path:
            training = [] if recorded or plan is None else [(plan["noise_multiplier"], plan["sample_rate"], step)]
            dp = {"dp": False, "statement": NO_DP} if plan is None else {
                "dp": True, "unit": "patient", "neighbouring": "add/remove-one patient", **plan,
                "max_grad_norm": cfg.max_grad_norm, "delta": ledger.delta, "accountant": ledger.accountant,
                "epsilon": epsilon_for(ledger.history() + training, ledger.delta, ledger.accountant),
                "epsilon_of_training": epsilon_for([(plan["noise_multiplier"], plan["sample_rate"], step)],
                                                   ledger.delta, ledger.accountant),
                "epsilon_is": "the cohort's lifetime spend after this training (ledger), patient level",
                "noise_source": "os-csprng", "ledger": str(ledger.path)}
            state = {"step": step, "weights": gen.state_dict(), "ema": ema, "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "batch_rng": rng.get_state(), "dp_plan": plan,
                     "label_statistics": stats}
            ckpt = save_generator(gen, run.checkpoint(tag), weights=ema, label_statistics=stats,
                                  provenance={**provenance, "steps": step, "privacy": dp}, train_state=state)
            if tag != LAST:  # a kept resume point; `last` always names the newest
                copy_checkpoint(ckpt, run.checkpoint(LAST))
            return ckpt

        losses: list[float] = []
        t0 = time.perf_counter()
        with progress_bar(f"train {cfg.config}", cfg.steps - start) as advance:
            for step in range(start, cfg.steps):
                gen.train()
                opt.zero_grad(set_to_none=True)
                if plan is None:
                    idx = torch.randint(len(records), (cfg.batch_size,), generator=rng)
                    t = torch.randint(len(acp), (len(idx),), generator=rng)
                    n = torch.randn(images[idx].shape, generator=rng)
                    keep = (torch.rand(len(idx), generator=rng) >= cfg.cond_dropout).float()[:, None]
                    loss = denoising_loss(gen, images[idx], t, n, labels[idx] * keep, acp, pred).mean()
                    loss.backward()
                    losses.append(float(loss.detach()))
                else:
                    chosen = privatizer.sample(len(patient_rows))
                    rows, mask = patient_rows[chosen], patient_mask[chosen]
                    t = torch.randint(len(acp), rows.shape, generator=rng)
                    n = torch.randn((*rows.shape, *images.shape[1:]), generator=rng)
                    keep = (torch.rand(rows.shape, generator=rng) >= cfg.cond_dropout).float()[..., None]
                    privatizer.step_grads(patient_loss, [rows, mask, t, n, labels[rows] * keep])
                opt.step()
                sched.step()
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for k, v in gen.state_dict().items():
                        ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay) if v.is_floating_point() \
                            else ema[k].copy_(v)
                done = step + 1
                shown: dict[str, float] = {}
                if done % cfg.log_every == 0 or done == cfg.steps:
                    row = {"step": done, "lr": sched.get_last_lr()[0], "time": time.time()}
                    if losses:
                        row["loss"] = shown["loss"] = float(np.mean(losses))
                    runlog.append(run.metrics, row)
                    losses = []
                advance(1, **shown)
                if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                    save(done, f"step-{done:06d}")
        seconds = time.perf_counter() - t0
        if plan is not None:  # durable before the final checkpoint (the release) is written
            ledger.record(kind="generator", round_=0, noise_multiplier=plan["noise_multiplier"],
                          sample_rate=plan["sample_rate"], steps=plan["steps"], noise_source="os-csprng",
                          grouping="patient_id", data_fingerprint=provenance["data_fingerprint"])
        ckpt = save(cfg.steps, recorded=plan is not None)
    return {"checkpoint": ckpt, "steps": cfg.steps, "seconds": seconds, "dp": plan is not None,
            "epsilon": None if plan is None else ledger.spent(), "statistics": stats,
            "config": asdict(cfg)}




def ensure_generator(cfg: GeneratorTrainConfig, out: str | Path) -> Path:
    """The run's last checkpoint after `cfg.steps` steps: reused when it is there, an interrupted run
    resumed, else trained from the start — what a resumable pipeline stage wants."""
    last = RunDir(Path(out)).checkpoint(LAST)
    if (last / "config.json").exists():
        from fedclip.generate.model import read_generator_config

        if read_generator_config(last)["provenance"].get("steps") == cfg.steps:
            return last
    return Path(train_generator(cfg, out, resume=(last / TRAIN_STATE_DIR).is_dir())["checkpoint"])
