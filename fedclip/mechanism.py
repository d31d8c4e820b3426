"""The training step of fine-tuning as one object: how a batch's gradient is made, privatized and applied.

`mechanism()` is the one factory. It returns one of three steps, each with the loader it must be driven by:

* `Plain` — no privacy promised: shuffled batches in the config seed's order, an ordinary backward pass.
* `BookKeepingDP` — DP-SGD by `fedclip.dp`'s book-keeping clipper (grad_sample_mode "bk", the default).
* `OpacusDP` — DP-SGD by Opacus' own per-sample machinery (hooks | functorch | ew | ghost).

The two DP steps are the same mechanism (tests/test_dp.py checks them equal to 1e-6): Poisson sampling of
records at exactly `sample_rate`, per-record clipping to `max_grad_norm` (a record is an image, or a patient
whose images' summed gradient is clipped as a whole), Gaussian noise of std sigma x C, and the noisy sum
divided by `expected_batch_size`, which the caller derives from public numbers (Opacus would use the real
dataset size and 1 / len(loader) as the rate). Randomness: Opacus' secure mode needs torchcsprng, which does
not build for torch 2.14; instead the sampler and the noise each get a generator seeded afresh from the OS
CSPRNG (`fedclip.noise.dp_generators`, never a config seed; tests alone pass `noise_seed`, and the ledger
then says so), and noise is drawn as Opacus' secure mode draws it.

What the audits need wraps a DP step without touching the loop: `plant` inserts gradient canaries among the
records' per-sample gradients *before* the clip (so a missing clip shows), and `break_for_tests` breaks the
mechanism the way a bug would, for the audits' power checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedclip.dp import BookKeeping, supports
from fedclip.errors import FedclipError
from fedclip.noise import dp_generators

if TYPE_CHECKING:
    from fedclip.finetune import FinetuneConfig

BREAKS = ("noise-off", "noise-half", "clip-off")
"""Test-only broken mechanisms the audits must catch; everything else (sigma reported, accounting)
claims the mechanism ran as configured."""

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(inputs, targets, mask): an image per row, or a patient per row with their images padded and masked."""


def record_losses(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, by_patient: bool) -> torch.Tensor:
    """Each record's loss: an image's cross-entropy, or a patient's summed over their (real) images."""
    if not by_patient:
        return F.cross_entropy(logits, y, reduction="none")
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (ce * mask).sum(1)


def make_optimizer(params: list[torch.Tensor], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":  # on privatized gradients Adam is post-processing, but it amplifies noise
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    raise FedclipError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")


@dataclass
class GradientCanaries:
    """Audit canaries in gradient space (white-box, the server's view; Andrew et al. 2023, Steinke et al. 2023).

    Each row of `directions` is a unit vector over the trained parameters (flattened in `Head`
    parameter order). An included canary acts as one extra record whose gradient is
    `norm * max_grad_norm * direction`, Poisson-sampled at the training's rate each step. It joins the
    records' per-sample gradients *before* clipping (Opacus' `grad_sample`, book-keeping's `extra_rows`),
    so the mechanism's own clip scales it to `max_grad_norm`: with `norm` > 1 a clip that does not bind
    shows as a larger canary signal. The DP guarantee covers it like any record, so its inner products
    with the privatized gradients (`observe`, every step) can only reveal what the guarantee allows.
    """

    directions: torch.Tensor  # (m, trained parameter count)
    included: torch.Tensor  # (m,) bool
    seed: int  # the auditor's sampling of canaries into steps (not the training's)
    norm: float = 25.0  # the canary gradient's norm before clipping, in units of max_grad_norm
    projections: list[torch.Tensor] = field(default_factory=list)  # per step: (m,) direction · privatized gradient

    def observe(self, grads: Sequence[torch.Tensor]) -> None:
        """Record one step as the auditor who sees every privatized gradient (what DP-SGD's accounting
        assumes is released; in a federation, every round's aggregate), before the optimizer touches it."""
        g = torch.cat([x.detach().flatten() for x in grads]).to(self.directions.dtype)
        self.projections.append(self.directions @ g)

    def sampler(self, params: list[torch.Tensor], q: float,
                clip: float) -> Callable[[], dict[int, torch.Tensor] | None]:
        """A function that Poisson-samples the included canaries for one step and returns their gradients as
        per-parameter rows (k, *p.shape), or None when none was drawn."""
        # a fresh stream per training (a node's rounds each make one), as Poisson sampling draws anew each step
        gen = torch.Generator().manual_seed(self.seed + len(self.projections))
        sizes = [p.numel() for p in params]

        def draw() -> dict[int, torch.Tensor] | None:
            chosen = self.included & (torch.rand(len(self.included), generator=gen) < q)
            if not chosen.any():
                return None
            rows = self.norm * clip * self.directions[chosen]
            return {id(p): part.reshape(len(rows), *p.shape).to(p.dtype)
                    for p, part in zip(params, rows.split(sizes, dim=1), strict=True)}

        return draw


class _Step:
    """What every step holds: the module it trains, its trained parameters and their optimizer."""

    loader: Iterable[Batch]

    def __init__(self, head: nn.Module, params: list[torch.Tensor], cfg: FinetuneConfig, by_patient: bool) -> None:
        self.head, self.params, self.by_patient = head, params, by_patient
        self.optimizer = make_optimizer(params, cfg)

    def gradients(self) -> list[torch.Tensor]:
        """The step's gradient as applied (privatized, for a DP step), in parameter order."""
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]


class Plain(_Step):
    """No privacy promised: data order from the config seed, an ordinary backward pass."""

    def __init__(self, head: nn.Module, params: list[torch.Tensor], dataset: TensorDataset, cfg: FinetuneConfig,
                 *, by_patient: bool) -> None:
        super().__init__(head, params, cfg, by_patient)
        self.loader = _with_mask(DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                                            generator=torch.Generator().manual_seed(cfg.seed)))

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch: (its mean record loss, its logits)."""
        self.optimizer.zero_grad()
        logits = self.head(x)
        loss = record_losses(logits, y, mask, self.by_patient).mean()
        loss.backward()
        self.optimizer.step()
        return loss, logits


class BookKeepingDP(_Step):
    """DP-SGD with `fedclip.dp`'s book-keeping clipping on the head (see the module docstring)."""

    def __init__(self, head: nn.Module, params: list[torch.Tensor], dataset: TensorDataset, cfg: FinetuneConfig,
                 *, by_patient: bool, sigma: float, sample_rate: float, expected_batch_size: float,
                 noise_seed: int | None) -> None:
        if not supports(head):
            raise FedclipError("grad_sample_mode bk needs a head of linear and layer-norm layers; use hooks")
        super().__init__(head, params, cfg, by_patient)
        sampling, noise = dp_generators(noise_seed)
        self.privatizer = BookKeeping(head, params, max_grad_norm=cfg.max_grad_norm, noise_multiplier=sigma,
                                      expected_batch_size=expected_batch_size, generator=noise)
        self.loader = _with_mask(_poisson(dataset, sample_rate, sampling))

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad()
        with self.privatizer.recording():
            logits = self.head(x)
        per_record = record_losses(logits, y, mask, self.by_patient)
        self.privatizer.private_grads(per_record)  # clipped per record, summed, noised, normalised
        self.optimizer.step()
        return (per_record.mean() if len(y) else per_record.sum()), logits

    def plant(self, canaries: GradientCanaries, q: float, clip: float) -> None:
        """Canary gradients join the records' per-sample gradients before the clip."""
        self.privatizer.extra_rows = canaries.sampler(self.params, q, clip)

    def break_for_tests(self, how: str) -> None:
        """Break the mechanism the way a bug would (tests and the audits' power checks only)."""
        if how == "clip-off":
            self.privatizer.clip_factors = lambda norm2: torch.ones_like(norm2)
        else:
            _break_noise(self.privatizer, how)


class OpacusDP(_Step):
    """DP-SGD with Opacus' GradSampleModule and DPOptimizer around the head, fedclip's randomness and
    normalisation (see the module docstring)."""

    def __init__(self, head: nn.Module, params: list[torch.Tensor], dataset: TensorDataset, cfg: FinetuneConfig,
                 *, by_patient: bool, sigma: float, sample_rate: float, expected_batch_size: float,
                 noise_seed: int | None) -> None:
        from opacus import PrivacyEngine

        super().__init__(head, params, cfg, by_patient)
        self.mode = cfg.grad_sample_mode
        sampling, noise = dp_generators(noise_seed)
        with warnings.catch_warnings():  # "Secure RNG turned off": fedclip supplies its own, see above
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=cfg.accountant)  # its accountant is unused: the ledger accounts
        criterion = nn.CrossEntropyLoss()
        wrapped = engine.make_private(module=head, optimizer=self.optimizer,
                                      data_loader=_poisson(dataset, sample_rate, sampling), criterion=criterion,
                                      noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                                      poisson_sampling=False, grad_sample_mode=cfg.grad_sample_mode,
                                      noise_generator=noise)
        self.head, self.optimizer = wrapped[0], wrapped[1]
        self.criterion = wrapped[2] if cfg.grad_sample_mode == "ghost" else criterion
        self.optimizer.secure_mode = True
        self.optimizer.expected_batch_size = expected_batch_size
        self.privatizer = self.optimizer  # Opacus' DPOptimizer clips, noises and normalises
        self.loader = _with_mask(wrapped[-1])

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad()  # before the forward pass: expanded weights accumulate during it
        if not len(y) and self.mode == "ew":
            # expanded weights cannot run a batch of 0; an empty per-sample gradient is the same step
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            self.optimizer.step()
            return torch.zeros(()), torch.zeros((0,))
        logits = self.head(x)
        if not len(y):
            loss = logits.sum() * 0.0
        elif self.by_patient:
            loss = record_losses(logits, y, mask, by_patient=True).mean()
        else:
            loss = self.criterion(logits, y)
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def plant(self, canaries: GradientCanaries, q: float, clip: float) -> None:
        """Canary gradients join Opacus' per-sample gradients before it clips them."""
        draw, clip_and_accumulate = canaries.sampler(self.params, q, clip), self.optimizer.clip_and_accumulate

        def with_canaries() -> None:
            rows = draw()
            if rows is not None:
                for p in self.params:
                    p.grad_sample = torch.cat([p.grad_sample, rows[id(p)].to(p.grad_sample.dtype)])
            clip_and_accumulate()

        self.optimizer.clip_and_accumulate = with_canaries

    def break_for_tests(self, how: str) -> None:
        """Break the mechanism the way a bug would (tests and the audits' power checks only)."""
        if how != "clip-off":
            _break_noise(self.optimizer, how)
            return
        # Opacus clips with max_grad_norm and scales its noise by it: lift it for the clip only
        opt = self.optimizer
        clip_and_accumulate, bound = opt.clip_and_accumulate, opt.max_grad_norm

        def unclipped() -> None:
            opt.max_grad_norm = float("inf")
            try:
                clip_and_accumulate()
            finally:
                opt.max_grad_norm = bound

        opt.clip_and_accumulate = unclipped


Mechanism = Plain | BookKeepingDP | OpacusDP


def mechanism(head: nn.Module, params: list[torch.Tensor], dataset: TensorDataset, cfg: FinetuneConfig, *,
              by_patient: bool, sigma: float | None = None, sample_rate: float = 1.0,
              expected_batch_size: float = 1.0, noise_seed: int | None = None) -> Mechanism:
    """The step `cfg` asks for: `Plain` without DP, else the DP step of its `grad_sample_mode`."""
    if not cfg.dp:
        return Plain(head, params, dataset, cfg, by_patient=by_patient)
    if sigma is None:
        raise ValueError("a DP step needs its noise multiplier")
    kind = BookKeepingDP if cfg.grad_sample_mode == "bk" else OpacusDP
    return kind(head, params, dataset, cfg, by_patient=by_patient, sigma=sigma, sample_rate=sample_rate,
                expected_batch_size=expected_batch_size, noise_seed=noise_seed)


def _break_noise(privatizer: Any, how: str) -> None:
    if how == "noise-off":
        privatizer.noise_multiplier = 0.0
    elif how == "noise-half":
        privatizer.noise_multiplier *= 0.5
    else:
        raise FedclipError(f"unknown break {how!r}; use one of {', '.join(BREAKS)}")


def _poisson(dataset: TensorDataset, sample_rate: float, generator: torch.Generator) -> DataLoader:
    """Poisson sampling at exactly `sample_rate`; a dataset with no record yields an empty batch every step."""
    from opacus.data_loader import DPDataLoader

    if not len(dataset):
        return _EmptyBatches(dataset)
    return DPDataLoader(dataset, sample_rate=sample_rate, generator=generator)


class _EmptyBatches(DataLoader):
    """What Poisson sampling yields from a dataset with no record: an empty batch, every step."""

    def __init__(self, dataset: TensorDataset) -> None:
        super().__init__(dataset, batch_size=1)
        self.empty = tuple(t[:0] for t in dataset.tensors)

    def __iter__(self):  # type: ignore[override]
        yield self.empty

    def __len__(self) -> int:
        return 1


class _with_mask:  # noqa: N801 - an iterable adaptor, named for what it yields
    """Batches as (x, y, mask): an image dataset has no mask, so every row counts."""

    def __init__(self, loader: Iterable[tuple[torch.Tensor, ...]]) -> None:
        self.loader = loader

    def __iter__(self):
        for x, y, *rest in self.loader:
            yield x, y, rest[0] if rest else torch.ones(y.shape)
