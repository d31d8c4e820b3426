"""DP-SGD for any module, with a patient (several images) as the record: per-record gradients by torch.func.

fedclip's book-keeping clipper (`fedclip.dp`) covers heads made of linear and layer-norm layers, and
Opacus' per-sample hooks treat one row of a batch as the record. A diffusion generator has
convolutions, group norms and attention, and its record is a patient with several images whose
summed loss must be clipped as a whole; neither fits. Here the record's loss is a function of the
parameters and that record's tensors, and `torch.func.vmap(grad(...))` gives every record's full
gradient exactly (checked against one backward pass per record in tests/generate/test_privatizer.py).

The mechanism is Opacus' own: Poisson sampling of records at rate q, clip factor
`min(1, C / (norm + 1e-6))`, the clipped sum plus Gaussian noise of std sigma * C drawn by the float-safe
secure sampler (`fedclip.noise`) from a fresh OS-CSPRNG seed, divided by the expected batch size
q * (public number of records). An empty draw still takes a noise-only step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedclip import noise

CLIP_EPS = 1e-6  # as Opacus: C / (norm + 1e-6)
RecordLoss = Callable[..., torch.Tensor]
"""loss(model, *one_record_tensors) -> scalar: the record's summed loss, called through functional_call."""


class PerRecordPrivatizer:
    """Sampling, clipping, noise and normalisation of one DP-SGD training (see module docstring)."""

    def __init__(self, module: nn.Module, *, max_grad_norm: float, noise_multiplier: float, sample_rate: float,
                 public_records: int, chunk: int = 16, noise_seed: int | None = None) -> None:
        self.module = module
        self.params = {k: p for k, p in module.named_parameters() if p.requires_grad}
        self.max_grad_norm, self.noise_multiplier = max_grad_norm, noise_multiplier
        self.sample_rate, self.public_records, self.chunk = sample_rate, public_records, chunk
        self.sampling, self.noise = noise.dp_generators(noise_seed)  # tests only pass a seed; the ledger says so

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.public_records

    def sample(self, n_records: int) -> torch.Tensor:
        """Poisson sampling: each record independently with probability q (may be empty)."""
        return torch.nonzero(torch.rand(n_records, generator=self.sampling) < self.sample_rate).flatten()

    def per_record_grads(self, loss: RecordLoss, records: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every record's gradient of `loss` (batch dimension first), in chunks to bound memory."""
        detached = {k: p.detach() for k, p in self.params.items()}
        frozen = {k: p.detach() for k, p in self.module.named_parameters() if not p.requires_grad}
        buffers = dict(self.module.named_buffers())

        def one(params: dict[str, torch.Tensor], *record: torch.Tensor) -> torch.Tensor:
            def call(*args: torch.Tensor) -> torch.Tensor:
                return functional_call(self.module, ({**params, **frozen}, buffers), args)
            return loss(call, *record)

        per = grad(one)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in detached}
        n = len(records[0])
        with warnings.catch_warnings():  # SDPA's backward has no batching rule on CPU: a slower, exact fallback
            warnings.filterwarnings("ignore", message="There is a performance drop")
            for start in range(0, n, self.chunk):
                part = [r[start:start + self.chunk] for r in records]
                g = vmap(per, in_dims=(None, *([0] * len(part))))(detached, *part)
                for k in out:
                    out[k].append(g[k])
        return {k: torch.cat(v) for k, v in out.items()}

    def step_grads(self, loss: RecordLoss, records: Sequence[torch.Tensor]) -> None:
        """Set each trained parameter's `.grad` to the clipped, noised, normalised sum over `records`."""
        sums = {k: torch.zeros_like(p) for k, p in self.params.items()}
        if len(records[0]):
            grads = self.per_record_grads(loss, records)
            norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
            clip = (self.max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
            for k, g in grads.items():
                sums[k] = torch.einsum("b,b...->...", clip, g)
        std = self.noise_multiplier * self.max_grad_norm
        for k, p in self.params.items():  # parameter order, as Opacus draws
            p.grad = (sums[k] + noise.gaussian_like(std, sums[k], self.noise)) / self.expected_batch_size
