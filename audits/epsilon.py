"""Empirical epsilon: does the DP fine-tuning a federation runs leak no more than its ledger says?

The audited training is what one hospital runs over a whole federation, done in one go:
`finetune.epochs x rounds` epochs of DP-SGD on the node's data with the federation's settings, the noise
calibrated for the run's (epsilon, delta) by the same accountant. Its theoretical epsilon (computed
for exactly that training: sigma, q, steps, delta) is shown next to every lower bound.

Threats:
- white-box, every privatized gradient (what DP-SGD's accounting assumes is released; a Flower server
  sees their round sums): gradient-space canaries (random unit directions over the trained parameters,
  inserted before clipping as records whose gradient is 25 C x direction), scored by the sum over steps
  of their inner product with each privatized gradient;
- black-box: input-space canaries, crafted as outliers (prefix outputs off the data's span) with
  random labels, scored by how much training raised the head's logit margin of their label.
Methods: one run with m canaries each included with probability 1/2, analysed as (ε, δ)-DP (Steinke,
Nasr, Jagielski 2023) and as μ-GDP (Mahloujifar, Melis, Chaudhuri 2024), or many trainings with and
without one canary and Clopper-Pearson bounds (Jagielski et al. 2020).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedclip import __version__, io, models, tasks
from fedclip.accounting import epsilon_for
from fedclip.audits import bounds
from fedclip.audits.results import SCORES_FILE, AuditError, write_results
from fedclip.audits.signals import head_signals
from fedclip.data.records import normalise_patient_id, read_metadata
from fedclip.finetune import FinetuneConfig, finetune, load_pixels, noise_for_budget, prefix_tokens, steps_per_round
from fedclip.head import head_vector
from fedclip.mechanism import GradientCanaries
from fedclip.run import RunDir


@dataclass(frozen=True)
class EpsilonConfig:
    method: str = "one-run"  # one-run | trials
    threat: str = "white-box"  # white-box | black-box
    canaries: int | None = None  # one-run: m canaries (None: `default_canaries`)
    trials: int = 100  # trials: trainings (half with the canary)
    confidence: float = 0.95
    seed: int = 0  # the auditor's randomness (canary directions, inclusion); never the training's noise


@dataclass(frozen=True)
class Round:
    """One privatized training the audited mechanism ran: its noise, sampling rate, steps and public size."""

    sigma: float
    q: float
    steps: int
    public_size: int


@dataclass
class Training:
    """One audited DP mechanism: the data, the head settings and the trainings it ran (one for a training
    re-run from settings; a node's recorded rounds when replayed from its ledger)."""

    base: models.VisionClip
    tokens: torch.Tensor
    targets: torch.Tensor
    ft: FinetuneConfig
    plan: tuple[Round, ...]
    patients: list[str] | None = None  # per image, with unit = patient
    source: str = "re-run from the stated settings"
    ledger_epsilon: float | None = None  # the node's lifetime epsilon on this cohort, where it was replayed

    @cached_property
    def dim(self) -> int:
        """Trained parameters of the head (building it encodes the class prompts: done once)."""
        return len(head_vector(self.base, self.ft))

    @property
    def theoretical(self) -> dict[str, Any]:
        eps = epsilon_for([(r.sigma, r.q, r.steps) for r in self.plan], self.ft.delta, self.ft.accountant)
        one = self.plan[0]
        return {"epsilon": eps, "delta": self.ft.delta, "accountant": self.ft.accountant, "unit": self.ft.unit,
                "neighbouring": f"add/remove-one {self.ft.unit}", "mechanism": self.source,
                "rounds": len(self.plan), "noise_multiplier": one.sigma, "sample_rate": one.q,
                "steps": sum(r.steps for r in self.plan),
                "plan": [{"noise_multiplier": r.sigma, "sample_rate": r.q, "steps": r.steps,
                          "public_size": r.public_size} for r in self.plan]}


def _check_auditable(ft: FinetuneConfig) -> None:
    if not ft.dp:
        raise AuditError("the audited training has dp=false: there is no epsilon to audit")
    if ft.lora_rank:
        raise AuditError("epsilon audits of LoRA heads are not supported; audit train_blocks without lora_rank")


def _tokens(vc: models.VisionClip, records: list, root: Path, ft: FinetuneConfig) -> tuple[list[int], torch.Tensor,
                                                                                          torch.Tensor]:
    keep, y = tasks.labelled([r.labels for r in records], ft.task)
    tokens = prefix_tokens(vc, load_pixels(vc, [records[i].path(root) for i in keep]), ft.train_blocks)
    return keep, tokens, torch.from_numpy(y)


def _patients_of(records: list, keep: list[int], tokens: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Patient-level records: images without an id are left out, as a node's default policy does."""
    ids = [normalise_patient_id(records[i].meta.get("patient_id")) for i in keep]
    kept = [j for j, i in enumerate(ids) if i]
    return tokens[kept], targets[kept], [ids[j] for j in kept]


def prepare(base: str | Path, data: str | Path, ft: FinetuneConfig) -> Training:
    """A DP training re-run from stated settings (`ft.unit` the record: image, or patient), its noise
    calibrated for them over the data's own size."""
    _check_auditable(ft)
    vc = models.load_checkpoint(base)
    records = read_metadata(data)
    keep, tokens, targets = _tokens(vc, records, Path(data), ft)
    patients = None
    if ft.unit == "patient":
        tokens, targets, patients = _patients_of(records, keep, tokens, targets)
    n = len(set(patients)) if patients is not None else len(tokens)
    steps = steps_per_round(ft, n)
    return Training(vc, tokens, targets, ft, (Round(noise_for_budget(ft, n, steps), min(1.0, ft.batch_size / n),
                                                    steps, n),), patients)


def _train(t: Training, *, tokens: torch.Tensor | None = None, targets: torch.Tensor | None = None,
           patients: list[str] | None = None, canaries: GradientCanaries | None = None,
           broken: str | None = None) -> models.VisionClip:
    """Run the audited mechanism: each of its trainings in turn (a node's rounds), continuing the weights.
    Between a federation's rounds the node starts from the server's average instead; the guarantee, and
    the canaries' view of every privatized gradient, do not depend on which weights a round starts from."""
    vc = copy.deepcopy(t.base)
    tok = t.tokens if tokens is None else tokens
    for r in t.plan:
        finetune(vc, tok, t.targets if targets is None else targets, t.ft, noise_multiplier=r.sigma, sample_rate=r.q,
                 steps=r.steps, public_size=r.public_size, canaries=canaries, insecure_break_for_tests=broken,
                 patients=t.patients if patients is None else patients)
    return vc


def _directions(m: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    d = torch.randn(m, dim, generator=gen)
    return d / d.norm(dim=1, keepdim=True)


def white_box_scores(t: Training, included: np.ndarray, gen: torch.Generator, *,
                     broken: str | None = None) -> np.ndarray:
    """Each canary direction's inner product with every privatized gradient, summed over steps: the view
    DP-SGD's accounting protects against (all iterates released). Summing per step rather than reading the
    final update keeps the signal whatever the optimizer does with the gradient (Adam rescales it per
    coordinate). The canaries enter before clipping with 25x the clip norm, so a clip that does not bind
    shows."""
    dirs = _directions(len(included), t.dim, gen)
    canaries = GradientCanaries(dirs, torch.from_numpy(included), int(torch.randint(0, 2**62, (1,), generator=gen)))
    _train(t, canaries=canaries, broken=broken)
    if not canaries.projections:
        raise AuditError("the audited training took no step; nothing to score")
    return torch.stack(canaries.projections).sum(0).numpy()


def outlier_inputs(tokens: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """`m` crafted inputs off the data: random directions orthogonal to every record (and to the constant
    vector a layer norm removes), at the records' typical norm.

    A canary's score is how much training moved the model on it. Drawn like the data (as before), every
    record's gradient moved it too, and that interference buried its own. Off the data's span, a record's
    gradient of the head's first layer (outer product of its normalised input with the output gradient) is
    orthogonal to the canary's, so what moves a canary is its own gradient, the other canaries' (random
    directions) and the noise. Only as many directions exist as the inputs have dimensions beyond the data's
    (9 for a 128-wide projection head trained on 120 images), so many canaries still share them."""
    flat = tokens.reshape(len(tokens), -1).double()
    width = tokens.shape[-1]
    ones = torch.zeros(flat.shape[1] // width, flat.shape[1], dtype=torch.float64)
    for i in range(len(ones)):  # each position's constant vector: a layer norm subtracts it
        ones[i, i * width:(i + 1) * width] = 1.0
    basis = torch.cat([flat, ones])
    _, s, vh = torch.linalg.svd(basis, full_matrices=False)
    span = vh[s > s[0] * 1e-6]
    z = torch.randn(m, flat.shape[1], generator=gen, dtype=torch.float64)
    z = z - (z @ span.T) @ span
    z = z / z.norm(dim=1, keepdim=True) * flat.norm(dim=1).mean()
    return z.reshape(m, *tokens.shape[1:]).to(tokens.dtype)


def black_box_scores(t: Training, included: np.ndarray, gen: torch.Generator, *,
                     broken: str | None = None) -> np.ndarray:
    """Crafted input canaries (`outlier_inputs`) with random labels; score: how much training raised the
    head's margin for the canary's label (after minus before: the model before training is public, and the
    difference removes each canary's own starting margin)."""
    m = len(included)
    classes = len(tasks.task(t.ft.task).classes)
    tokens = outlier_inputs(t.tokens, m, gen)
    labels = torch.randint(0, classes, (m,), generator=gen)
    inc = torch.from_numpy(included)
    extra = [f"canary:{i}" for i in np.flatnonzero(included)]  # each canary its own patient
    vc = _train(t, tokens=torch.cat([t.tokens, tokens[inc]]), targets=torch.cat([t.targets, labels[inc]]),
                patients=None if t.patients is None else t.patients + extra, broken=broken)
    after, _ = head_signals(vc, tokens, labels, t.ft)
    before, _ = head_signals(t.base, tokens, labels, t.ft)
    return after - before


SCORERS = {"white-box": white_box_scores, "black-box": black_box_scores}


def one_run_bound(scores: np.ndarray, included: np.ndarray, *, delta: float, confidence: float) -> dict[str, Any]:
    """Both one-run analyses of the same guesses, the confidence split between them (Bonferroni): the
    (ε, δ)-DP bound (Steinke et al. 2023), assumption-free, and the μ-GDP bound (Mahloujifar et al. 2024),
    tighter for a Gaussian-shaped privacy curve. The headline ε_lb is the larger, named in `analysis`."""
    level = 1 - (1 - confidence) / 2
    dp = bounds.one_run_audit(scores, included, delta=delta, confidence=level)
    gdp = bounds.gdp_one_run_audit(scores, included, delta=delta, confidence=level)
    analysis = "gdp" if gdp["epsilon_lb"] > dp["epsilon_lb"] else "epsilon-dp"
    return {"epsilon_lb": max(dp["epsilon_lb"], gdp["epsilon_lb"]), "analysis": analysis, "confidence": confidence,
            "canaries": len(scores), "epsilon_dp": dp, "gdp": gdp}


CANARY_BUDGET = 2**27  # floats of canary directions held at once (512 MiB)
MAX_CANARIES = 10_000
BLACK_BOX_CANARIES = 100


def default_canaries(t: Training, threat: str) -> int:
    """The one-run bound grows with m (docs/audits.md: a Gaussian mechanism's μ_lb roughly doubles from 500 to
    2,000 canaries and gains another quarter by 15,000), so white-box audits take as many directions as
    512 MiB holds, 500 to 10,000. Black-box canaries share the few input directions off the data's span, so
    more of them interfere more: with the noise off, 50 / 100 / 250 / 500 outlier canaries gave ε_lb 0.73 /
    1.82 / 1.34 / 0.76 on the test cohort (train_blocks 1, AdamW; docs/audits.md): 100."""
    if threat != "white-box":
        return BLACK_BOX_CANARIES
    return int(min(MAX_CANARIES, max(500, CANARY_BUDGET // t.dim)))


def one_run(t: Training, cfg: EpsilonConfig, broken: str | None = None) -> tuple[dict[str, Any], np.ndarray,
                                                                                 np.ndarray]:
    """One training with m canaries, each included with probability 1/2: (bound, included, scores)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    included = np.random.default_rng(cfg.seed).random(cfg.canaries or default_canaries(t, cfg.threat)) < 0.5
    scores = SCORERS[cfg.threat](t, included, gen, broken=broken)
    return one_run_bound(scores, included, delta=t.ft.delta, confidence=cfg.confidence), included, scores


def power(t: Training, cfg: EpsilonConfig, breaks: tuple[str, ...] = ("noise-half", "clip-off")) -> dict[str, Any]:
    """What this audit would have caught: the same one-run audit on the same training with the mechanism
    broken the way a bug would break it (noise halved, clip not applied), while the claim stays the same.
    A break is caught when its lower bound exceeds the claimed epsilon."""
    claim = t.theoretical["epsilon"]
    out = {}
    for how in breaks:
        lb = one_run(t, cfg, broken=how)[0]["epsilon_lb"]
        out[how] = {"epsilon_lb": lb, "caught": lb > claim}
    return out


def run_epsilon(t: Training, cfg: EpsilonConfig, out: str | Path, *, source: dict[str, Any],
                ledger_epsilon: float | None = None, insecure_break_for_tests: str | None = None,
                check_power: bool = False, advance: Callable[..., None] | None = None) -> dict[str, Any]:
    if cfg.threat not in SCORERS:
        raise AuditError(f"unknown threat {cfg.threat!r}; use white-box or black-box")
    score = SCORERS[cfg.threat]
    gen = torch.Generator().manual_seed(cfg.seed)
    rows = ["canary,included,score"]
    broken = insecure_break_for_tests
    if cfg.method == "one-run":
        bound, included, scores = one_run(t, cfg, broken)
        rows += [f"{i},{int(inc)},{s:.6g}" for i, (inc, s) in enumerate(zip(included, scores, strict=True))]
        if advance:
            advance(1)
    elif cfg.method == "trials":
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        s_in, s_out = [], []
        for k in range(cfg.trials):
            inc = np.array([k % 2 == 0])
            # the same canary (same direction / same image and label) in every trial
            s = float(score(t, inc, torch.Generator().manual_seed(seed), broken=broken)[0])
            (s_in if inc[0] else s_out).append(s)
            rows.append(f"{k},{int(inc[0])},{s:.6g}")
            if advance:
                advance(1)
        bound = bounds.epsilon_from_trials(s_in, s_out, delta=t.ft.delta, confidence=cfg.confidence)
    else:
        raise AuditError(f"unknown method {cfg.method!r}; use one-run or trials")
    theory = t.theoretical
    doc = {
        "kind": "epsilon", "fedclip_version": __version__, "method": cfg.method, "threat": cfg.threat,
        "config": asdict(cfg), "bound": bound, "epsilon_lb": bound["epsilon_lb"], "theoretical": theory,
        "tightness": bound["epsilon_lb"] / theory["epsilon"] if theory["epsilon"] > 0 else None,
        "ledger_epsilon": ledger_epsilon if ledger_epsilon is not None else t.ledger_epsilon,
        "source": source, "training": asdict(t.ft) | {"n": len(t.tokens)},
        "mechanism": f"SECRETLY BROKEN: {broken} (test-only)" if broken else "as configured",
    }
    if check_power:
        if cfg.method != "one-run":
            raise AuditError("--power runs the one-run audit on broken copies of the mechanism; use --method one-run")
        doc["power"] = power(t, cfg)
    out = Path(out)
    io.write_text(out / SCORES_FILE, "\n".join(rows) + "\n")
    return write_results(out, doc, {"source": source})


def settings_from_run(run: str | Path) -> tuple[Path, Path, FinetuneConfig, float | None]:
    """(base checkpoint, data, fine-tuning settings, largest ledger epsilon) of a simulated federation's run dir."""
    from fedclip import config as cfglib
    from fedclip.audits.mia import finetune_settings
    from fedclip.run import largest_node_epsilon, read_ledger

    run = RunDir(Path(run))
    if not run.config.exists():
        raise AuditError(f"{run.root} holds no config.toml; pass a federation's run dir (fedclip federate --out)")
    fed = cfglib.read_section(run.config, "federate")
    if not fed.get("checkpoint") or not fed.get("data"):
        raise AuditError(f"{run.config} names no checkpoint or data; pass --checkpoint and --data")
    return Path(fed["checkpoint"]), Path(fed["data"]), finetune_settings(fed), largest_node_epsilon(read_ledger(run))


def prepare_deployed(run: str | Path, node_dir: str | Path, data: str | Path | None = None) -> Training:
    """The mechanism one node of a federation deployed, replayed from its own lifetime ledger: every
    `train` entry it recorded on this data (matched by the data's fingerprint) with its σ, q, steps, unit,
    δ and accountant, the public size it released, the federation's fine-tuning settings, and the node's
    records — `data`, or for a simulated node `client-K` the K-th partition of the run's data."""
    from fedclip import config as cfglib
    from fedclip.data.records import fingerprint
    from fedclip.federated.config import FederateConfig
    from fedclip.federated.ledger import read_entries
    from fedclip.federated.task import simulated_partitions

    run, node_dir = RunDir(Path(run)), Path(node_dir)
    if not run.config.exists():
        raise AuditError(f"{run.root} holds no config.toml; pass a federation's run dir (fedclip federate --out)")
    fed = cfglib.build(FederateConfig, cfglib.read_section(run.config, "federate"), "federate")
    ledgers = sorted(node_dir.glob("ledger-*.jsonl"))
    if not ledgers:
        raise AuditError(f"{node_dir} holds no ledger-*.jsonl; pass the node's state dir (a simulated node's is "
                         "STATE_DIR/client-K, a deployed one's its --node-config state-dir)")
    if data is not None:
        root, records = Path(data), read_metadata(data)
    else:
        name = node_dir.name
        if not name.startswith("client-") or not name[7:].isdigit() or fed.data is None:
            raise AuditError(f"{node_dir} is not a simulated node (client-K) of {run.root}; pass --data, the "
                             "node's own dataset dir")
        root, everything = Path(fed.data), read_metadata(fed.data)
        parts = simulated_partitions(fed, everything, fed.clients)
        k = int(name[7:])
        if k >= len(parts):
            raise AuditError(f"{name}: the run had {len(parts)} clients")
        records = [everything[i] for i in parts[k]]
    fp = fingerprint(records)
    # the cohort ledger that holds trainings on this data, read as the node reads it (hash chain verified)
    cohort, trained = [], []
    for path in ledgers:
        entries = read_entries(path)
        hits = [e for e in entries if e.kind == "train" and e.data_fingerprint == fp]
        if hits:
            if trained:
                raise AuditError(f"{node_dir} holds trainings on this data in several cohort ledgers; audit them "
                                 "apart")
            cohort, trained = entries, hits
    if not trained:
        raise AuditError(f"no DP training on this data in {node_dir}'s ledger (fingerprint {fp[:12]}); pass the "
                         "node's own data (--data) as it was when the federation ran")
    if len({e.unit for e in trained}) != 1 or len({(e.delta, e.accountant) for e in trained}) != 1:
        raise AuditError(f"{node_dir}'s trainings on this data mix units, deltas or accountants; audit them apart")
    first = trained[0]
    # the size the node released once for this cohort and reused (`PrivacyLedger.public_size`)
    released = next((e.public_size for e in cohort if e.kind == "dataset-size"), None)
    ft = replace(fed.finetune, dp=True, unit=first.unit, delta=first.delta, accountant=first.accountant)
    _check_auditable(ft)
    vc = models.load_checkpoint(fed.checkpoint)
    keep, tokens, targets = _tokens(vc, records, root, ft)
    patients = None
    if ft.unit == "patient":
        tokens, targets, patients = _patients_of(records, keep, tokens, targets)
    units_n = len(set(patients)) if patients is not None else len(tokens)

    def public_size(q: float) -> int:  # released, else (a size the policy declared) what q = batch / size implies
        return int(released or (round(ft.batch_size / q) if q < 1 else units_n))

    plan = tuple(Round(e.noise_multiplier, e.sample_rate, e.steps, public_size(e.sample_rate)) for e in trained)
    return Training(vc, tokens, targets, ft, plan, patients,
                    source=f"replayed from {node_dir.name}'s ledger: {len(plan)} recorded training(s), "
                           f"per {ft.unit}", ledger_epsilon=cohort[-1].epsilon)
