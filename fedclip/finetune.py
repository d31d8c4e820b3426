"""Supervised fine-tuning of the vision tower against class-prompt text embeddings, with or without DP.

One function (`finetune`) serves federated clients, the audits' reference models and the epsilon audit's
trainings. The model is split in two:

* a frozen prefix (patch embedding + the first blocks), run once under `no_grad`; its outputs are
  cached (`prefix_tokens`), which costs no privacy (the weights are public) and makes DP training cheap;
* a trained head (`fedclip.head`): the last `train_blocks` transformer blocks, `ln_post` and the
  projection, scored against the zero-shot class embeddings.

Where the privacy claim lives: `fedclip.mechanism` — the DP-SGD step (sampling, per-record clipping, noise,
normalisation), chosen once by `mechanism()`; the loop below only drives it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from fedclip import evaluate, tasks
from fedclip.data.images import load_rgb
from fedclip.errors import FedclipError
from fedclip.head import build_head
from fedclip.mechanism import GradientCanaries, mechanism
from fedclip.models import VisionClip


@dataclass(frozen=True)
class FinetuneConfig:
    task: str = "referable_dr"
    train_blocks: int = 1  # last k vision blocks (+ ln_post + projection) are trained; 0: projection only
    lora_rank: int = 0  # > 0: low-rank adapters on the trained blocks instead of their full weights
    epochs: int = 1  # local epochs (per federated round)
    batch_size: int = 32  # expected batch size; with DP, Poisson sampling at rate batch_size / n
    lr: float = 1e-3
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    dp: bool = True
    epsilon: float = 8.0  # target (epsilon, delta) over `rounds` rounds, used to calibrate the noise
    delta: float = 1e-5
    rounds: int = 1
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None  # set it to skip calibration
    accountant: str = "rdp"  # rdp | prv
    # bk: fedclip's book-keeping clipping (fedclip.dp; equal to Opacus' result, cheaper); or Opacus' own
    # per-sample machinery: hooks | functorch | ew | ghost
    grad_sample_mode: str = "bk"
    proximal_mu: float = 0.0  # FedProx: pull towards the weights the round started from
    # Class prior for a logit-adjusted loss (Menon et al. 2021), so that rare classes are not traded away
    # for accuracy on the common one. Set it from public knowledge (published screening prevalence), not
    # from the client's own label counts: those are private and DP-SGD's accounting does not cover them.
    # (Loss weights would not do: per-sample clipping cancels them.)
    class_prior: tuple[float, ...] | None = None
    # Unit of privacy for DP: "image" (each image one record) or "patient" (all images of a patient are one
    # record: their summed gradient is clipped as a whole; `batch_size` then counts patients).
    unit: str = "image"
    max_images_per_patient: int = 16  # patient unit: images of a patient beyond this are not trained on
    seed: int = 0


@torch.no_grad()
def prefix_tokens(vc: VisionClip, pixels: torch.Tensor, train_blocks: int, batch_size: int = 256) -> torch.Tensor:
    """Outputs of the frozen prefix (embedding + the blocks before the trained ones)."""
    visual = vc.model.visual
    visual.eval()
    if not len(pixels):  # no record: the tokens' shape, from a blank image, with no row
        return prefix_tokens(vc, pixels.new_zeros((1, *pixels.shape[1:])), train_blocks)[:0]
    first = len(visual.transformer.resblocks) - train_blocks
    out = []
    for chunk in pixels.split(batch_size):
        x = visual._embeds(chunk)
        for blk in visual.transformer.resblocks[:first]:
            x = blk(x)
        # With no block to train, only the class token reaches the head: keep it alone (65x less to
        # cache, batch and move per step).
        out.append(x[:, :1] if train_blocks == 0 else x)
    return torch.cat(out)


def load_pixels(vc: VisionClip, images: Sequence[Any]) -> torch.Tensor:
    """Inference-preprocessed pixels of arrays, PIL images or paths (fine-tuning does not augment)."""
    tf = evaluate.eval_transform(vc.image_size)

    def to_pil(img: Any) -> Image.Image:
        if isinstance(img, np.ndarray):
            return Image.fromarray(img)
        return img if isinstance(img, Image.Image) else load_rgb(img)

    if not len(images):
        return torch.zeros((0, 3, vc.image_size, vc.image_size))
    return torch.stack([tf(to_pil(i).convert("RGB")) for i in images])


# --------------------------------------------------------------------------------------- training
@dataclass
class FinetuneResult:
    state: dict[str, torch.Tensor]  # trained weights, open_clip layout
    n_samples: int
    steps: int
    sample_rate: float
    noise_multiplier: float | None
    loss: float
    accuracy: float
    seconds_per_step: float  # the training loop alone (no set-up, no calibration)


def noise_for_budget(cfg: FinetuneConfig, n: int, steps_per_round: int) -> float:
    """Noise multiplier that spends exactly the (epsilon, delta) budget over all planned rounds."""
    from opacus.accountants.utils import get_noise_multiplier

    if cfg.noise_multiplier is not None:
        return cfg.noise_multiplier
    with warnings.catch_warnings():  # the search probes tiny noise levels; see accounting.epsilon_for
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(get_noise_multiplier(target_epsilon=cfg.epsilon, target_delta=cfg.delta,
                                          sample_rate=min(1.0, cfg.batch_size / n),
                                          steps=cfg.rounds * steps_per_round, accountant=cfg.accountant))


def steps_per_round(cfg: FinetuneConfig, n: int) -> int:
    return max(1, cfg.epochs * math.ceil(n / cfg.batch_size))


def group_by_patient(tokens: torch.Tensor, targets: torch.Tensor, patients: Sequence[str],
                     cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per patient: their images' tokens and targets padded to the largest count (at most `cap`),
    and a mask of the real ones.

    With a patient as Opacus' sample, per-sample clipping *is* per-patient clipping: the patient's
    gradient, summed over their images, is clipped to the norm bound as a whole — however many images
    they have. A cap bounds memory and compute; it does not change the privacy guarantee.
    """
    if len(patients) != len(tokens):
        raise FedclipError(f"{len(patients)} patient ids for {len(tokens)} images")
    if not len(tokens):
        return tokens.new_zeros((0, 1, *tokens.shape[1:])), targets.new_zeros((0, 1)), torch.zeros((0, 1))
    order: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        order.setdefault(str(p), []).append(i)
    width = min(cap, max(len(v) for v in order.values()))
    rows, ys, masks = [], [], []
    for idx in order.values():
        idx = idx[:cap]
        pad = width - len(idx)
        rows.append(torch.cat([tokens[idx], tokens.new_zeros((pad, *tokens.shape[1:]))]))
        ys.append(torch.cat([targets[idx], targets.new_zeros(pad)]))
        masks.append(torch.cat([torch.ones(len(idx)), torch.zeros(pad)]))
    return torch.stack(rows), torch.stack(ys), torch.stack(masks)


def finetune(vc: VisionClip, tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig, *,
             noise_multiplier: float | None = None, sample_rate: float | None = None, steps: int | None = None,
             public_size: int | None = None, noise_seed: int | None = None,
             canaries: GradientCanaries | None = None, patients: Sequence[str] | None = None,
             insecure_break_for_tests: str | None = None) -> FinetuneResult:
    """Train the head on cached prefix tokens; DP-SGD with Poisson sampling when `cfg.dp`.

    The model `vc` is updated in place with the trained weights (open_clip layout) and they are
    returned. Federated clients pass what their ledger planned: `noise_multiplier`, `sample_rate` and
    `steps` derived from `public_size` (a dataset size that may be released), so that nothing about
    the real size shapes the update. Without them, the real size is used (a local, unreleased model).
    `noise_seed` is for tests only: DP randomness otherwise comes from the OS CSPRNG.
    With `cfg.unit == "patient"`, `patients` names each image's patient and a patient is the record
    (sampling, clipping, `public_size` and `batch_size` count patients).
    `canaries` plants gradient-space audit canaries; `insecure_break_for_tests` (one of `mechanism.BREAKS`) trains
    with the noise secretly off or halved, or the clip secretly off, while everything else (sigma
    reported, accounting) claims it ran as configured: a broken mechanism the audits must catch, for
    tests and the audits' power checks only.
    """
    dataset, by_patient = _records(tokens, targets, cfg, patients, public_size)
    n = len(dataset)
    size = public_size or n
    head = build_head(vc, cfg)
    _adjust_logits(head, cfg)
    params = [p for p in head.parameters() if p.requires_grad]
    steps = steps or steps_per_round(cfg, size)
    q = sample_rate if sample_rate is not None else min(1.0, cfg.batch_size / size)
    sigma = (noise_multiplier if noise_multiplier is not None else noise_for_budget(cfg, size, steps)) \
        if cfg.dp else None
    step = mechanism(head, params, dataset, cfg, by_patient=by_patient, sigma=sigma, sample_rate=q,
                     expected_batch_size=q * size, noise_seed=noise_seed)
    if cfg.dp and canaries is not None:
        step.plant(canaries, q, cfg.max_grad_norm)
    if insecure_break_for_tests is not None:
        if not cfg.dp:
            raise FedclipError("insecure_break_for_tests needs dp: without it there is no mechanism to break")
        step.break_for_tests(insecure_break_for_tests)  # an unknown break is refused there
    head.train()
    # FedProx's proximal term, applied as a step towards the round's starting weights after each
    # optimizer step: it depends on no data, so it is post-processing and costs no privacy.
    anchor = [p.detach().clone() for p in params] if cfg.proximal_mu > 0 else None
    losses, correct, seen, done = [], 0, 0, 0
    t_loop = time.perf_counter()
    with warnings.catch_warnings():
        # a frozen prefix means no input requires grad: PyTorch says so on every backward pass
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while done < steps:
            # Poisson sampling can draw an empty batch: it still takes a (noise-only) step, as the
            # privacy analysis assumes; skipping it would reveal that the batch was empty.
            for x, y, mask in step.loader:
                if done >= steps:
                    break
                done += 1
                loss, logits = step.step(x, y, mask)
                if canaries is not None and cfg.dp:
                    canaries.observe(step.gradients())
                if anchor is not None:
                    with torch.no_grad():
                        for p, a in zip(params, anchor, strict=True):
                            p.sub_(cfg.lr * cfg.proximal_mu * (p - a))
                if len(y):
                    losses.append(float(loss.detach()))
                    correct += int(((logits.argmax(-1) == y) * mask).sum())
                    seen += int(mask.sum())
    per_step = (time.perf_counter() - t_loop) / max(1, done)
    state = head.open_clip_state()
    vc.model.load_state_dict(state, strict=False)
    return FinetuneResult(state, n, steps, q if cfg.dp else 1.0, sigma,
                          float(np.mean(losses)) if losses else float("nan"), correct / max(1, seen), per_step)


def _records(tokens: torch.Tensor, targets: torch.Tensor, cfg: FinetuneConfig, patients: Sequence[str] | None,
             public_size: int | None) -> tuple[TensorDataset, bool]:
    """The training records: images, or patients (their images grouped, padded and masked); checked."""
    if len(tokens) == 0 and not (cfg.dp and public_size):
        raise FedclipError("no training images: this client's partition is empty")
    # With DP and a public size, no record is no reason to stop: the same steps run on empty batches
    # (noise only), so that what leaves a node never depends on whether it holds a labelled record.
    if cfg.unit not in ("image", "patient"):
        raise FedclipError(f"unknown unit {cfg.unit!r}; use image or patient")
    if cfg.unit == "image":
        return TensorDataset(tokens, targets), False
    if patients is None:
        raise FedclipError("patient-level training needs each image's patient id")
    if cfg.dp and cfg.grad_sample_mode not in ("bk", "hooks", "functorch"):
        raise FedclipError(f"patient-level DP supports grad_sample_mode bk, hooks or functorch, not "
                           f"{cfg.grad_sample_mode}")
    return TensorDataset(*group_by_patient(tokens, targets, patients, cfg.max_images_per_patient)), True


def _adjust_logits(head: torch.nn.Module, cfg: FinetuneConfig) -> None:
    """The class prior's logit adjustment (see FinetuneConfig.class_prior), validated against the task."""
    if cfg.class_prior is None:
        return
    t = tasks.task(cfg.task)
    if len(cfg.class_prior) != len(t.classes) or min(cfg.class_prior) <= 0:
        raise FedclipError(f"class_prior needs {len(t.classes)} positive values for task {t.name} "
                           f"({', '.join(t.classes)}), got {cfg.class_prior}")
    head.register_buffer("adjust", torch.log(torch.tensor(cfg.class_prior, dtype=torch.float32)))
