"""DP noise and sampling randomness: fresh OS-CSPRNG seeds and one float-safe Gaussian sampler.

Every DP release in fedclip (DP-SGD steps of a CLIP head or a generator, a noised count, server-side
noise, the generator's statistics) draws from here, so the choice of sampler is made once. Opacus'
own secure mode needs `torchcsprng`, which does not build for torch 2.14; instead each release seeds a
fresh generator from the operating system's CSPRNG (`secrets`, 63 bits) and draws as Opacus' secure
mode does (the sum of four Gaussians, which defeats the floating-point attack on a single
`torch.normal`). A `seed` is passed only by tests, and every ledger entry it touches says so.
"""

from __future__ import annotations

import secrets

import torch


def secure_seed() -> int:
    """A fresh 63-bit seed from the operating system's CSPRNG, for one release's noise or sampling."""
    return secrets.randbits(63)


def generator(seed: int | None = None) -> torch.Generator:
    """A torch generator seeded from the OS CSPRNG, or from `seed` (tests only)."""
    return torch.Generator().manual_seed(secure_seed() if seed is None else seed)


def dp_generators(seed: int | None = None) -> tuple[torch.Generator, torch.Generator]:
    """(sampling, noise): DP-SGD's two independent streams, each from a fresh OS-CSPRNG seed (tests: `seed`
    and `seed + 1`)."""
    return generator(seed), generator(None if seed is None else seed + 1)


def gaussian_like(std: float, reference: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise of `reference`'s shape, Opacus' secure-mode sampler."""
    from opacus.optimizers.optimizer import _generate_noise

    return _generate_noise(std, reference, generator=gen, secure_mode=True)


def gaussian_noise(std: float, *, seed: int | None = None) -> float:
    """One draw of DP noise outside DP-SGD (a noised count)."""
    return float(gaussian_like(std, torch.zeros(1), generator(seed)))
