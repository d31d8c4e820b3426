"""Book-keeping DP (`fedclip.dp`) gives Opacus' clipped, noised gradient: same batch, same noise, 1e-6."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedclip import evaluate, models, tasks
from fedclip.dp import BookKeeping, supports
from fedclip.head import Head
from fedclip.mechanism import record_losses

SEED = 1234


def _head(train_blocks: int, lora_rank: int) -> Head:
    return copy.deepcopy(_built_head(train_blocks, lora_rank))


@functools.cache
def _built_head(train_blocks: int, lora_rank: int) -> Head:
    vc = models.create("visionclip-tiny", seed=0)
    torch.manual_seed(0)
    return Head(vc, train_blocks, evaluate.class_embeddings(vc, tasks.task("referable_dr")), lora_rank).train()


def _batch(head: Head, train_blocks: int, patients: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    width = head.ln_post.normalized_shape[0]
    tokens = 1 if train_blocks == 0 else 17
    shape = (5, 3, tokens, width) if patients else (9, tokens, width)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 2, shape[:-2], generator=g)
    mask = (torch.rand(shape[:-2], generator=g) < 0.7).float() if patients else torch.ones(shape[:-2])
    return x, y, mask


def _opacus_step(head, x, y, mask, clip, sigma, patients, steps=1):
    params = [p for p in head.parameters() if p.requires_grad]
    model = GradSampleModule(head, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(params, lr=1.0), noise_multiplier=sigma, max_grad_norm=clip,
                      expected_batch_size=6.5, generator=torch.Generator().manual_seed(SEED))
    opt.secure_mode = True  # as fedclip runs it (set after construction: no torchcsprng here)
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x)
        loss = record_losses(logits, y, mask, by_patient=True).mean() if patients else F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
    return params


def _bk_step(head, x, y, mask, clip, sigma, patients, steps=1):
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1.0)
    bk = BookKeeping(head, params, max_grad_norm=clip, noise_multiplier=sigma, expected_batch_size=6.5,
                     generator=torch.Generator().manual_seed(SEED))
    for _ in range(steps):
        opt.zero_grad()
        with bk.recording():
            logits = head(x)
        if patients:
            per_sample = (F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
                          * mask).sum(1)
        else:
            per_sample = F.cross_entropy(logits, y, reduction="none")
        bk.private_grads(per_sample)
        opt.step()
    return params


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus' hooks on a frozen prefix: no input needs grad
@pytest.mark.parametrize(("train_blocks", "lora_rank", "patients"), [
    (0, 0, False), (0, 0, True), (1, 0, False), (1, 0, True), (1, 4, False), (2, 0, False),
])
@pytest.mark.parametrize(("clip", "sigma"), [(1e-3, 0.0), (1e3, 0.0), (0.05, 1.3)])
def test_book_keeping_equals_opacus_on_the_same_batch_and_noise(train_blocks, lora_rank, patients, clip, sigma):
    """Clipping that binds for every sample, for none, and somewhere between with noise on."""
    head = _head(train_blocks, lora_rank)
    assert supports(head)
    x, y, mask = _batch(head, train_blocks, patients)
    # the gradient the optimizer stepped with: clipped per sample, summed, noised, over the expected batch
    ref = torch.cat([p.grad.flatten() for p in _opacus_step(copy.deepcopy(head), x, y, mask, clip, sigma,
                                                            patients)])
    ours = torch.cat([p.grad.flatten() for p in _bk_step(copy.deepcopy(head), x, y, mask, clip, sigma, patients)])
    scale = float(ref.abs().max())
    assert scale > 1e-5  # not two zero gradients
    gap = float((ours - ref).abs().max())
    assert gap <= 1e-6 * max(1.0, scale) and gap <= 1e-5 * scale  # measured: <= 6.6e-7 of the scale (float32)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_noise_drawn_ahead_follows_opacus_stream_over_several_steps():
    """Steps 2 and 3 get the noise Opacus draws for them from the same generator: a reordered or skipped
    stream (noise drawn ahead, cached, or per step from a fresh generator) shows here, not in one step."""
    head = _head(1, 0)
    x, y, mask = _batch(head, 1, False)
    ref = _opacus_step(copy.deepcopy(head), x, y, mask, 0.05, 1.3, False, steps=3)
    ours = _bk_step(copy.deepcopy(head), x, y, mask, 0.05, 1.3, False, steps=3)
    for a, b in zip(ref, ours, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5)  # the third step's gradient
        assert torch.allclose(a, b, atol=1e-5)  # the weights after three steps


def test_an_empty_batch_is_a_noise_only_step():
    head = _head(0, 0)
    params = [p for p in head.parameters() if p.requires_grad]
    bk = BookKeeping(head, params, max_grad_norm=1.0, noise_multiplier=2.0, expected_batch_size=4.0,
                     generator=torch.Generator().manual_seed(SEED))
    with bk.recording():
        head(torch.zeros(0, 1, head.ln_post.normalized_shape[0]))
    bk.private_grads(torch.zeros(0))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_a_records_whole_gradient_given_as_extra_rows_is_clipped_like_any_record():
    """An audit canary of norm 25 C enters before clipping: the clip scales it to exactly C; with the clip
    broken (as the power check breaks it) it passes whole, which is what lets the audit see a missing clip."""
    head = _head(0, 0)
    params = [p for p in head.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(SEED)
    rows = {id(p): torch.randn((1, *p.shape), generator=gen) for p in params}
    norm = torch.sqrt(sum(r.pow(2).sum() for r in rows.values()))
    rows = {k: 25 * 0.5 * r / norm for k, r in rows.items()}  # norm 25 C, C = 0.5
    for broken, scale in ((False, 1 / 25), (True, 1.0)):
        bk = BookKeeping(head, params, max_grad_norm=0.5, noise_multiplier=0.0, expected_batch_size=2.0,
                         generator=torch.Generator().manual_seed(SEED))
        bk.extra_rows = lambda: rows
        if broken:
            bk.clip_factors = lambda norm2: torch.ones_like(norm2)
        with bk.recording():
            head(torch.zeros(0, 1, head.ln_post.normalized_shape[0]))
        bk.private_grads(torch.zeros(0))
        for p in params:
            assert torch.allclose(p.grad, scale * rows[id(p)][0] / 2.0, atol=1e-6)
