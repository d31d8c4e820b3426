"""Supervised fine-tuning of the vision tower against class-prompt text embeddings, with or without DP.

One function (`finetune`) serves federated clients and the audits' reference models. The model is
split in two:

* a frozen prefix (patch embedding + the first blocks), run once under `no_grad`; its outputs are
  cached, which costs no privacy (the weights are public) and makes DP training cheap;
* a trained head: the last `train_blocks` transformer blocks, `ln_post` and the projection, scored
  against the zero-shot class embeddings (the zero-shot head is the initialisation).

For Opacus the head is rebuilt from modules it has per-sample rules for, *without changing what the
model computes*: attention becomes plain `nn.Linear` layers around `scaled_dot_product_attention`
(Opacus's own `DPMultiheadAttention` differs from `batch_first=True` attention: see
shared/notes/opacus-1.6-open-clip.md), open_clip's LayerNorm subclass becomes `nn.LayerNorm`, the
bare `proj` parameter becomes an `nn.Linear`. Trained weights go back into open_clip's own layout.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedclip import evaluate, tasks
from fedclip.data.images import load_rgb
from fedclip.dp import BookKeeping, supports
from fedclip.errors import FedclipError, ModelError
from fedclip.models import VisionClip
from fedclip.noise import secure_seed


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


# ----------------------------------------------------------------------------------- DP-ready head
class LinearAttention(nn.Module):
    """Self-attention as qkv / out `nn.Linear` + SDPA: equal to `nn.MultiheadAttention(batch_first=True)`."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha.batch_first or mha.in_proj_weight is None:
            raise ModelError("only batch-first attention with a packed in-projection can be converted")
        d = mha.embed_dim
        self.heads = mha.num_heads
        self.qkv = nn.Linear(d, 3 * d, bias=mha.in_proj_bias is not None)
        self.out = nn.Linear(d, d, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                self.qkv.bias.copy_(mha.in_proj_bias)
            self.out.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out.bias.copy_(mha.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, [images,] tokens, width); the linear layers see the batch first, so Opacus' per-sample
        # gradients are per batch row (a patient, when a row holds a patient's images)
        *lead, n, d = x.shape
        q, k, v = self.qkv(x).reshape(-1, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(*lead, n, d))


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trained low-rank update (B @ A starts at zero)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scale = (alpha or rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scale * self.up.weight @ self.down.weight


def _plain_layernorm(ln: nn.LayerNorm) -> nn.LayerNorm:
    out = nn.LayerNorm(ln.normalized_shape, eps=ln.eps, elementwise_affine=ln.elementwise_affine)
    out.load_state_dict(ln.state_dict())
    return out


class Block(nn.Module):
    """open_clip's ResidualAttentionBlock (pre-norm, no layer scale) from Opacus-supported modules."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not isinstance(block.ls_1, nn.Identity) or hasattr(block, "ln_1_kv"):
            raise ModelError("blocks with layer scale or cross-attention are not supported for fine-tuning")
        self.ln_1 = _plain_layernorm(block.ln_1)
        self.attn = LinearAttention(block.attn)
        self.ln_2 = _plain_layernorm(block.ln_2)
        self.fc = copy.deepcopy(block.mlp.c_fc)
        self.act = copy.deepcopy(block.mlp.gelu)
        self.proj = copy.deepcopy(block.mlp.c_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(self.act(self.fc(self.ln_2(x))))


class Head(nn.Module):
    """Trained suffix: blocks -> class token -> ln_post -> projection -> scaled cosine to class embeddings."""

    def __init__(self, vc: VisionClip, train_blocks: int, class_embeddings: torch.Tensor, lora_rank: int = 0) -> None:
        super().__init__()
        visual = vc.model.visual
        blocks = visual.transformer.resblocks
        if not 0 <= train_blocks <= len(blocks):
            raise FedclipError(f"train_blocks must be within 0..{len(blocks)} for {vc.name}, got {train_blocks}")
        if visual.attn_pool is not None or visual.final_ln_after_pool or visual.pool_type != "tok":
            raise ModelError("fine-tuning supports class-token pooling only")
        self.first = len(blocks) - train_blocks
        self.blocks = nn.ModuleList(Block(b) for b in blocks[self.first:])
        self.ln_post = _plain_layernorm(visual.ln_post)
        self.proj = nn.Linear(visual.proj.shape[0], visual.proj.shape[1], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(visual.proj.T)
        self.register_buffer("classes", class_embeddings.detach().clone())
        self.register_buffer("scale", vc.model.logit_scale.detach().exp().clone())
        self.lora_rank = lora_rank
        if lora_rank:
            for p in self.parameters():
                p.requires_grad_(False)
            for b in self.blocks:
                b.attn.qkv = LoRALinear(b.attn.qkv, lora_rank)
                b.attn.out = LoRALinear(b.attn.out, lora_rank)
                b.fc = LoRALinear(b.fc, lora_rank)
                b.proj = LoRALinear(b.proj, lora_rank)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            tokens = b(tokens)
        return F.normalize(self.proj(self.ln_post(tokens[..., 0, :])), dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.scale * self.features(tokens) @ self.classes.T
        # logit adjustment (training only): see FinetuneConfig.class_prior
        return logits + self.adjust if self.training and hasattr(self, "adjust") else logits

    def open_clip_state(self) -> dict[str, torch.Tensor]:
        """The trained weights under open_clip's key names (the layout that is sent and saved)."""
        def weight(layer: nn.Module) -> torch.Tensor:
            return layer.merged_weight() if isinstance(layer, LoRALinear) else layer.weight

        def bias(layer: nn.Module) -> torch.Tensor | None:
            return (layer.base if isinstance(layer, LoRALinear) else layer).bias

        out: dict[str, torch.Tensor] = {}
        for i, b in enumerate(self.blocks):
            pre = f"visual.transformer.resblocks.{self.first + i}."
            out[pre + "ln_1.weight"], out[pre + "ln_1.bias"] = b.ln_1.weight, b.ln_1.bias
            out[pre + "attn.in_proj_weight"], out[pre + "attn.in_proj_bias"] = weight(b.attn.qkv), bias(b.attn.qkv)
            out[pre + "attn.out_proj.weight"], out[pre + "attn.out_proj.bias"] = weight(b.attn.out), bias(b.attn.out)
            out[pre + "ln_2.weight"], out[pre + "ln_2.bias"] = b.ln_2.weight, b.ln_2.bias
            out[pre + "mlp.c_fc.weight"], out[pre + "mlp.c_fc.bias"] = weight(b.fc), bias(b.fc)
            out[pre + "mlp.c_proj.weight"], out[pre + "mlp.c_proj.bias"] = weight(b.proj), bias(b.proj)
        out["visual.ln_post.weight"], out["visual.ln_post.bias"] = self.ln_post.weight, self.ln_post.bias
        out["visual.proj"] = self.proj.weight.T
        return {k: v.detach().clone().contiguous() for k, v in out.items()}


def trained_keys(vc: VisionClip, train_blocks: int) -> list[str]:
    """open_clip state-dict keys that fine-tuning changes (what a federated client sends)."""
    n = len(vc.model.visual.transformer.resblocks)
    prefixes = [f"visual.transformer.resblocks.{i}." for i in range(n - train_blocks, n)]
    return sorted(k for k in vc.model.state_dict() if any(k.startswith(p) for p in prefixes)
                  or k in ("visual.ln_post.weight", "visual.ln_post.bias", "visual.proj"))


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


def _private(head: nn.Module, opt: torch.optim.Optimizer, dataset: TensorDataset, criterion: nn.Module,
             cfg: FinetuneConfig, *, sigma: float, sample_rate: float, expected_batch_size: float,
             noise_seed: int | None) -> tuple[nn.Module, Any, nn.Module, DataLoader]:
    """Opacus around the head, with the randomness and the normalisation fedclip controls.

    Randomness: Opacus' own secure mode needs torchcsprng, which does not build for torch 2.14. Instead
    the Poisson sampler and the noise each get a generator seeded afresh from the OS CSPRNG (never
    from a config seed), and the optimizer draws noise the way Opacus' secure mode does (the sum of
    four Gaussians, which defeats the floating-point attack on a single `torch.normal`). A seed is
    passed only by tests (`noise_seed`), which the ledger then records.

    Sampling and normalisation: Poisson sampling at exactly `sample_rate` (Opacus would use
    1 / len(loader), which rounds), and the noisy sum divided by `expected_batch_size`, which the
    caller derives from public numbers (Opacus would use the real dataset size).
    """
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    sampling = torch.Generator().manual_seed(secure_seed() if noise_seed is None else noise_seed)
    noise = torch.Generator().manual_seed(secure_seed() if noise_seed is None else noise_seed + 1)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampling) if len(dataset) \
        else _empty_batches(dataset)
    with warnings.catch_warnings():  # "Secure RNG turned off": fedclip supplies its own, see above
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=cfg.accountant)  # its accountant is unused: the ledger accounts
    wrapped = engine.make_private(module=head, optimizer=opt, data_loader=loader, criterion=criterion,
                                  noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                                  poisson_sampling=False, grad_sample_mode=cfg.grad_sample_mode,
                                  noise_generator=noise)
    model, dp_opt = wrapped[0], wrapped[1]
    criterion = wrapped[2] if cfg.grad_sample_mode == "ghost" else criterion
    dp_opt.secure_mode = True
    dp_opt.expected_batch_size = expected_batch_size
    return model, dp_opt, criterion, wrapped[-1]


def _book_keeping(head: nn.Module, params: list[torch.Tensor], dataset: TensorDataset, cfg: FinetuneConfig, *,
                  sigma: float, sample_rate: float, expected_batch_size: float,
                  noise_seed: int | None) -> tuple[BookKeeping, DataLoader]:
    """`fedclip.dp`'s clipping on the head, with the same randomness and normalisation as `_private`."""
    from opacus.data_loader import DPDataLoader

    if not supports(head):
        raise FedclipError("grad_sample_mode bk needs a head of linear and layer-norm layers; use hooks")
    sampling = torch.Generator().manual_seed(secure_seed() if noise_seed is None else noise_seed)
    noise = torch.Generator().manual_seed(secure_seed() if noise_seed is None else noise_seed + 1)
    bk = BookKeeping(head, params, max_grad_norm=cfg.max_grad_norm, noise_multiplier=sigma,
                     expected_batch_size=expected_batch_size, generator=noise)
    if not len(dataset):
        return bk, _empty_batches(dataset)
    return bk, DPDataLoader(dataset, sample_rate=sample_rate, generator=sampling)


class _empty_batches(DataLoader):  # noqa: N801 - used as the loader factory it stands in for
    """What Poisson sampling yields from a dataset with no record: an empty batch, every step."""

    def __init__(self, dataset: TensorDataset) -> None:
        super().__init__(dataset, batch_size=1)
        self.empty = tuple(t[:0] for t in dataset.tensors)

    def __iter__(self):  # type: ignore[override]
        yield self.empty

    def __len__(self) -> int:
        return 1


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


BREAKS = ("noise-off", "noise-half", "clip-off")
"""Test-only broken mechanisms the audits must catch; everything else (sigma reported, accounting)
claims the mechanism ran as configured."""


def _canary_rows(params: list[torch.Tensor], canaries: GradientCanaries, q: float,
                 clip: float) -> Callable[[], dict[int, torch.Tensor] | None]:
    """A function that Poisson-samples the included canaries for one step and returns their gradients as
    per-parameter rows (k, *p.shape), or None when none was drawn."""
    # a fresh stream per training (a node's rounds each call this), as Poisson sampling draws anew each step
    gen = torch.Generator().manual_seed(canaries.seed + len(canaries.projections))
    sizes = [p.numel() for p in params]

    def draw() -> dict[int, torch.Tensor] | None:
        chosen = canaries.included & (torch.rand(len(canaries.included), generator=gen) < q)
        if not chosen.any():
            return None
        rows = canaries.norm * clip * canaries.directions[chosen]
        return {id(p): part.reshape(len(rows), *p.shape).to(p.dtype)
                for p, part in zip(params, rows.split(sizes, dim=1), strict=True)}

    return draw


def _insert_canaries(privatizer: Any, params: list[torch.Tensor], canaries: GradientCanaries, q: float,
                     clip: float) -> None:
    """Canary gradients join the records' per-sample gradients before the privatizer clips them."""
    draw = _canary_rows(params, canaries, q, clip)
    if isinstance(privatizer, BookKeeping):
        privatizer.extra_rows = draw
        return
    clip_and_accumulate = privatizer.clip_and_accumulate

    def with_canaries() -> None:
        rows = draw()
        if rows is not None:
            for p in params:
                p.grad_sample = torch.cat([p.grad_sample, rows[id(p)].to(p.grad_sample.dtype)])
        clip_and_accumulate()

    privatizer.clip_and_accumulate = with_canaries


def _break(privatizer: Any, how: str) -> None:
    """Break the mechanism the way a bug would, for the audits' power checks (tests and `--power` only)."""
    if how == "noise-off":
        privatizer.noise_multiplier = 0.0
    elif how == "noise-half":
        privatizer.noise_multiplier *= 0.5
    elif how == "clip-off":
        if isinstance(privatizer, BookKeeping):
            privatizer.clip_factors = lambda norm2: torch.ones_like(norm2)
        else:  # Opacus clips with max_grad_norm and scales its noise by it: lift it for the clip only
            clip_and_accumulate, bound = privatizer.clip_and_accumulate, privatizer.max_grad_norm

            def unclipped() -> None:
                privatizer.max_grad_norm = float("inf")
                try:
                    clip_and_accumulate()
                finally:
                    privatizer.max_grad_norm = bound

            privatizer.clip_and_accumulate = unclipped
    else:
        raise FedclipError(f"unknown break {how!r}; use one of {', '.join(BREAKS)}")


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


def _patient_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch's patients of each patient's summed loss over their (real) images."""
    return _per_sample_loss(logits, y, mask, by_patient=True).mean()


def _per_sample_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, by_patient: bool) -> torch.Tensor:
    """Each record's loss: an image's cross-entropy, or a patient's summed over their (real) images."""
    if not by_patient:
        return F.cross_entropy(logits, y, reduction="none")
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (ce * mask).sum(1)


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
    `canaries` plants gradient-space audit canaries; `insecure_break_for_tests` (one of `BREAKS`) trains
    with the noise secretly off or halved, or the clip secretly off, while everything else (sigma
    reported, accounting) claims it ran as configured: a broken mechanism the audits must catch, for
    tests and the audits' power checks only.
    """
    if len(tokens) == 0 and not (cfg.dp and public_size):
        raise FedclipError("no training images: this client's partition is empty")
    # With DP and a public size, no record is no reason to stop: the same steps run on empty batches
    # (noise only), so that what leaves a node never depends on whether it holds a labelled record.
    by_patient = cfg.unit == "patient"
    if cfg.unit not in ("image", "patient"):
        raise FedclipError(f"unknown unit {cfg.unit!r}; use image or patient")
    if by_patient:
        if patients is None:
            raise FedclipError("patient-level training needs each image's patient id")
        if cfg.dp and cfg.grad_sample_mode not in ("bk", "hooks", "functorch"):
            raise FedclipError(f"patient-level DP supports grad_sample_mode bk, hooks or functorch, not "
                               f"{cfg.grad_sample_mode}")
        ptokens, ptargets, pmask = group_by_patient(tokens, targets, patients, cfg.max_images_per_patient)
        dataset = TensorDataset(ptokens, ptargets, pmask)
    else:
        dataset = TensorDataset(tokens, targets)
    n = len(dataset)
    size = public_size or n
    t = tasks.task(cfg.task)
    head = build_head(vc, cfg)
    params = [p for p in head.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    elif cfg.optimizer == "adamw":  # on privatized gradients Adam is post-processing, but it amplifies noise
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    else:
        raise FedclipError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adamw")
    steps = steps or steps_per_round(cfg, size)
    q = sample_rate if sample_rate is not None else min(1.0, cfg.batch_size / size)
    sigma = None
    if cfg.class_prior is not None:
        if len(cfg.class_prior) != len(t.classes) or min(cfg.class_prior) <= 0:
            raise FedclipError(f"class_prior needs {len(t.classes)} positive values for task {t.name} "
                               f"({', '.join(t.classes)}), got {cfg.class_prior}")
        head.register_buffer("adjust", torch.log(torch.tensor(cfg.class_prior, dtype=torch.float32)))
    criterion: nn.Module = nn.CrossEntropyLoss()
    model: nn.Module = head
    bk: BookKeeping | None = None
    if cfg.dp:
        sigma = noise_multiplier if noise_multiplier is not None else noise_for_budget(cfg, size, steps)
        if cfg.grad_sample_mode == "bk":
            bk, loader = _book_keeping(head, params, dataset, cfg, sigma=sigma, sample_rate=q,
                                       expected_batch_size=q * size, noise_seed=noise_seed)
        else:
            model, opt, criterion, loader = _private(head, opt, dataset, criterion, cfg, sigma=sigma,
                                                     sample_rate=q, expected_batch_size=q * size,
                                                     noise_seed=noise_seed)
        privatizer = bk if bk is not None else opt  # either one adds the noise to the clipped sum
        if canaries is not None:
            _insert_canaries(privatizer, params, canaries, q, cfg.max_grad_norm)
        if insecure_break_for_tests is not None:
            _break(privatizer, insecure_break_for_tests)
    else:  # no privacy promised: data order from the config seed
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed))
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
            for x, y, *rest in loader:
                if done >= steps:
                    break
                mask = rest[0] if rest else torch.ones(y.shape)
                done += 1
                # Poisson sampling can draw an empty batch: it still takes a (noise-only) step, as the
                # privacy analysis assumes; skipping it would reveal that the batch was empty.
                opt.zero_grad()  # before the forward pass: expanded weights accumulate during it
                if len(y) == 0 and cfg.dp and cfg.grad_sample_mode == "ew":
                    # expanded weights cannot run a batch of 0; an empty per-sample gradient is the same step
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                    opt.step()
                elif bk is not None:  # per-sample losses: book-keeping clips each sample's gradient
                    with bk.recording():
                        logits = head(x)
                    per_sample = _per_sample_loss(logits, y, mask, by_patient)
                    bk.private_grads(per_sample)
                    opt.step()
                    loss = per_sample.mean() if len(y) else per_sample.sum()
                else:
                    logits = model(x)
                    if not len(y):
                        loss = logits.sum() * 0.0
                    else:
                        loss = _patient_loss(logits, y, mask) if by_patient else criterion(logits, y)
                    loss.backward()
                    opt.step()
                if canaries is not None and cfg.dp:
                    canaries.observe([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
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


def build_head(vc: VisionClip, cfg: FinetuneConfig) -> Head:
    """`cfg`'s head on `vc`, against the task's class-prompt embeddings; LoRA adapters are initialised from
    `cfg.seed` without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return Head(vc, cfg.train_blocks, evaluate.class_embeddings(vc, tasks.task(cfg.task)), cfg.lora_rank)


def head_vector(vc: VisionClip, cfg: FinetuneConfig) -> torch.Tensor:
    """The trained parameters of `cfg`'s head on `vc`, flattened in the order `GradientCanaries` uses."""
    return torch.cat([p.detach().flatten() for p in build_head(vc, cfg).parameters() if p.requires_grad])
