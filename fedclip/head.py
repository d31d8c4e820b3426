"""The fine-tuned part of the vision tower, rebuilt from modules DP-SGD has per-sample rules for.

Fine-tuning trains the last `train_blocks` transformer blocks, `ln_post` and the projection, scored
against the zero-shot class embeddings (the zero-shot head is the initialisation). For DP the head is
rebuilt from modules with per-sample gradient rules, *without changing what the model computes*:
attention becomes plain `nn.Linear` layers around `scaled_dot_product_attention` (Opacus's own
`DPMultiheadAttention` is no substitute: with `batch_first=True` its output differs from the layer it
replaces, by up to 0.65 on random input for one layer, so a pretrained block converted that way would be a
damaged function; `tests/test_finetune.py` checks that the conversion here computes what open_clip does),
open_clip's LayerNorm subclass becomes `nn.LayerNorm`, the bare `proj` parameter becomes an `nn.Linear`.
Trained weights go back into open_clip's own layout (`Head.open_clip_state`), which is what is sent and saved.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fedclip import evaluate, tasks
from fedclip.errors import FedclipError, ModelError
from fedclip.models import VisionClip

if TYPE_CHECKING:
    from fedclip.finetune import FinetuneConfig


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


def build_head(vc: VisionClip, cfg: FinetuneConfig) -> Head:
    """`cfg`'s head on `vc`, against the task's class-prompt embeddings; LoRA adapters are initialised from
    `cfg.seed` without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return Head(vc, cfg.train_blocks, evaluate.class_embeddings(vc, tasks.task(cfg.task)), cfg.lora_rank)


def head_vector(vc: VisionClip, cfg: FinetuneConfig) -> torch.Tensor:
    """The trained parameters of `cfg`'s head on `vc`, flattened in the order `GradientCanaries` uses."""
    return torch.cat([p.detach().flatten() for p in build_head(vc, cfg).parameters() if p.requires_grad])
