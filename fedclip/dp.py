"""DP-SGD's clipped, noised gradient for the fine-tuning head, by book-keeping (grad_sample_mode "bk").

Opacus materialises every sample's gradient of every trained parameter (hooks mode) or runs a second
backward pass (ghost mode). For a head built of `nn.Linear` and `nn.LayerNorm` layers neither is needed
(Bu et al. 2023, "Differentially private optimization on large model at small cost"): one backward pass
to the layers' *outputs* gives each layer's output gradients g; with its inputs a (kept by a forward
hook) a sample's gradient of a linear layer is sum_s a_s g_s^T, whose norm is computed either from the
small (d_in x d_out) matrix itself or, when the sequence is short, from the Gram matrices
(a a^T) * (g g^T) ("ghost norm", never forming the gradient); the clipped sum over the batch is then one
matrix product, a^T diag(c) g, with c scaling whichever of a and g is narrower. A layer norm's and a bias's
per-sample gradients are small (batch x features) rows, computed once for the norm and reused for the
clipped sum (c @ rows). No per-sample gradient of a large layer is ever stored, and autograd computes no
parameter gradient that would be thrown away.

The result is the same vector as Opacus' `DPOptimizer` (per-sample clipping with its formula
c = min(1, C / (norm + 1e-6)), noise drawn by Opacus' own secure-mode sampler in parameter order from
the given generator, division by the expected batch size); `tests/test_dp.py` checks it to 1e-6
against Opacus on the same batch and noise. Accounting is unchanged: the mechanism is the same.

Why not Opacus' ghost mode: it clips with a second full backward pass and supports neither fedclip's
patient-level records (several images per sample) nor canary injection before the noise; measured in
`benchmarks/dp_overhead.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

CLIP_EPS = 1e-6  # Opacus' per-sample clip factor: C / (norm + 1e-6)


def supports(head: nn.Module) -> bool:
    """Every trained parameter sits directly in an `nn.Linear` or an affine `nn.LayerNorm`."""
    owned = {id(p) for m in _layers(head) for p in m.parameters(recurse=False) if p.requires_grad}
    return all(id(p) in owned for p in head.parameters() if p.requires_grad)


def _layers(head: nn.Module) -> list[nn.Module]:
    return [m for m in head.modules() if isinstance(m, (nn.Linear, nn.LayerNorm))
            and any(p.requires_grad for p in m.parameters(recurse=False))]


class BookKeeping:
    """Per-sample clipped, noised gradient sums for `head`'s trained parameters, written to `p.grad`.

    Use: `with bk.recording(): out = head(x)`, then `bk.private_grads(per_sample_loss)`, then the
    ordinary optimizer's `step()`. Like Opacus' `DPOptimizer`, the clipped sum is `p.summed_grad` when
    `add_noise()` runs. Audit canaries enter through `extra_rows` *before* clipping (as they enter
    Opacus' per-sample gradients), so a broken clip shows in the audit.
    """

    def __init__(self, head: nn.Module, params: list[torch.Tensor], *, max_grad_norm: float,
                 noise_multiplier: float, expected_batch_size: float, generator: torch.Generator) -> None:
        if not supports(head):
            raise ValueError("book-keeping DP needs every trained parameter in an nn.Linear or nn.LayerNorm")
        self.params = params
        self.max_grad_norm, self.noise_multiplier = max_grad_norm, noise_multiplier
        self.expected_batch_size, self.generator = expected_batch_size, generator
        # audit canaries: per-parameter rows (k, *p.shape) of records' gradients, clipped with the batch's
        self.extra_rows: Callable[[], dict[int, torch.Tensor] | None] | None = None
        self._seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self._recording = False
        for m in _layers(head):
            m.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self._recording:
            if any(m is module for m, _, _ in self._seen):  # its per-sample norm would miss cross terms
                raise ValueError("book-keeping DP needs each trained layer to run once per forward pass")
            self._seen.append((module, inputs[0].detach(), output))

    @contextmanager
    def recording(self) -> Iterator[BookKeeping]:
        """Keep the trained layers' inputs and outputs of the forward passes run inside."""
        self._seen, self._recording = [], True
        try:
            yield self
        finally:
            self._recording = False

    def private_grads(self, per_sample_loss: torch.Tensor) -> None:
        """Clip each sample's gradient of its loss, sum, add the noise, divide by the expected batch size."""
        seen, self._seen = self._seen, []
        batch = len(per_sample_loss)
        sums = {id(p): torch.zeros_like(p) for p in self.params}
        if batch:
            outs = [o for _, _, o in seen]
            grads = torch.autograd.grad(per_sample_loss.sum(), outs, allow_unused=True)
            layers = [_Layer(m, _per_sample(a, batch), _per_sample(g if g is not None else torch.zeros_like(o), batch))
                      for (m, a, o), g in zip(seen, grads, strict=True)]
            norm2 = torch.zeros(batch, dtype=per_sample_loss.dtype)
            for layer in layers:
                norm2 += layer.norm2()
            clip = self.clip_factors(norm2)
            for layer in layers:
                layer.add_clipped_sum(clip, sums)
        rows = self.extra_rows() if self.extra_rows is not None else None
        if rows:  # records whose gradient is given whole (audit canaries): the same clip rule
            clip = self.clip_factors(sum(r.flatten(1).pow(2).sum(1) for r in rows.values()))
            for p in self.params:
                sums[id(p)] += torch.einsum("b,b...->...", clip, rows[id(p)].to(sums[id(p)].dtype))
        for p in self.params:
            p.summed_grad = sums[id(p)]
        self.add_noise()

    def clip_factors(self, norm2: torch.Tensor) -> torch.Tensor:
        """Each record's clip factor from its squared gradient norm: Opacus' `min(1, C / (norm + 1e-6))`."""
        return (self.max_grad_norm / (norm2.sqrt() + CLIP_EPS)).clamp(max=1.0)

    def add_noise(self) -> None:
        """`p.grad` = (clipped sum + noise) / expected batch size: Opacus' `add_noise` and `scale_grad`."""
        from opacus.optimizers.optimizer import _generate_noise

        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:  # parameter order and sampler: exactly Opacus' in secure mode
            noise = _generate_noise(std, p.summed_grad, generator=self.generator, secure_mode=True)
            p.grad = (p.summed_grad + noise) / self.expected_batch_size
            del p.summed_grad


def _per_sample(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, positions, features): every dimension between the sample and the features (tokens, a
    patient's images) is one sequence, since a sample's gradient sums over all of them."""
    return x.reshape(batch, -1, x.shape[-1])


class _Layer:
    """One trained layer's inputs `a` and output gradients `g` for a batch, (batch, positions, features).

    What is per sample and small is computed once and serves both the norm and the clipped sum: a
    layer norm's and a bias's per-sample gradients are (batch, features) rows, so their clipped sum is
    `clip @ rows`; a linear weight's per-sample gradient is (d_in x d_out) per sample and is never formed.
    """

    def __init__(self, m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> None:
        self.m, self.a, self.g = m, a, g
        trained_bias = m.bias is not None and m.bias.requires_grad
        self.bias_rows = g.sum(1) if trained_bias else None
        self.weight_rows = None  # a layer norm's weight: (batch, features)
        if isinstance(m, nn.LayerNorm) and m.weight.requires_grad:
            self.weight_rows = (F.layer_norm(a, m.normalized_shape, eps=m.eps) * g).sum(1)
        self.linear_weight = isinstance(m, nn.Linear) and m.weight.requires_grad  # never formed per sample

    def norm2(self) -> torch.Tensor:
        """Each sample's squared gradient norm over the layer's trained parameters."""
        out = self.bias_rows.pow(2).sum(1) if self.bias_rows is not None else 0.0
        if self.weight_rows is not None:
            return self.weight_rows.pow(2).sum(1) + out
        if not self.linear_weight:
            return out
        a, g = self.a, self.g
        s, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
        if s == 1:
            w = a.squeeze(1).pow(2).sum(1) * g.squeeze(1).pow(2).sum(1)
        elif s * s <= d_in * d_out:  # ghost norm: two (s x s) Gram matrices instead of a (d_in x d_out) gradient
            w = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        else:
            w = torch.bmm(a.transpose(1, 2), g).pow(2).sum((1, 2))
        return w + out

    def add_clipped_sum(self, clip: torch.Tensor, sums: dict[int, torch.Tensor]) -> None:
        """Add the layer's clipped per-sample gradients, summed over the batch, to `sums`."""
        m = self.m
        if self.bias_rows is not None:
            sums[id(m.bias)] += clip @ self.bias_rows
        if self.weight_rows is not None:
            sums[id(m.weight)] += clip @ self.weight_rows
        elif self.linear_weight:
            # sum_b clip_b g_b^T a_b as one product; the clip scales whichever side is narrower
            a, g = self.a, self.g
            if a.shape[2] <= g.shape[2]:
                a = a * clip[:, None, None]
            else:
                g = g * clip[:, None, None]
            sums[id(m.weight)] += g.flatten(0, 1).T @ a.flatten(0, 1)
